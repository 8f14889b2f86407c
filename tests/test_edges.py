"""Edge cases found in review: each one hung, crashed or misbehaved before its fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.harness import CHILD, HOTSWAPD, proc_state, run_to_exit
from tests.helpers import REPO, wait_until

Start = Any
ONE_SHOT = str(REPO / "tests" / "children" / "one_shot.py")


def ctl(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HOTSWAPD, "ctl", "--control-socket", sock, *args],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip


def test_generation_1_exiting_while_sources_start_is_not_lost(tmp_path: Path) -> None:
    """A child that exits while a big watched file is hashed is still waited for: no hang."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1 << 20) * 40)
    exit_code, run = run_to_exit(["--watch", str(big)], ["/bin/false"], timeout=30)
    assert exit_code == 1
    assert run.events("stopped")[0]["orphans_reaped"] == 0


def test_candidate_that_dies_after_its_probe_is_not_committed(hotswapd: Start) -> None:
    """A candidate that answers /healthz once and exits is rolled back; the old one serves on."""
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", "--health", "/healthz", "--settle",
                    "0", "--health-timeout", "5s"], [sys.executable, ONE_SHOT])  # fmt: skip
    run.wait_event("supervising")
    first = run.wait_event("spawned")["pid"]
    # Generation 1 is a one-shot too: give it its one request so it is not in the way.
    run.signal(signal.SIGUSR2)
    outcome = run.wait_event("swap_finished", timeout=30)
    assert outcome["outcome"] == "rolled_back"
    # Depending on whether its exit was reaped yet: "exited during …" or "could not measure".
    assert "exited during" in outcome["reason"] or "could not measure" in outcome["reason"]
    assert outcome["active_pid"] == first
    assert not run.events("swap_cutover")


def test_restart_retries_a_busy_binary(hotswapd: Start, tmp_path: Path) -> None:
    """--on-exit restart waits out ETXTBSY (a build still writing) instead of exiting 126."""
    program = tmp_path / "server.sh"  # a script is free to open once its shell exec'd away
    program.write_text("#!/bin/sh\nexec sleep 300\n")
    program.chmod(0o755)
    run = hotswapd(["--on-exit", "restart"], [str(program)], pid1=False)
    run.wait_event("supervising")
    child = int(run.wait_event("spawned")["pid"])
    writer = os.open(program, os.O_WRONLY)  # a writer holds it: exec fails with ETXTBSY
    try:
        os.kill(child, signal.SIGKILL)
        run.wait_event("restart_retry", timeout=10)
    finally:
        os.close(writer)
    restarted = run.wait_event("restarted", timeout=15)
    assert restarted["generation"] == 2
    assert "Text file busy" in run.events("restart_retry")[0]["error"]


def test_restart_during_drain_does_not_wait_for_it(hotswapd: Start) -> None:
    """The new active generation dying while the old one drains is restarted at once."""
    run = hotswapd(["--on-exit", "restart", "--settle", "0", "--drain-signal", "USR1",
                    "--drain-timeout", "30s"], [*CHILD])  # fmt: skip
    run.wait_event("supervising")
    run.wait_stdout("ready (pid:")
    run.signal(signal.SIGUSR2)
    cutover = run.wait_event("swap_cutover", timeout=20)
    started = time.monotonic()
    os.kill(run.outside_pid(int(cutover["pid"])), signal.SIGKILL)
    restarted = run.wait_event("restarted", timeout=10)
    assert time.monotonic() - started < 10  # well before the 30 s drain ends
    assert restarted["generation"] == 3
    assert len(run.events("restart_scheduled")) == 1


def test_sigterm_while_draining_is_bounded_by_stop_timeout(hotswapd: Start) -> None:
    """SIGTERM during a long drain stops everything within --stop-timeout, not the drain's."""
    run = hotswapd(["--settle", "0", "--drain-signal", "USR1", "--drain-timeout", "60s",
                    "--stop-timeout", "1s"], [*CHILD, "--ignore-term"])  # fmt: skip
    run.wait_event("supervising")
    run.signal(signal.SIGUSR2)
    run.wait_event("swap_cutover", timeout=20)
    run.wait_stdout("ready (pid:", count=2)  # generation 2's handlers are in
    started = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait(20) == 128 + signal.SIGKILL  # the active one ignores TERM: killed at 1 s
    assert time.monotonic() - started < 10


def test_rollback_during_a_swap_is_refused_not_merged(hotswapd: Start, tmp_path: Path) -> None:
    """`ctl rollback` while a swap runs is refused instead of running as a queued reload."""
    sock = str(tmp_path / "c.sock")
    run = hotswapd(["--control-socket", sock, "--settle", "0", "--canary", "3s",
                    "--health-url", "http://127.0.0.1:1/x", "--health-timeout", "20s"],
                   [*CHILD])  # fmt: skip
    run.wait_event("control_listening")
    run.signal(signal.SIGUSR2)
    run.wait_event("swap_spawned")
    result = ctl(sock, "rollback", "--wait")
    assert result.returncode == 1
    assert "a swap is in progress" in result.stderr
    assert not run.events("swap_coalesced")


def test_user_children_still_die_with_hotswapd(hotswapd: Start) -> None:
    """With --user the parent-death signal survives the uid change: SIGKILL of hotswapd
    takes the child along."""
    run = hotswapd(["--user", "nobody"], ["/bin/sleep", "300"], pid1=False)
    run.wait_event("supervising")
    child = int(run.wait_event("spawned")["pid"])
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    wait_until(lambda: proc_state(child) in (None, "Z"), 10, "the child to die with hotswapd")


def test_rollback_of_a_script_program(hotswapd: Start, tmp_path: Path) -> None:
    """A #! script is rolled back through its kept fd too (it must survive the exec)."""
    sock = str(tmp_path / "c.sock")
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\necho version one $$\nexec sleep 300\n")
    script.chmod(0o755)
    run = hotswapd(["--control-socket", sock, "--settle", "0"], [str(script)])
    run.wait_event("control_listening")
    run.wait_stdout("version one")
    replacement = tmp_path / "server.new"
    replacement.write_text("#!/bin/sh\necho version two $$\nexec sleep 300\n")
    replacement.chmod(0o755)
    os.replace(replacement, script)
    assert ctl(sock, "reload", "--wait").returncode == 0
    run.wait_stdout("version two")
    result = ctl(sock, "rollback", "--wait")
    assert result.returncode == 0, result.stderr
    run.wait_stdout("version one", count=2)


def test_two_notify_receivers_on_one_host_do_not_collide(hotswapd: Start, tmp_path: Path) -> None:
    """Two hotswapd with --ready notify as PID 1 of their own namespaces (one pod) both start."""
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\nsystemd-notify --ready\nexec sleep 300\n")
    script.chmod(0o755)
    runs = [
        hotswapd(
            [
                "--ready",
                "notify",
                "--settle",
                "0",
                "--control-socket",
                str(tmp_path / f"c{index}.sock"),
            ],
            [str(script)],
        )
        for index in range(2)
    ]
    for run in runs:
        run.wait_event("supervising")
        wait_until(
            lambda run=run: [  # type: ignore[misc]
                e for e in run.events("sd_notify") if e["fields"].get("READY") == "1"
            ],
            15,
            "READY=1 logged (the fields are data under one key)",
        )


def test_own_broken_pipe_is_not_forwarded_and_not_fatal(tmp_path: Path) -> None:
    """hotswapd's stderr reader going away makes its own writes fail with EPIPE: that SIGPIPE
    is not forwarded to the child, hotswapd keeps working, and kill -PIPE still is forwarded."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HOTSWAPD_LOG_FORMAT="json")
    proc = subprocess.Popen(
        [*HOTSWAPD, "--settle", "0", "--", *CHILD],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None
    assert stderr is not None
    lines: list[str] = []

    def read_until(text: str) -> None:
        while text not in (line := stdout.readline()):
            assert line, f"no {text!r} in {lines}"
            lines.append(line)
        lines.append(line)

    try:
        read_until("ready (pid:")
        wait_until(lambda: '"supervising"' in stderr.readline(), 30, "the loop")
        stderr.close()  # hotswapd's next log line hits a pipe with no reader
        proc.send_signal(signal.SIGUSR2)  # a swap: many log lines, each one EPIPE
        read_until("ready (pid:")  # generation 2 started: hotswapd kept working
        proc.send_signal(signal.SIGPIPE)  # from outside: forwarded to the active child
        read_until("signal SIGPIPE")
        proc.send_signal(signal.SIGTERM)
        lines.extend(stdout.readlines())
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sum(line == "signal SIGPIPE\n" for line in lines) == 1
