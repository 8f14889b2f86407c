"""Run hotswapd for real: as PID 1 of a new pid namespace, or as a plain subreaper.

Tests read what hotswapd logs (JSON lines on stderr) and what the child prints
(stdout), and wait on those lines with deadlines; they never sleep blindly.
Teardown kills the whole process tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.helpers import REPO, wait_until

HOTSWAPD = [sys.executable, "-m", "hotswapd"]
CHILD = [sys.executable, str(REPO / "tests" / "children" / "child.py")]


def descendants(pid: int) -> list[int]:
    """Every descendant of `pid` (outside pids), depth first."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def ns_pid(outside: int) -> int | None:
    """The pid a process has inside its innermost pid namespace."""
    try:
        with open(f"/proc/{outside}/status") as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        return None
    return None


def fd_links(pid: int) -> set[str]:
    """What each open fd of `pid` points at (`socket:[123]`, `anon_inode:inotify`, paths).

    A live process opens and closes fds while we list them; one gone by the time it is
    read is simply skipped.
    """
    links = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return links


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


class Hotswapd:
    """One hotswapd run; `pid` is hotswapd's own pid as seen from the test."""

    def __init__(
        self,
        options: Sequence[str],
        command: Sequence[str],
        pid1: bool = True,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        wrapper: Sequence[str] = (),
    ) -> None:
        full_env = dict(os.environ)
        full_env.setdefault("HOTSWAPD_LOG_FORMAT", "json")
        full_env["PYTHONPATH"] = str(REPO)
        full_env.pop("HOTSWAPD_CONTROL_SOCKET", None)
        if env:
            full_env.update(env)
        argv = [*wrapper, *HOTSWAPD, *options, "--", *command]
        if pid1:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv]
        self.argv = argv
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=cwd,
            stdin=stdin, start_new_session=True,
        )  # fmt: skip
        self.pid1 = pid1
        self._read_output()
        self._pid = self._find_pid()

    def _read_output(self) -> None:
        """Collect stdout and stderr lines (and parse the JSON log lines) in the background."""
        self.logs: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _find_pid(self) -> int | None:
        """hotswapd's pid, or None when it is gone before it could be found.

        Never a placeholder like -1: `os.kill(-1, sig)` signals every process the caller
        may signal, and as root that is nearly the whole machine.
        """
        if not self.pid1:
            return self.proc.pid
        done = object()

        def child_of_unshare() -> object:
            kids = descendants(self.proc.pid)
            if kids:
                return kids[0]
            return done if self.proc.poll() is not None else None

        try:
            found = wait_until(child_of_unshare, 10, "hotswapd to start in its pid namespace")
        except AssertionError:
            return None
        return found if isinstance(found, int) else None

    @property
    def pid(self) -> int:
        """hotswapd's own pid, verified now: raises when there is no such process to act on.

        Once hotswapd is reaped its pid may be reused by any process on the machine, so
        it is only handed out while the process is still ours: our unreaped child, or
        (as PID 1) a child of the `unshare` we started, which is still running.
        """
        pid = self._pid
        if pid is None or pid <= 1:
            raise LookupError(f"hotswapd's pid was never found: nothing to signal\n{self.tail()}")
        if self.proc.poll() is not None:
            raise LookupError(f"hotswapd has exited ({self.proc.returncode}): nothing to signal")
        if self.pid1 and pid not in descendants(self.proc.pid):
            raise LookupError(f"hotswapd (pid {pid}) has exited: nothing to signal")
        return pid

    @pid.setter
    def pid(self, value: int) -> None:  # a subclass that finds hotswapd its own way
        self._pid = value

    def _pump(self, stream: Any, is_stderr: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                if is_stderr:
                    self.stderr_lines.append(line)
                    if line.startswith("{"):
                        with contextlib.suppress(ValueError):
                            self.logs.append(json.loads(line))
                else:
                    self.stdout_lines.append(line)

    # ------------------------------------------------------------ reading

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [
                entry for entry in self.logs
                if entry.get("event") == event
                and all(entry.get(key) == value for key, value in match.items())
            ]  # fmt: skip

    def wait_event(self, event: str, timeout: float = 15, count: int = 1,
                   **match: Any) -> dict[str, Any]:  # fmt: skip
        found = wait_until(
            lambda: len(self.events(event, **match)) >= count and self.events(event, **match),
            timeout,
            lambda: f"log event {event} {match} x{count}\n{self.tail()}",
        )
        entry: dict[str, Any] = found[count - 1]
        return entry

    def port(self, name: str = "http") -> int:
        """The port a listener was bound to (tests bind port 0 and read it from the log)."""
        event = self.wait_event("listening", name=name)
        return int(str(event["address"]).rsplit(":", 1)[1])

    def stdout_matching(self, predicate: Callable[[str], bool]) -> list[str]:
        with self._lock:
            return [line for line in self.stdout_lines if predicate(line)]

    def wait_stdout(self, text: str, timeout: float = 15, count: int = 1) -> list[str]:
        lines: list[str] = wait_until(
            lambda: (
                len(found := self.stdout_matching(lambda line: text in line)) >= count and found
            ),
            timeout,
            lambda: f"child output {text!r} x{count}\n{self.tail()}",
        )
        return lines

    def tail(self, lines: int = 25) -> str:
        with self._lock:
            return (
                "stderr:\n"
                + "\n".join(self.stderr_lines[-lines:])
                + "\nstdout:\n"
                + "\n".join(self.stdout_lines[-lines:])
            )

    def children(self) -> list[int]:
        """Outside pids of hotswapd's live descendants."""
        return [pid for pid in descendants(self.pid) if proc_state(pid) not in (None, "Z")]

    def outside_pid(self, inside: int) -> int:
        """Map a pid from hotswapd's logs to the test's view of it."""
        if not self.pid1:
            return inside
        for pid in descendants(self.pid):
            if ns_pid(pid) == inside:
                return pid
        raise LookupError(f"no descendant with namespace pid {inside}")

    def zombies(self) -> list[int]:
        return [pid for pid in descendants(self.pid) if proc_state(pid) == "Z"]

    # ------------------------------------------------------------ acting

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(5)
        return code

    def kill_tree(self) -> None:
        if self.proc.poll() is None:
            own = [] if self._pid is None else [self._pid]
            for pid in [*own, *descendants(self.proc.pid)]:
                if pid <= 1:  # never -1 (everything) or 0 (our own group)
                    continue
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for thread in self._threads:
            thread.join(5)


def run_to_exit(options: Sequence[str], command: Sequence[str], timeout: float = 30,
                **kwargs: Any) -> tuple[int, Hotswapd]:  # fmt: skip
    """Run hotswapd until it exits by itself; returns its exit code and the run."""
    run = Hotswapd(options, command, **kwargs)
    try:
        return run.wait(timeout), run
    except subprocess.TimeoutExpired:
        run.kill_tree()
        raise
