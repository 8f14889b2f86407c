"""The one reaper: SIGCHLD → waitpid(-1, WNOHANG) until empty → per-pid futures.

Design note: PID 1 must own waitpid. asyncio's subprocess child watchers and
`subprocess.Popen.wait` call waitpid too, and whichever runs first steals the other's
status, so hotswapd never uses them. Orphans re-parented to us (as PID 1, or as a
child subreaper) are reaped here too, counted, and logged at debug level (tini -w).

A child killed by SIGKILL may have been killed by the kernel's OOM killer, or by a
person. Only the cgroup knows: its `oom_kill` counter (memory.events in cgroup v2,
memory.oom_control in v1) is read when such a status is reaped and compared with the
last reading, so "out of memory" is said only when the counter moved, never as a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from hotswapd.boot.signals import reclaim_terminal
from hotswapd.boot.units import signal_name
from hotswapd.host.cgroup import oom_kills
from hotswapd.log import get_logger


class Reaper:
    """Collects every child status and hands managed ones to their owners."""

    def __init__(self, on_exit: Callable[[int, int], None], log: Any = None) -> None:
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._on_exit = on_exit
        self._reaped = asyncio.Event()
        self.orphans_reaped = 0
        self._log = log if log is not None else get_logger()
        self._oom_kills = oom_kills()  # the counter as last read
        self.oom_killed: set[int] = set()  # managed pids whose SIGKILL was an OOM kill

    def watch(self, pid: int) -> asyncio.Future[int]:
        """The future that receives `pid`'s raw wait status; register right after fork."""
        future = self._waiters.get(pid)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters[pid] = future
        return future

    def reap(self) -> None:
        """Called on SIGCHLD (and once at start): collect every exited child."""
        reaped_any = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped_any = True
            oom = self._oom_moved() if _killed(status) else None
            future = self._waiters.pop(pid, None)
            if future is None:
                self.orphans_reaped += 1
                self._log.debug(
                    "orphan_reaped",
                    pid=pid,
                    status=describe_status(status),
                    oom_kill=oom is not None,
                )
                continue
            if oom is not None:
                self.oom_killed.add(pid)
                self._log.warning(
                    "oom_killed",
                    pid=pid,
                    note=f"killed by SIGKILL — out of memory: the cgroup's oom_kill count "
                    f"went from {oom[0]} to {oom[1]}",
                    fix="raise the container's memory limit, or find what grows "
                    "(--max-memory-growth gates a swap on it)",
                )
            if not future.done():
                future.set_result(status)
            # A generation's leader is its group's id: if that group held the terminal,
            # hotswapd takes it back now, so the next generation can be given it.
            reclaim_terminal(pid)
            self._on_exit(pid, status)
        if reaped_any:
            self._reaped.set()

    async def wait_group_empty(self, pgid: int, within: float) -> bool:
        """Wait until no process is left in group `pgid`; False at the timeout.

        The last member of a group to die is always our child (a direct child or an
        orphan re-parented to us), so each reap pass is the moment to re-check. A slow
        fallback re-check covers members whose parent is outside the group.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while group_alive(pgid):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._reaped.clear()
            with contextlib.suppress(TimeoutError):  # the fallback re-check
                await asyncio.wait_for(self._reaped.wait(), min(remaining, 0.25))
        return True

    def _oom_moved(self) -> tuple[int, int] | None:
        """(before, after) when the cgroup's oom_kill counter moved since the last read."""
        before, after = self._oom_kills, oom_kills()
        if after is not None:
            self._oom_kills = after
        if before is None or after is None or after <= before:
            return None
        return before, after


def _killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member runs as another user: still there
    return True


def describe_status(wait_status: int) -> str:
    """Describe a waitpid status for logs: 'exit 3' or 'signal 9 (SIGKILL)'."""
    if os.WIFEXITED(wait_status):
        return f"exit {os.WEXITSTATUS(wait_status)}"
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return f"signal {sig} ({signal_name(sig)})"
    return f"status {wait_status}"
