"""The supervisor: one queue of events, one `handle_<event>` each, the only writer of state.

Signals, the reaper, the watcher and the control socket all put events on the queue;
nothing else changes `state`, `active` or a generation's state. Long work (a swap,
a stop) runs in tasks that report back through the same queue or through the
narrow hooks a swap transaction is given (`launch_candidate`, `commit`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any, assert_never

from hotswapd.boot import signals as sigs
from hotswapd.boot.config import Config
from hotswapd.boot.launch import Spawned
from hotswapd.boot.listeners import Listener
from hotswapd.boot.spawn import Credentials
from hotswapd.boot.units import signal_name
from hotswapd.core.events import (
    ChildExited,
    Code,
    Counters,
    Event,
    LivenessProbed,
    Outcome,
    ProbationDecided,
    RestartDue,
    SignalReceived,
    SignalRequested,
    StopFinished,
    StopRequested,
    SwapFinished,
    SwapOutcome,
    SwapRequested,
)
from hotswapd.core.generation import Generation
from hotswapd.core.probation import Liveness, Probation
from hotswapd.core.processes import Processes
from hotswapd.core.reaper import describe_status, group_alive
from hotswapd.core.restart import Backoff, is_transient
from hotswapd.core.states import TRANSITIONS, GenState, State
from hotswapd.core.steering import Steering, children_of, holders
from hotswapd.core.stop import send as send_signal
from hotswapd.core.stop import stop_generation
from hotswapd.core.swap import SwapTransaction
from hotswapd.errors import EXIT_FAILURE, SpawnError, exit_status
from hotswapd.gates import analysis, memory, probe, scrape
from hotswapd.gates.notify import NotifySocket
from hotswapd.host.hashing import file_sha256

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
PROBATION_LOOK_S = 0.25  # a health probe and an RSS sample of a generation on probation
# Swaps that get no probation: the swap back itself (its failing would swap "back" to
# the build that just failed).
_NO_PROBATION = frozenset({"probation"})


class Supervisor:
    """Owns the generations and decides; everything else reports to it."""

    def __init__(
        self,
        config: Config,
        listeners: list[Listener],
        spawned: Spawned,
        environ: dict[str, str],
        credentials: Credentials | None,
        log: Any,
        processes: Processes | None = None,
    ) -> None:
        self.processes = processes or Processes()
        self.config = config
        self.listeners = listeners
        self.environ = environ
        self.credentials = credentials
        self.log = log
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.reaper = self.processes.reaper(self._child_exited)
        first = Generation.from_spawned(spawned)
        self.state = State.STARTING
        self.generations: dict[int, Generation] = {first.number: first}
        self.active = first
        self.previous: Generation | None = None  # the last committed generation before active
        self.next_number = first.number + 1
        self.swap: SwapTransaction | None = None
        self.swap_task: asyncio.Task[SwapOutcome] | None = None
        self.follow_up: SwapRequested | None = None
        self.last_swap: SwapOutcome | None = None
        self.swap_count = 0
        self.counters = Counters()
        self.exit_code: int | None = None
        self.backoff = Backoff()
        self.restart_pending = False
        self.is_pid1 = os.getpid() == 1
        self.session: Any = None
        self.watcher: Any = None  # set by run.py when --watch is given
        self.started_at = time.time()
        self.listeners_swap_hooks: list[Callable[[SwapOutcome], None]] = []
        # --probation: the watch of the generation committed last, and its task
        self.probation: Probation | None = None
        self.probation_generation: int | None = None
        self._probation_task: asyncio.Task[Any] | None = None
        self.pending_rollback: SwapRequested | None = None  # a failed probation's swap back
        self.rss_delta_at_commit: int | None = None  # golden signals, for /metrics
        self.rss_delta_probation_end: int | None = None
        # --liveness: consecutive failed probes of the active generation
        self.liveness = Liveness(config.liveness) if config.liveness else None
        self._tasks: set[asyncio.Task[Any]] = set()
        first.state = GenState.ACTIVE
        if not first.sockets:
            first.sockets = tuple(listener.sock for listener in listeners)
        self.steering = Steering(listeners, first.number, log)
        first.public_port = self._public_port()
        # PID-1 children that belong to no live generation, pid → command: status lists
        # them, and each is logged once.
        self.unowned: dict[int, str] = {}
        # Registered before signals are unblocked: a generation 1 that exits at once must
        # reach its waiter, not be counted as an orphan.
        self.attach(first)

    # ---------------------------------------------------------------- plumbing

    def post(self, event: Event) -> None:
        """Enqueue an event; the only thing event sources may do."""
        self.queue.put_nowait(event)

    def on_signal(self, signum: int) -> None:
        self.post(SignalReceived(signum))

    def _child_exited(self, pid: int, status: int) -> None:
        self.post(ChildExited(pid, status))

    def _transition(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal transition {self.state.value} -> {new.value}")
        self.log.debug("state", old=self.state.value, new=new.value)
        self.state = new

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def attach(self, gen: Generation) -> None:
        """Register a generation's exit future and its notify socket on the loop."""
        gen.exited = self.reaper.watch(gen.pid)
        if gen.notify is not None:
            gen.notify.expected_pgid = gen.pid
            gen.notify.on_message = lambda fields, sender, g=gen: self._notify_message(
                g, fields, sender
            )
            gen.notify.attach(asyncio.get_running_loop())

    def executable_sha256(self, gen: Generation) -> str | None:
        """Hashed on demand (status, metrics): hashing at spawn would delay every swap."""
        if gen.sha256 is None:
            gen.sha256 = file_sha256(gen.exe_fd if gen.exe_fd is not None else gen.executable)
        return gen.sha256

    def _notify_message(self, gen: Generation, fields: dict[str, str], sender: int | None) -> None:
        self.log.info(
            "sd_notify",
            generation=gen.number,
            pid=gen.pid,
            sender_pid=sender,
            fields=fields,  # a child's words are data under one key, never keyword arguments
        )

    # ---------------------------------------------------------------- the loop

    async def run(self) -> int:
        self._transition(State.RUNNING)
        self.reaper.reap()  # anything that exited while signals were still blocked
        if self.liveness is not None:
            self._spawn_task(self._liveness_probes(self.liveness.rule.interval))
        while self.state is not State.STOPPED:
            event = await self.queue.get()
            try:
                self._dispatch(event)
            except Exception:  # PID 1 must outlive a bug in one handler
                self.log.exception("handler_failed", failed_event=type(event).__name__)
        await self._close()
        return self.exit_code if self.exit_code is not None else EXIT_FAILURE

    def _dispatch(self, event: Event) -> None:
        match event:
            case SignalReceived():
                self.handle_signal(event)
            case ChildExited():
                self.handle_child_exited(event)
            case SwapRequested():
                self.handle_swap_requested(event)
            case SwapFinished():
                self.handle_swap_finished(event)
            case SignalRequested():
                self.handle_signal_requested(event)
            case RestartDue():
                self.handle_restart_due(event)
            case StopFinished():
                self.handle_stop_finished(event)
            case StopRequested():
                self.handle_stop_requested(event)
            case ProbationDecided():
                self.handle_probation_decided(event)
            case LivenessProbed():
                self.handle_liveness_probed(event)
            case _:
                assert_never(event)

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for gen in self.generations.values():
            gen.close_resources()
            gen.close_exe()
        self.steering.close()
        if self.session is not None:
            await self.session.close()

    # ---------------------------------------------------------------- handlers

    def handle_signal(self, event: SignalReceived) -> None:
        sig = event.signum
        if sig == self.config.swap_signal:
            if self.state is State.STOPPING:
                self.log.info("swap_refused", source="signal", reason="hotswapd is stopping")
                return
            self.handle_swap_requested(SwapRequested(source="signal", reason=signal_name(sig)))
            return
        if sig in _STOP_SIGNALS and self.state is not State.STOPPING:
            self.log.info("stop_requested", signal=signal_name(sig))
            self._begin_stop(self.config.stop_signal or sig, exit_code=None)
            return
        if self.state is State.STOPPING:
            # A second TERM while stopping is forwarded again, as tini does.
            for gen in self._live():
                self.processes.send(gen.pid, sig)
            return
        self._forward(sig)
        if sig == signal.SIGTSTP and not self.is_pid1:
            os.kill(os.getpid(), signal.SIGSTOP)  # job control: stop with the child

    def _forward(self, sig: int) -> None:
        gen = self.active
        if gen.alive and self.processes.send(gen.pid, sig):
            self.counters.signals_forwarded += 1
            self.log.debug(
                "signal_forwarded", signal=signal_name(sig), generation=gen.number, pid=gen.pid
            )

    def handle_signal_requested(self, event: SignalRequested) -> None:
        self.log.info(
            "signal_requested",
            signal=signal_name(event.signum),
            source=event.source,
            generation=self.active.number,
            pid=self.active.pid,
        )
        self._forward(event.signum)

    def handle_child_exited(self, event: ChildExited) -> None:
        gen = next((g for g in self.generations.values() if g.pid == event.pid), None)
        if gen is None:
            return
        gen.status = event.status
        previous_state = gen.state
        gen.state = GenState.EXITED
        gen.close_resources()
        self.log.info(
            "child_exited",
            generation=gen.number,
            pid=gen.pid,
            status=describe_status(event.status),
            was=previous_state.value,
        )
        self._relisten("generation exited")
        if gen is not self.active:
            self._forget(gen)
            return
        if self.probation is not None and self.probation_generation == gen.number:
            loop_now = asyncio.get_running_loop().time()
            decision = self.probation.on_exit(loop_now, describe_status(event.status))
            self._end_probation(gen.number, decision.outcome, decision.reason, swap_back=False)
        if self.state is State.STOPPING:
            return
        if self.config.on_exit == "restart":
            self._schedule_restart(gen)
            return
        self.log.info(
            "active_exited", generation=gen.number, pid=gen.pid, exit_code=exit_status(event.status)
        )
        self._begin_stop(
            self.config.stop_signal or signal.SIGTERM, exit_code=exit_status(event.status)
        )

    def _forget(self, gen: Generation) -> None:
        """Drop an exited generation that no one will roll back to."""
        if gen is self.previous or gen is self.active:
            return
        self.generations.pop(gen.number, None)
        gen.close_exe()

    def handle_swap_requested(self, event: SwapRequested) -> None:
        if self.state is State.SWAPPING and event.rollback:
            # Joining a queued reload would run it as a reload: a rollback waits its turn.
            reason = "a swap is in progress; roll back once it has finished"
            self._refuse(event, reason, Code.BUSY)
            return
        if self.state is State.SWAPPING:
            if self.follow_up is None:
                self.log.info(
                    "swap_coalesced",
                    source=event.source,
                    note="a swap is running; one follow-up swap is queued",
                )
                self.follow_up = event
            else:
                self.log.info(
                    "swap_coalesced",
                    source=event.source,
                    note="a follow-up swap is already queued; this request joins it",
                )
                self.follow_up.joined.append(event)
            self.counters.swaps_coalesced += 1
            return
        if self.state is not State.RUNNING or not self.active.alive:
            reason = f"hotswapd is {self.state.value}; swaps are only started while running"
            self._refuse(event, reason, Code.NOT_RUNNING)
            return
        exec_fd: int | None = None
        executable: str | None = None
        if event.rollback:
            prev = self.previous
            if prev is None or prev.exe_fd is None:
                reason = "no previous committed generation to roll back to"
                self._refuse(event, reason, Code.NO_PREVIOUS)
                return
            exec_fd, executable = prev.exe_fd, prev.executable
        self._transition(State.SWAPPING)
        self.swap_count += 1
        if self.probation is not None:
            # Its probes would reach the new candidate now; the new commit starts another.
            self.log.info(
                "probation_ended",
                generation=self.probation_generation,
                reason=f"a swap started ({event.source})",
            )
            self._cancel_probation()
        if self.session is None and (self.config.health_url or "").startswith("https:"):
            from hotswapd.gates.probe import new_session

            self.session = new_session()  # TLS only: every other probe is gates/http.py
        self.log.info(
            "swap_requested",
            swap=self.swap_count,
            source=event.source,
            reason=event.reason,
            generation=self.active.number,
            pid=self.active.pid,
        )
        self.swap = SwapTransaction(
            self,
            self.active,
            self.swap_count,
            event.source,
            self.session,
            exec_fd=exec_fd,
            executable=executable,
            on_phase=event.on_phase,
        )
        self.swap_task = self._spawn_task(self._run_swap(self.swap, event))

    def _refuse(self, event: SwapRequested, reason: str, code: Code) -> None:
        self.log.warning("swap_refused", source=event.source, reason=reason, code=code.value)
        outcome = SwapOutcome(
            swap_id=0, trigger=event.source, outcome=Outcome.REFUSED, reason=reason, code=code
        )
        self._count(outcome)
        _reply(event, outcome)

    def _count(self, outcome: SwapOutcome) -> None:
        """Count an outcome under its code: the labels metrics and status report."""
        code = (outcome.code or Code.INTERNAL).value
        if outcome.outcome is Outcome.COMMITTED:
            self.counters.swaps_committed += 1
        elif outcome.outcome is Outcome.REFUSED:
            self.counters.swaps_refused += 1
            self.counters.refusal_reasons[code] = self.counters.refusal_reasons.get(code, 0) + 1
        else:
            self.counters.swaps_rolled_back += 1
            self.counters.rollback_reasons[code] = self.counters.rollback_reasons.get(code, 0) + 1

    async def _run_swap(self, swap: SwapTransaction, event: SwapRequested) -> SwapOutcome:
        try:
            outcome = await swap.run()
        except Exception as exc:  # a swap must always end with an outcome
            self.log.exception("swap_crashed", swap=swap.outcome.swap_id)
            outcome = await swap.fail(f"internal error: {exc!r}")
        _reply(event, outcome)
        self.post(SwapFinished(outcome))
        return outcome

    def handle_swap_finished(self, event: SwapFinished) -> None:
        outcome = event.outcome
        self.last_swap = outcome
        self.swap = None
        self.swap_task = None
        self._count(outcome)
        for hook in self.listeners_swap_hooks:
            hook(outcome)
        self.log.info(
            "swap_finished",
            swap=outcome.swap_id,
            outcome=outcome.outcome.value,
            code=outcome.code.value if outcome.code else None,
            reason=outcome.reason,
            phases=outcome.phases,
            active_generation=self.active.number,
            active_pid=self.active.pid,
        )
        if self.liveness is not None and (
            outcome.outcome is Outcome.COMMITTED or outcome.trigger == "liveness"
        ):
            # A new generation is active, or the replacement failed: count afresh.
            self.liveness.reset()
        if self.state is State.STOPPING:
            return
        self._transition(State.RUNNING)
        if self.pending_rollback is not None and self.active.alive:
            rollback, self.pending_rollback = self.pending_rollback, None
            self.handle_swap_requested(rollback)
            return
        if not self.active.alive and not self.restart_pending:
            # The active generation exited while the swap ran: apply --on-exit now.
            self.handle_child_exited(ChildExited(self.active.pid, self.active.status or 0))
            return
        if self.follow_up is not None:
            follow_up, self.follow_up = self.follow_up, None
            self.handle_swap_requested(follow_up)

    # ---------------------------------------------------------------- swap hooks

    def launch_candidate(self, exec_fd: int | None, executable: str | None) -> Generation:
        """A candidate gets new sockets where steered: members that get nothing yet."""
        number = self.next_number
        sockets = self.steering.sockets_for(number)
        try:
            return self._launch(exec_fd, executable, sockets)
        except BaseException:
            self.steering.release(number)
            raise

    def _launch(
        self,
        exec_fd: int | None = None,
        executable: str | None = None,
        sockets: tuple[Any, ...] | None = None,
    ) -> Generation:
        """Spawn the next generation (a swap's candidate or a restart) and register it."""
        number = self.next_number
        notify = NotifySocket(number) if self.config.ready == "notify" else None
        try:
            spawned = self.processes.launch(
                self.config,
                self.listeners,
                number,
                self.environ,
                self.credentials,
                notify=notify,
                exec_fd=exec_fd,
                executable=executable,
                sockets=sockets,
            )
        except BaseException:
            if notify is not None:
                notify.close()
            raise
        gen = Generation.from_spawned(spawned)
        gen.public_port = self._public_port()
        if not gen.sockets:
            gen.sockets = tuple(sockets or (listener.sock for listener in self.listeners))
        self.next_number += 1
        self.generations[number] = gen
        self.attach(gen)
        return gen

    def _public_port(self) -> int | None:
        target = self.steering.probe_target()
        return target[1] if target is not None and target[0] == "127.0.0.1" else None

    def commit(self, candidate: Generation) -> Generation:
        """The commit point: the candidate becomes active and the old one starts draining."""
        old = self.active
        old.state = GenState.DRAINING
        candidate.state = GenState.ACTIVE
        self.active = candidate
        if self.steering.enabled:
            # Every new connection to the candidate now; the old one is signalled by the
            # swap once its queue is empty (the handover), through `drain`.
            self.steering.cutover(candidate.number)
        else:
            self.processes.send(old.pid, self.config.drain_signal)  # first: nothing may delay it
        sigs.pass_terminal(old.pid, candidate.pid)  # docker run -it: the new one in front
        self._begin_probation(candidate)
        prev, self.previous = self.previous, old
        if prev is not None and prev is not old:
            # Closing the last fd of a replaced binary frees it inside close(2), which takes
            # milliseconds for a large file: do it on a later loop turn, off the cutover.
            asyncio.get_running_loop().call_soon(self._release, prev)
        return old

    def _release(self, gen: Generation) -> None:
        """Let go of a generation no one can roll back to any more."""
        if not gen.alive:
            self._forget(gen)
        else:
            gen.close_exe()

    def rolled_back(self, candidate: Generation) -> None:
        candidate.state = GenState.ROLLED_BACK
        self.steering.withdraw(candidate.number)  # weight 0 at once, before anything else

    def drain(self, gen: Generation) -> None:
        """The handover is done: tell the old generation to drain."""
        if gen.alive:
            self.processes.send(gen.pid, self.config.drain_signal)

    async def retire(self, gen: Generation, grace: float) -> None:
        """After a generation exited: stop what it left holding its sockets, free them.

        A daemon it started (setsid, double fork) keeps a socket of the generation and
        would accept from it; steered, that socket has had no new connection since the
        cutover. It is stopped like its generation (drain signal, then KILL at `grace`),
        and only then does the socket leave its group.
        """
        inodes = self.steering.inodes(gen.number)
        live = {g.pid for g in self.generations.values() if g.alive}
        left = sorted(holders(inodes) - live)
        if left:
            self.log.info(
                "descendants_stopping",
                generation=gen.number,
                pids=left,
                signal=signal_name(self.config.drain_signal),
                timeout_s=grace,
            )
            await _stop_pids(left, self.config.drain_signal, grace, self.reaper, self.log)
        if self.steering.enabled and not self.steering.release(gen.number):
            self.log.warning("steering_release_deferred", generation=gen.number)
        self._relisten("a generation was retired")
        self.refresh_unowned()

    def _relisten(self, why: str) -> None:
        """Shared sockets a child shut down listen again before anything else runs on them."""
        names = self.steering.relisten_shared()
        if names:
            self.log.warning(
                "listener_relistened",
                listeners=names,
                why=why,
                note="a child shut down a shared socket (SO_ACCEPTCONN 0); "
                "only steered mode isolates generations",
            )

    def refresh_unowned(self) -> dict[int, str]:
        """PID-1 children that belong to no live generation (listed, each logged once)."""
        known = {g.pid for g in self.generations.values() if g.alive}
        found = {pid: cmd for pid, cmd in children_of(os.getpid()).items() if pid not in known}
        for pid, cmd in found.items():
            if pid not in self.unowned:
                note = "a child of hotswapd that belongs to no live generation"
                self.log.warning("unowned_child", pid=pid, command=cmd, note=note)
        self.unowned = found
        return found

    # ---------------------------------------------------------------- restart

    def _schedule_restart(self, gen: Generation) -> None:
        if self.state is State.SWAPPING and self.swap is not None and not self.swap.committed:
            self.swap.abort("the active generation exited")
            return  # handle_swap_finished re-applies --on-exit once the candidate is gone
        ran_for = time.monotonic() - gen.started_mono
        delay = self.backoff.after_exit(ran_for)
        if self.state is not State.SWAPPING:
            self._transition(State.RESTARTING)
        # During a committed swap's drain the restart does not wait for the drain: the old
        # generation has been told to stop serving, so nothing else would.
        self.restart_pending = True
        self.log.warning(
            "restart_scheduled",
            generation=gen.number,
            pid=gen.pid,
            status=describe_status(gen.status or 0),
            delay_s=round(delay, 3),
            ran_s=round(ran_for, 3),
        )
        asyncio.get_running_loop().call_later(delay, self.post, RestartDue())

    def handle_restart_due(self, event: RestartDue) -> None:
        if not self.restart_pending or self.state not in (State.RESTARTING, State.SWAPPING):
            return
        # The socket is listening again before the restarted generation inherits it.
        self._relisten("restart")
        repaired = self.steering.restore(self.active.number)
        if repaired:
            self.log.warning("listener_relistened", listeners=repaired, why="restart")
        try:
            gen = self._launch(sockets=self.active.sockets or None)
        except SpawnError as exc:
            if is_transient(exc.errno):
                # A writer still holds the file, or a limit is reached for now: try again.
                delay = self.backoff.next()
                self.log.warning("restart_retry", error=str(exc), delay_s=round(delay, 3))
                asyncio.get_running_loop().call_later(delay, self.post, RestartDue())
                return
            # A program that cannot be exec'd at all will not start by retrying: give up.
            self.restart_pending = False
            self.log.error("restart_failed", error=str(exc), exit_code=exc.exit_code)
            if self.state is State.RESTARTING:
                self._transition(State.RUNNING)
            self._begin_stop(signal.SIGTERM, exit_code=exc.exit_code)
            return
        self.restart_pending = False
        old = self.active
        gen.state = GenState.ACTIVE
        self.steering.adopt(old.number, gen.number)  # its sockets, queue and all
        self.active = gen
        self._forget(old)
        self.counters.restarts += 1
        self.log.info("restarted", generation=gen.number, pid=gen.pid)
        if self.state is State.RESTARTING:
            self._transition(State.RUNNING)

    # ---------------------------------------------------------------- stop

    def _live(self) -> list[Generation]:
        return [gen for gen in self.generations.values() if gen.alive]

    def _begin_stop(self, sig: int, exit_code: int | None) -> None:
        if self.state is State.STOPPING:
            return
        if self.exit_code is None and exit_code is not None:
            self.exit_code = exit_code
        self._transition(State.STOPPING)
        if self.swap is not None and not self.swap.committed:
            self.swap.abort("hotswapd is stopping")
        self._spawn_task(self._stop_all(sig))

    async def _stop_all(self, sig: int) -> None:
        swap_task = self.swap_task
        candidate = self.swap.candidate if self.swap is not None else None
        stoppers = []
        for gen in list(self.generations.values()):
            if gen is candidate and self.swap is not None and not self.swap.committed:
                continue  # the transaction rolls its candidate back itself
            if gen.state is GenState.DRAINING and gen.alive:
                # Told to drain at cutover: now hotswapd stops, so --stop-timeout bounds it,
                # not what is left of --drain-timeout (docker stop would not wait that long).
                stoppers.append(
                    stop_generation(
                        gen,
                        sig,
                        self.config.stop_timeout,
                        self.reaper,
                        self.log,
                        why="hotswapd stopping while draining",
                        already_signalled=sig == self.config.drain_signal,
                    )
                )
                continue
            if not gen.alive and not group_alive(gen.pid):
                continue
            if gen.alive:
                gen.state = GenState.STOPPING
            stoppers.append(
                stop_generation(
                    gen,
                    sig,
                    self.config.stop_timeout,
                    self.reaper,
                    self.log,
                    why="hotswapd stopping",
                )
            )
        await asyncio.gather(*stoppers)
        if swap_task is not None:
            await asyncio.wait({swap_task})
        # Anything still alive (a draining generation whose swap was cancelled) goes now.
        for gen in self._live():
            await stop_generation(
                gen, sig, self.config.stop_timeout, self.reaper, self.log, why="hotswapd stopping"
            )
        if self.exit_code is None:
            status = self.active.status
            self.exit_code = exit_status(status) if status is not None else EXIT_FAILURE
        self.post(StopFinished())

    def handle_stop_requested(self, event: StopRequested) -> None:
        self.log.error("stopping", reason=event.reason, exit_code=event.exit_code)
        self._begin_stop(self.config.stop_signal or signal.SIGTERM, exit_code=event.exit_code)

    def handle_stop_finished(self, event: StopFinished) -> None:
        self.log.info(
            "stopped", exit_code=self.exit_code, orphans_reaped=self.reaper.orphans_reaped
        )
        self._transition(State.STOPPED)

    # ---------------------------------------------------------------- probation

    def _begin_probation(self, gen: Generation) -> None:
        """Watch a just-committed generation for --probation; the old one's RSS is the
        baseline (the memory gate's last figures, taken before the cutover)."""
        self._cancel_probation()
        outcome = self.swap.outcome if self.swap is not None else None
        if outcome is None:
            return
        baseline = outcome.old_rss_bytes or 0
        at_commit = outcome.new_rss_bytes or memory.tree_rss(gen.pid)
        self.rss_delta_at_commit = at_commit - baseline if baseline else None
        if self.config.probation <= 0 or outcome.trigger in _NO_PROBATION:
            return  # the last probation's figure stays: it is what that one ended with
        self.rss_delta_probation_end = None
        self.probation = Probation(
            self.config.probation,
            asyncio.get_running_loop().time(),
            baseline_rss=baseline,
            rss_at_commit=at_commit,
            rule=self.config.max_memory_growth,
        )
        self.probation_generation = gen.number
        self.log.info(
            "probation_started",
            generation=gen.number,
            pid=gen.pid,
            seconds=self.config.probation,
            baseline_rss_bytes=baseline,
        )
        window = self.swap.last_window if self.swap is not None else None
        judged, serving_end = None, None
        if self.config.analysis and window is not None and self.steering.enabled:
            # From the candidate's last scrape on, against the serving generation's last
            # window: there is no serving generation to compare with after cutover.
            judged = analysis.StepAnalysis(self.config.analysis, self.config.analysis_min_requests)
            candidate_end, serving_start, serving_end = window
            judged.begin(candidate_end, serving_start)
        watching = self._watch_probation(gen, self.probation, judged, serving_end)
        self._probation_task = self._spawn_task(watching)

    def _cancel_probation(self) -> None:
        if self._probation_task is not None:
            self._probation_task.cancel()
        self._probation_task = None
        self.probation = None
        self.probation_generation = None

    def probation_remaining(self) -> float | None:
        """Seconds of probation left for `ctl status`; None when none is running."""
        if self.probation is None:
            return None
        return round(self.probation.remaining(asyncio.get_running_loop().time()), 3)

    async def _watch_probation(
        self,
        gen: Generation,
        watch: Probation,
        judged: analysis.StepAnalysis | None = None,
        serving: analysis.Snapshot | None = None,
    ) -> None:
        """Probe, measure and judge `gen` until its probation is decided; report it."""
        loop = asyncio.get_running_loop()
        while True:
            decision = watch.tick(loop.time())
            if decision.outcome == "watching" and judged is not None:
                metrics = await self._scrape_active()
                verdict = judged.fail_fast(metrics, serving) if metrics is not None else None
                if verdict is not None:
                    decision = watch.on_analysis(loop.time(), verdict)
            if decision.outcome == "watching" and self._health_fetch(gen) is not None:
                healthy, detail = await self._probe_once(gen)
                decision = watch.on_probe(loop.time(), healthy, detail)
            if decision.outcome == "watching" and gen.alive:
                rss = memory.tree_rss(gen.pid)
                if rss:
                    decision = watch.on_memory(loop.time(), rss)
            if decision.outcome != "watching":
                break
            await asyncio.sleep(min(PROBATION_LOOK_S, max(watch.ends_at - loop.time(), 0)))
        self.post(ProbationDecided(gen.number, decision.outcome, decision.reason))

    def handle_probation_decided(self, event: ProbationDecided) -> None:
        if self.probation is None or self.probation_generation != event.generation:
            return  # a later swap or an exit ended this probation first
        self._end_probation(event.generation, event.outcome, event.reason, swap_back=True)

    def _end_probation(self, number: int, outcome: str, reason: str, *, swap_back: bool) -> None:
        """Count and log a decided probation; a failure swaps back to the previous build."""
        watch = self.probation
        assert watch is not None
        self._cancel_probation()
        self.rss_delta_probation_end = watch.rss_delta if watch.baseline_rss else None
        self.counters.probations[outcome] = self.counters.probations.get(outcome, 0) + 1
        fields = dict(generation=number, reason=reason, rss_delta_bytes=watch.rss_delta)
        if outcome == "passed":
            self.log.info("probation_passed", **fields)
            return
        self.log.error("probation_failed", **fields, swap_back=swap_back)
        if not swap_back:
            return  # it exited: --on-exit decides, a gated swap needs a serving generation
        request = SwapRequested(source="probation", reason=reason, rollback=True)
        if self.state is State.SWAPPING:
            self.pending_rollback = request  # the commit's own drain is still running
        else:
            self.handle_swap_requested(request)

    async def _scrape_active(self) -> analysis.Snapshot | None:
        """The active generation's metrics (no candidate: probe connections reach it)."""
        target = self.steering.probe_target()
        if target is None:
            return None
        host, port = target
        keep = frozenset().union(*(rule.metrics for rule in self.config.analysis))
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            sock = await self.steering.probe_source().connect(
                asyncio.get_running_loop(), host, port
            )
            return await scrape.scrape_socket(sock, self.config.metrics_path, shown, keep=keep)
        except (OSError, scrape.ScrapeError) as exc:
            self.log.warning("probation_scrape_failed", error=str(exc))
            return None

    # ---------------------------------------------------------------- liveness

    async def _liveness_probes(self, interval: float) -> None:
        """Probe the active generation every `interval`, outside swaps; report each."""
        while True:
            await asyncio.sleep(interval)
            gen = self.active
            if self.state is not State.RUNNING or not gen.alive:
                continue
            healthy, detail = await self._probe_once(gen)
            if self.state is State.RUNNING and gen is self.active:
                self.post(LivenessProbed(gen.number, healthy, detail))

    def handle_liveness_probed(self, event: LivenessProbed) -> None:
        live = self.liveness
        if live is None or event.generation != self.active.number:
            return
        if self.state is not State.RUNNING:
            return  # a swap started since: it brings a new generation or resets the count
        decision = live.on_probe(event.healthy, event.detail)
        if decision.outcome == "failing":
            self.log.warning(
                "liveness_failing",
                generation=event.generation,
                failures=decision.failures,
                reason=decision.reason,
            )
        elif decision.outcome == "replace":
            replaced = self.counters.liveness.get("replacements", 0)
            self.counters.liveness["replacements"] = replaced + 1
            self.log.error(
                "liveness_replacing",
                generation=event.generation,
                pid=self.active.pid,
                reason=decision.reason,
            )
            self.handle_swap_requested(SwapRequested(source="liveness", reason=decision.reason))

    # ---------------------------------------------------------------- probes outside swaps

    def _health_fetch(self, gen: Generation) -> probe.Fetch | None:
        """How to probe the active generation `gen` (no candidate: steered probes reach it)."""
        config = self.config
        if config.health_url:
            scheme, host, port, path = probe.split_url(config.health_url)
            if scheme == "https":
                if self.session is None:
                    self.session = probe.new_session()
                return probe.url_fetcher(self.session, config.health_url)
            return probe.fetcher(probe.plain_connector(host, port), path)
        if not config.health:
            return None
        target = self.steering.probe_target()
        if target is not None:
            source = self.steering.probe_source()
            return probe.fetcher(probe.steered_connector(source, *target), config.health)
        private = gen.probe_port()
        if private is None:
            return None
        return probe.fetcher(probe.plain_connector("127.0.0.1", private), config.health)

    async def _probe_once(self, gen: Generation) -> tuple[bool, str]:
        """One health probe of `gen`: healthy or not, and what was seen."""
        fetch = self._health_fetch(gen)
        if fetch is None:
            return True, ""
        within = min(self.config.health_timeout, probe.ATTEMPT_TIMEOUT_S)
        try:
            status = await fetch(within)
        except TimeoutError:
            return False, f"no answer within {within:g}s"
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer is the verdict
            return False, str(exc) or type(exc).__name__
        return 200 <= status < 300, f"answered HTTP {status}"

    # ---------------------------------------------------------------- public entry points

    def request_swap(
        self,
        source: str,
        reason: str = "",
        *,
        rollback: bool = False,
        reply: asyncio.Future[SwapOutcome] | None = None,
        on_phase: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        """The swap() entry point for the watcher and the control socket: it only queues."""
        self.post(
            SwapRequested(
                source=source, reason=reason, rollback=rollback, reply=reply, on_phase=on_phase
            )
        )


async def _stop_pids(pids: list[int], sig: int, grace: float, reaper: Any, log: Any) -> None:
    """Signal each pid, wait for its process group to empty, then KILL what is left."""
    groups = {}
    for pid in pids:
        try:
            groups[pid] = os.getpgid(pid)
        except ProcessLookupError:
            continue
        send_signal(pid, sig)
        send_signal(pid, signal.SIGCONT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    for pid, pgid in groups.items():
        if pgid == pid:  # its own group (setsid): the reaper tells when it is empty
            gone = await reaper.wait_group_empty(pgid, max(deadline - loop.time(), 0))
        else:
            gone = not _alive(pid)
            while not gone and loop.time() < deadline:
                await asyncio.sleep(0.05)  # not our group to watch: a bounded look
                gone = not _alive(pid)
        if not gone:
            log.warning("descendant_kill", pid=pid, timeout_s=grace)
            send_signal(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reply(event: SwapRequested, outcome: SwapOutcome) -> None:
    for request in (event, *event.joined):
        if request.reply is not None and not request.reply.done():
            request.reply.set_result(outcome)
