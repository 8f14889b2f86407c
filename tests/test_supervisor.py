"""The supervisor's state machine, in process: events in, decisions out, in milliseconds.

As uvicorn tests its supervisors, these drive a real `Supervisor` on a real event loop
through its one seam to processes (`core/processes.py`): a stand-in that records every
launch and signal instead of forking, and a reaper the test tells which pid exited.
What only the kernel can show (signals to PID 1, fds, reaping) stays in the real-process
tests; these reach the branches that timing makes hard to hit there.

Stand-in pids lie above the kernel's PID_MAX_LIMIT (2^22): no process can ever have
them, so the few signals the stop path sends to them reach nothing.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import functools
import signal
import socket
from collections.abc import Callable, Coroutine, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from hotswapd.boot.config import Config
from hotswapd.boot.launch import Spawned
from hotswapd.boot.listeners import Listener
from hotswapd.boot.spawn import Credentials
from hotswapd.boot.values import parse_memory_growth
from hotswapd.core.events import (
    Code,
    Outcome,
    SignalReceived,
    SwapOutcome,
)
from hotswapd.core.processes import Processes
from hotswapd.core.reaper import Reaper
from hotswapd.core.states import GenState, State
from hotswapd.core.supervisor import Supervisor
from hotswapd.errors import SpawnError
from hotswapd.gates.notify import NotifySocket

PID_MAX_LIMIT = 1 << 22  # the kernel's hard ceiling for /proc/sys/kernel/pid_max
FIRST_PID = PID_MAX_LIMIT + 1000
EXIT_0 = 0  # raw wait status of `exit 0`
DEADLINE_S = 5.0


class FakeReaper(Reaper):
    """The real reaper's futures, fed by the test instead of waitpid."""

    def reap(self) -> None:
        """Nothing to collect: exits are delivered by `exit()`."""

    def exit(self, pid: int, status: int = EXIT_0) -> None:
        future = self._waiters.pop(pid)
        future.set_result(status)
        self._on_exit(pid, status)


class FakeProcesses(Processes):
    """Records launches and signals; a queued error makes the next launch fail."""

    def __init__(self) -> None:
        self.next_pid = FIRST_PID
        self.launched: list[int] = []
        self.sent: list[tuple[int, int]] = []
        self.errors: list[SpawnError] = []
        self.fake_reaper: FakeReaper | None = None

    def spawned(self, number: int) -> Spawned:
        pid = self.next_pid
        assert pid > PID_MAX_LIMIT
        self.next_pid += 1
        self.launched.append(pid)
        return Spawned(number, pid, ("/bin/true",), "/bin/true", socket.socket(), None, None)

    def launch(
        self,
        config: Config,
        listeners: Sequence[Listener],
        number: int,
        environ: Mapping[str, str],
        credentials: Credentials | None,
        notify: NotifySocket | None = None,
        exec_fd: int | None = None,
        executable: str | None = None,
        sockets: Sequence[_socket.socket] | None = None,
    ) -> Spawned:
        if self.errors:
            raise self.errors.pop(0)
        return self.spawned(number)

    def send(self, pid: int, sig: int) -> bool:
        self.sent.append((pid, sig))
        return True

    def reaper(self, on_exit: Callable[[int, int], None]) -> Reaper:
        self.fake_reaper = FakeReaper(on_exit)
        return self.fake_reaper


class World:
    """A supervisor running on the test's loop, and the handles to drive it."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("settle", 0.0)
        options.setdefault("max_memory_growth", parse_memory_growth("off"))
        self.config = Config(command=("/bin/true",), **options)
        self.processes = FakeProcesses()
        first = self.processes.spawned(1)
        self.supervisor = Supervisor(
            self.config,
            [],
            first,
            {"PATH": "/usr/bin:/bin"},
            None,
            structlog.get_logger(),
            processes=self.processes,
        )
        self.task = asyncio.ensure_future(self.supervisor.run())

    @property
    def reaper(self) -> FakeReaper:
        assert self.processes.fake_reaper is not None
        return self.processes.fake_reaper

    def exit(self, pid: int, status: int = EXIT_0) -> None:
        self.reaper.exit(pid, status)

    def request(self, *, rollback: bool = False) -> asyncio.Future[SwapOutcome]:
        reply: asyncio.Future[SwapOutcome] = asyncio.get_running_loop().create_future()
        self.supervisor.request_swap("test", rollback=rollback, reply=reply)
        return reply

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Let the loop run until `predicate()` holds; fail after the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while not predicate():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.001)  # one loop turn (and timers), not a wait for a guess

    async def stop(self) -> int:
        """Stop the supervisor the normal way, exiting what it signals."""
        self.supervisor.post(SignalReceived(signal.SIGTERM))
        await self.until(lambda: self.supervisor.state is State.STOPPING, "stopping")
        for gen in list(self.supervisor.generations.values()):
            if gen.alive:
                self.exit(gen.pid)
        return await asyncio.wait_for(self.task, DEADLINE_S)


Logs = list[MutableMapping[str, Any]]


def in_loop(test: Callable[[Logs], Coroutine[Any, Any, None]]) -> Callable[[Logs], None]:
    """Run an async test on a fresh event loop (the supervisor needs a running one)."""

    @functools.wraps(test)
    def run(logs: Logs) -> None:
        asyncio.run(asyncio.wait_for(test(logs), 30))

    return run


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


def events(logs: Logs, name: str) -> Logs:
    return [entry for entry in logs if entry["event"] == name]


@in_loop
async def test_a_second_stop_signal_while_stopping_is_forwarded_again(
    logs: Logs,
) -> None:
    """A second TERM while stopping reaches the live generation again, as tini does."""
    world = World()
    pid = world.supervisor.active.pid
    world.supervisor.post(SignalReceived(signal.SIGTERM))
    await world.until(lambda: world.supervisor.state is State.STOPPING, "stopping")
    assert world.processes.sent == []  # the first one went through the stop path
    world.supervisor.post(SignalReceived(signal.SIGTERM))
    await world.until(lambda: world.processes.sent != [], "the second TERM forwarded")
    assert world.processes.sent == [(pid, signal.SIGTERM)]
    world.exit(pid)
    assert await asyncio.wait_for(world.task, DEADLINE_S) == 0
    assert world.supervisor.state is State.STOPPED


@in_loop
async def test_swap_requests_during_a_swap_coalesce_into_one_follow_up(
    logs: Logs,
) -> None:
    """Requests during a swap become one follow-up swap; every requester gets its outcome."""
    world = World(settle=60.0)  # the first swap waits in its settle window
    first = world.request()
    await world.until(lambda: len(world.processes.launched) == 2, "the candidate launched")
    second, third = world.request(), world.request()
    await world.until(lambda: world.supervisor.counters.swaps_coalesced == 2, "coalescing")
    assert len(world.processes.launched) == 2  # still one candidate
    candidate = world.processes.launched[1]
    world.exit(candidate, 3 << 8)  # exit 3 during the settle window
    outcome = await asyncio.wait_for(first, DEADLINE_S)
    assert (outcome.outcome, outcome.code) == (Outcome.ROLLED_BACK, Code.EXITED)
    await world.until(lambda: len(world.processes.launched) == 3, "the follow-up launched")
    world.exit(world.processes.launched[2], 3 << 8)
    follow_up = await asyncio.wait_for(second, DEADLINE_S)
    assert follow_up is await asyncio.wait_for(third, DEADLINE_S)
    assert follow_up.swap_id == 2
    assert len(world.processes.launched) == 3  # one follow-up, not two
    assert await world.stop() == 0


@in_loop
async def test_a_rollback_during_a_swap_is_refused(logs: Logs) -> None:
    """A rollback asked for while a swap runs is refused, not merged into the queued reload."""
    world = World(settle=60.0)
    world.request()
    await world.until(lambda: len(world.processes.launched) == 2, "the candidate launched")
    refused = await asyncio.wait_for(world.request(rollback=True), DEADLINE_S)
    assert (refused.outcome, refused.code) == (Outcome.REFUSED, Code.BUSY)
    assert world.supervisor.follow_up is None
    assert world.supervisor.counters.refusal_reasons == {"swap_in_progress": 1}
    assert await world.stop() == 0


@in_loop
async def test_a_rollback_with_nothing_committed_is_refused(logs: Logs) -> None:
    """Rollback before any commit starts nothing and says why."""
    world = World()
    refused = await asyncio.wait_for(world.request(rollback=True), DEADLINE_S)
    assert (refused.outcome, refused.code) == (Outcome.REFUSED, Code.NO_PREVIOUS)
    assert world.processes.launched == [FIRST_PID]
    assert await world.stop() == 0


@in_loop
async def test_the_active_generation_exiting_mid_swap_aborts_it_then_restarts(
    logs: Logs,
) -> None:
    """With --on-exit restart, an active exit mid-swap rolls the swap back, then restarts."""
    world = World(settle=60.0, on_exit="restart")
    old = world.supervisor.active.pid
    reply = world.request()
    await world.until(lambda: len(world.processes.launched) == 2, "the candidate launched")
    candidate = world.processes.launched[1]
    world.exit(old, 1 << 8)
    # The transaction stops its candidate (drain signal, then waits): let it go.
    await world.until(
        lambda: world.supervisor.generations[2].state is GenState.ROLLED_BACK, "rollback"
    )
    world.exit(candidate, signal.SIGTERM)
    outcome = await asyncio.wait_for(reply, DEADLINE_S)
    assert (outcome.outcome, outcome.code) == (Outcome.ROLLED_BACK, Code.ABORTED)
    await world.until(lambda: len(world.processes.launched) == 3, "the restart")
    await world.until(lambda: world.supervisor.state is State.RUNNING, "running again")
    assert world.supervisor.active.pid == world.processes.launched[2]
    assert world.supervisor.counters.restarts == 1
    assert not world.supervisor.restart_pending
    assert await world.stop() == 0


@in_loop
async def test_a_transient_spawn_error_at_restart_is_retried(
    logs: Logs,
) -> None:
    """ETXTBSY at restart (a build still writing) is retried with backoff, not fatal."""
    world = World(on_exit="restart")
    world.processes.errors.append(SpawnError("busy", 126, errno.ETXTBSY))
    world.exit(world.supervisor.active.pid, 1 << 8)
    await world.until(lambda: len(world.processes.launched) == 2, "the second attempt")
    assert [e["error"] for e in events(logs, "restart_retry")] == ["busy"]
    await world.until(lambda: world.supervisor.state is State.RUNNING, "running again")
    assert world.supervisor.counters.restarts == 1
    assert await world.stop() == 0


@in_loop
async def test_a_permanent_spawn_error_at_restart_stops_with_its_code(
    logs: Logs,
) -> None:
    """A program gone for good (ENOENT) ends the restart loop with tini's 127."""
    world = World(on_exit="restart")
    world.processes.errors.append(SpawnError("cannot run '/app/server'", 127, errno.ENOENT))
    world.exit(world.supervisor.active.pid, 1 << 8)
    assert await asyncio.wait_for(world.task, DEADLINE_S) == 127
    assert events(logs, "restart_failed")[0]["exit_code"] == 127
    assert world.processes.launched == [FIRST_PID]


@in_loop
async def test_a_committed_swap_drains_the_old_generation(logs: Logs) -> None:
    """All gates pass: the candidate is active and the old one got the drain signal first."""
    world = World()
    old = world.supervisor.active.pid
    reply = world.request()
    await world.until(lambda: (old, signal.SIGTERM) in world.processes.sent, "the drain")
    assert world.supervisor.active.pid == world.processes.launched[1]
    world.exit(old)
    outcome = await asyncio.wait_for(reply, DEADLINE_S)
    assert (outcome.outcome, outcome.code) == (Outcome.COMMITTED, Code.PASSED)
    assert world.supervisor.counters.swaps_committed == 1
    assert await world.stop() == 0
