"""The one reaper: SIGCHLD → waitpid(-1, WNOHANG) until empty → per-pid futures.

Design note: PID 1 must own waitpid. asyncio's subprocess child watchers and
`subprocess.Popen.wait` call waitpid too, and whichever runs first steals the other's
status, so hotswapd never uses them. Orphans re-parented to us (as PID 1, or as a
child subreaper) are reaped here too and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from hotswapd.boot.signals import reclaim_terminal


class Reaper:
    """Collects every child status and hands managed ones to their owners."""

    def __init__(self, on_exit: Callable[[int, int], None]) -> None:
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._on_exit = on_exit
        self._reaped = asyncio.Event()
        self.orphans_reaped = 0

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
            future = self._waiters.pop(pid, None)
            if future is None:
                self.orphans_reaped += 1
                continue
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


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member runs as another user: still there
    return True
