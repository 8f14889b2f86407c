"""Hostile children and a careful harness: what a child does may not mislead or flood PID 1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotswapd.core.stop import is_stopped
from tests.harness import CHILD, Hotswapd, proc_state
from tests.helpers import REPO, wait_until

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
    assert "is stopped (SIGSTOP, state T)" in finished["reason"]  # not "never answered"
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


# ----------------------------------------------------------------------------- sd_notify

NOTIFIER = [sys.executable, str(REPO / "tests" / "children" / "notifier.py")]
NOTIFY_GATED = ["--ready", "notify", "--settle", "0", "--stop-timeout", "5s"]


def notify_fields(entry: dict[str, Any]) -> dict[str, str]:
    """The sd_notify fields of one log line: under `fields`, or (older) as lowercase keys."""
    if isinstance(entry.get("fields"), dict):
        return {str(k): str(v) for k, v in entry["fields"].items()}
    own = {"generation", "pid", "sender_pid", "event", "level", "timestamp"}
    return {k.upper(): str(v) for k, v in entry.items() if k not in own}


def notify_lines(run: Hotswapd, key: str) -> list[dict[str, Any]]:
    return [e for e in run.events("sd_notify") if key in notify_fields(e)]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)


def forge(address: str, text: str, uid: int, stay: bool = False) -> int:
    """Send one datagram as `uid` from a forked helper; it exits at once unless `stay`."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forger
        try:
            os.close(write_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            target = "\0" + address[1:] if address.startswith("@") else address
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(text.encode(), target)
            if stay:
                os.read(read_end, 1)  # until the test closes the pipe
        finally:
            os._exit(0)
    os.close(read_end)
    if not stay:
        os.waitpid(pid, 0)
        os.close(write_end)
        return pid
    return write_end  # closing it ends the forger


def test_forged_ready_is_not_believed(hotswapd: Start) -> None:
    """READY=1 forged from outside the candidate's tree is ignored with its reason (uid
    65534; a sender that exited before the read; one alive in another group), and only
    the candidate's own READY=1 commits."""
    run = hotswapd([*NOTIFY_GATED, "--health-timeout", "30s"], [*NOTIFIER], pid1=False)
    run.wait_stdout("ready (pid:")
    run.signal(signal.SIGUSR2)
    spawned = run.wait_event("swap_spawned")
    run.wait_stdout("ready (pid:", count=2)
    candidate = own_child(run, int(spawned["pid"]))
    address = environ_of(candidate)["NOTIFY_SOCKET"]  # what /proc/net/unix lists to anyone
    # Hold hotswapd (our own child) still, so the forgers are surely gone before the read.
    os.kill(run.pid, signal.SIGSTOP)
    wait_until(lambda: proc_state(run.pid) == "T", 10, "hotswapd stopped")
    forge(address, "READY=1\nSTATUS=forged by nobody", uid=65534)
    gone = forge(address, "READY=1\nSTATUS=forged and gone", uid=0)
    os.kill(run.pid, signal.SIGCONT)
    wait_until(lambda: len(notify_lines(run, "IGNORED")) >= 2, 10,
               lambda: f"forgeries ignored\n{run.tail()}")  # fmt: skip
    alive = forge(address, "READY=1\nSTATUS=forged, alive", uid=0, stay=True)
    try:
        wait_until(lambda: len(notify_lines(run, "IGNORED")) >= 3, 10, "third forgery ignored")
    finally:
        os.close(alive)
    reasons = [notify_fields(e)["IGNORED"] for e in notify_lines(run, "IGNORED")]
    assert "sender uid 65534 is not the generation's" in reasons[0]
    assert f"sender pid {gone} exited before its message was read" in reasons[1]
    assert "is not in generation 2's process group or tree" in reasons[2]
    assert not run.events("swap_finished")  # nothing was believed
    os.kill(candidate, signal.SIGUSR1)  # now the candidate itself says READY=1
    finished = run.wait_event("swap_finished", timeout=15)
    assert finished["outcome"] == "committed"
    believed = [e for e in notify_lines(run, "READY") if "IGNORED" not in notify_fields(e)]
    assert [e["sender_pid"] for e in believed] == [candidate]


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_real_systemd_notify_is_believed(hotswapd: Start, user: str) -> None:
    """`systemd-notify --ready` run by the server's shell passes the credential check, as
    root (stamped with its parent's pid) and as another user (its own pid, alive at the
    barrier)."""
    if shutil.which("systemd-notify") is None:
        pytest.skip("systemd-notify is not installed (apt-get install systemd)")
    options = [*NOTIFY_GATED, "--health-timeout", "15s"]
    if user != "root":
        options += ["--user", user]
    script = "echo ready $$; systemd-notify --ready --status=serving; exec sleep 300"
    run = hotswapd(options, ["/bin/sh", "-c", script])
    run.wait_stdout("ready")
    run.signal(signal.SIGUSR2)
    finished = run.wait_event("swap_finished", timeout=20)
    assert finished["outcome"] == "committed", finished
    assert run.wait_event("swap_notified")["status"] == "serving"
    assert not notify_lines(run, "IGNORED")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_notify_flood_is_bounded_and_cannot_crash_the_handler(hotswapd: Start) -> None:
    """A 2 s flood of datagrams with GENERATION/EVENT/EXC_INFO fields costs PID 1 little CPU,
    yields a bounded number of log lines and one DROPPED summary, no traceback; the READY=1
    after it still commits the swap."""
    run = hotswapd([*NOTIFY_GATED, "--health-timeout", "20s"], [*NOTIFIER, "--flood", "2"],
                   pid1=False)  # fmt: skip
    run.wait_stdout("ready (pid:")
    run.wait_event("supervising")  # its notify socket is read from here on
    before = cpu_seconds(run.pid)
    run.signal(signal.SIGUSR1)  # forwarded: generation 1 floods
    flooded = run.wait_stdout("flooded", timeout=15)[0]
    used = cpu_seconds(run.pid) - before
    sent = int(flooded.split()[1].partition("=")[2])
    summary = wait_until(lambda: notify_lines(run, "DROPPED"), 10,
                         lambda: f"the DROPPED summary after {flooded}\n{run.tail()}")  # fmt: skip
    dropped = int(notify_fields(summary[0])["DROPPED"])
    assert dropped > 0
    reported = len(run.events("sd_notify"))
    # 20 at once, then 10/s over the 2 s flood, plus the summary and the READY=1.
    assert reported <= 20 + 10 * 3 + 5, (reported, sent)
    assert used < 0.5, f"hotswapd used {used:.2f} s CPU in a 2 s flood of {sent}"
    assert not [line for line in run.stderr_lines if "Traceback" in line or "TypeError" in line]
    hostile = [e for e in run.events("sd_notify") if "OTHER_FIELDS" in notify_fields(e)]
    assert hostile  # GENERATION, EVENT, EXC_INFO, PID, LEVEL: counted, never keys of the line
    assert {(e["generation"], e["level"]) for e in hostile} == {(1, "info")}
    run.signal(signal.SIGUSR2)
    spawned = run.wait_event("swap_spawned")
    run.wait_stdout("ready (pid:", count=2)
    os.kill(own_child(run, int(spawned["pid"])), signal.SIGUSR1)  # floods, then READY=1
    finished = run.wait_event("swap_finished", timeout=30)
    assert finished["outcome"] == "committed", finished


# ----------------------------------------------------------------------------- terminal


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, session, tty_nr, tpgid, …]."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def test_pid1_with_a_terminal_gives_it_to_the_server(hotswapd: Start) -> None:
    """As PID 1 with a terminal on stdin (docker run -it), each generation's group is the
    terminal's foreground group (tpgid == pgid), a restarted one too (hotswapd took it back
    when the first was reaped), and hotswapd ignores SIGTTIN/SIGTTOU."""
    master, slave = os.openpty()
    try:
        # setsid -c: PID 1 leads its own session with the pty as its terminal, as in runc.
        run = hotswapd(["--on-exit", "restart"], [*CHILD], stdin=slave, wrapper=["setsid", "-c"])
        os.close(slave)
        inside = int(run.wait_stdout("ready (pid:")[0].split()[-1].rstrip(")"))
        first = own_child(run, inside)
        state = stat_fields(first)
        assert (int(state[2]), int(state[5])) == (first, first), state  # pgrp, tpgid
        run.wait_event("supervising")  # its signal dispositions are in
        status = Path(f"/proc/{run.pid}/status").read_text()
        ignored = int(status.split("SigIgn:")[1].split()[0], 16)
        for sig in (signal.SIGTTIN, signal.SIGTTOU):
            assert ignored & (1 << (sig - 1)), f"{sig.name} not ignored by hotswapd"
        os.kill(first, signal.SIGKILL)
        restarted = run.wait_event("restarted", timeout=15)
        second = own_child(run, int(restarted["pid"]))
        wait_until(lambda: stat_fields(second)[5] == str(second), 10,
                   lambda: f"generation 2 to hold the terminal: {stat_fields(second)}")  # fmt: skip
    finally:
        os.close(master)


# ----------------------------------------------------------------------------- reaping

MEMORY_HOG = [sys.executable, str(REPO / "tests" / "children" / "memory_hog.py")]


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A memory cgroup (v1 or v2) of 256 MiB without swap, below the test's own; removed after."""
    cgroups = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    base: Path | None = None
    for _, controllers, path in cgroups:
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            limits = {"memory.max": "256M", "memory.swap.max": "0"}
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limits = {"memory.limit_in_bytes": "256M", "memory.memsw.limit_in_bytes": "256M"}
        else:
            continue
        if base.is_dir():
            break
        base = None
    if base is None:
        pytest.skip("no memory cgroup to make a limited one under")
    group = base / f"hotswapd-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup: {exc}")
    try:
        for name, value in limits.items():
            if (group / name).exists():
                (group / name).write_text(value)
        yield group
    finally:
        # Requested before `hotswapd`, so its runs are torn down first: the group empties.
        wait_until(lambda: not (group / "cgroup.procs").read_text().split(), 10, "cgroup empty")
        group.rmdir()


def in_cgroup(group: Path) -> list[str]:
    """A wrapper that moves hotswapd into `group` before it starts."""
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group)]


def test_an_oom_killed_generation_is_named_as_such(memory_cgroup: Path, hotswapd: Start) -> None:
    """A generation the OOM killer ends is logged as out of memory (the cgroup's oom_kill
    moved); one SIGKILLed by a person is not."""
    run = hotswapd(["--on-exit", "restart"], [*MEMORY_HOG], wrapper=in_cgroup(memory_cgroup))
    inside = int(run.wait_stdout("ready (pid:")[0].split()[-1].rstrip(")"))
    run.wait_event("supervising")
    os.kill(own_child(run, inside), signal.SIGKILL)  # a person's SIGKILL: no OOM
    restarted = run.wait_event("restarted", timeout=15)
    run.wait_stdout("ready (pid:", count=2)
    os.kill(own_child(run, int(restarted["pid"])), signal.SIGUSR1)  # grow until OOM-killed
    oom = run.wait_event("oom_killed", timeout=30)
    assert oom["pid"] == restarted["pid"]
    assert "out of memory" in oom["note"]
    assert len(run.events("oom_killed")) == 1  # not for the first, killed by hand
    exits = run.events("child_exited")
    assert [e["status"] for e in exits[:2]] == ["signal 9 (SIGKILL)"] * 2, exits


def test_each_reaped_orphan_is_one_debug_line(hotswapd: Start) -> None:
    """PID 1 logs one debug line per orphan it reaps, with its pid and status (tini -w)."""
    run = hotswapd(["--log-level", "debug"], [*CHILD, "--orphans", "3"])
    run.wait_stdout("orphans 3")
    run.wait_event("orphan_reaped", count=3, timeout=10)
    lines = run.events("orphan_reaped")
    assert all(line["status"] == "exit 0" and line["pid"] > 1 for line in lines)
    assert len({line["pid"] for line in lines}) == 3
