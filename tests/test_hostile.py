"""Hostile children and a careful harness: what a child does may not mislead or flood PID 1."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from hotswapd.core.stop import is_stopped
from tests.harness import CHILD, Hotswapd, proc_state
from tests.helpers import wait_until

Start = Any  # the `hotswapd` fixture: (options, command, **kwargs) -> Hotswapd


def own_child(run: Hotswapd, inside_pid: int) -> int:
    """The outside pid of a generation hotswapd logged, verified to be hotswapd's child."""
    pid = run.outside_pid(inside_pid)  # found among hotswapd's descendants
    assert ppid(pid) == run.pid, f"{pid} is not hotswapd's child"
    return pid


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


# ----------------------------------------------------------------------------- harness


def test_harness_refuses_to_signal_an_unknown_pid() -> None:
    """A hotswapd that exits at once leaves no pid to signal: the harness raises, never kill(-1)."""
    run = Hotswapd(["--no-such-option"], [*CHILD])
    assert run.wait(30) == 2
    with pytest.raises(LookupError):
        run.signal(0)  # signal 0 only checks: before the fix this was kill(-1, 0), no error
    run.kill_tree()


# ----------------------------------------------------------------------------- stopped


def test_a_stopped_candidate_is_resumed_to_act_on_its_stop_signal(hotswapd: Start) -> None:
    """A candidate SIGSTOPped during its gate exits on its SIGTERM at rollback (SIGCONT
    follows it), not after the whole --stop-timeout by SIGKILL."""
    run = hotswapd(
        ["--listen", "http=tcp://127.0.0.1:0", "--health", "/healthz", "--health-timeout", "1s",
         "--settle", "0", "--stop-timeout", "60s"],
        [*CHILD],
    )  # fmt: skip
    run.wait_stdout("ready (pid:")
    run.signal(signal.SIGUSR2)
    spawned = run.wait_event("swap_spawned")
    run.wait_stdout("ready (pid:", count=2)  # its TERM handler is in
    candidate = own_child(run, int(spawned["pid"]))
    os.kill(candidate, signal.SIGSTOP)
    wait_until(lambda: proc_state(candidate) == "T", 10, "the candidate stopped")
    assert is_stopped(candidate)
    finished = run.wait_event("swap_finished", timeout=20)
    assert finished["outcome"] == "rolled_back"
    exited = run.wait_event("child_exited", pid=int(spawned["pid"]), timeout=5)
    assert exited["status"] == "exit 0"  # its own TERM handler, not the SIGKILL
    assert not run.events("stop_timeout_kill")
    assert finished["phases"]["candidate_stopped"] < 5  # far below --stop-timeout 60s


def test_is_stopped_reads_the_kernel_state() -> None:
    """is_stopped is true for a SIGSTOPped child of this test and false once it is resumed."""
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    try:
        assert not is_stopped(pid)
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: is_stopped(pid), 10, "the child stopped")
        os.kill(pid, signal.SIGCONT)
        wait_until(lambda: not is_stopped(pid), 10, "the child running again")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
