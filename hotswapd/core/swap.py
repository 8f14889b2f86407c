"""The swap transaction: spawn N+1, pass every gate, cut over, drain N — or roll back.

It has exactly one outcome (`SwapOutcome`): committed, rolled back or refused,
with the reason and the duration of each phase. Until every gate has passed,
generation N is not touched at all (same pid, never signalled). The commit itself is
the supervisor's to make (`hooks.commit`): it is the only writer of state.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hotswapd.boot.config import Config
from hotswapd.boot.listeners import accept_queue_length
from hotswapd.boot.spawn import resolve_program
from hotswapd.boot.steering_options import canary_steps
from hotswapd.core.events import Code, Outcome, SwapOutcome
from hotswapd.core.generation import Generation
from hotswapd.core.reaper import Reaper, describe_status
from hotswapd.core.steering import Steering
from hotswapd.core.stop import is_stopped, stop_generation
from hotswapd.errors import SpawnError
from hotswapd.gates import analysis, elf, memory, probe, scrape

ETXTBSY_RETRY_S = 5.0  # how long to wait for a writer to close a freshly built binary
HANDOVER_GRACE_S = 0.02  # after a socket's queue is empty: handshakes still in flight
CANARY_PROBE_EVERY_S = 0.25
# How often both generations are scraped mid-step for a rule that already fails: a bad
# candidate loses its weight about this long after its errors begin.
ANALYSIS_EVERY_S = 0.5
# Logged and timed, not yet streamed to `ctl reload --wait` (its transcript in the docs
# is another page's; the lead adds them there): the selector's own phases.
UNSTREAMED = frozenset({"handover"})
QUEUE_STALL_S = 2.0  # a queue that does not shrink for this long is not being accepted from


class SwapHooks(Protocol):
    """What the transaction asks of the supervisor."""

    config: Config
    reaper: Reaper
    log: Any
    environ: dict[str, str]

    def launch_candidate(self, exec_fd: int | None, executable: str | None) -> Generation: ...

    def commit(self, candidate: Generation) -> Generation: ...

    def rolled_back(self, candidate: Generation) -> None: ...

    @property
    def steering(self) -> Steering: ...

    def drain(self, gen: Generation) -> None: ...

    async def retire(self, gen: Generation, grace: float) -> None: ...


class GateFailed(Exception):
    """A gate said no; the message is the rollback reason, `code` its label."""

    def __init__(self, message: str, code: Code) -> None:
        super().__init__(message)
        self.code = code


class Refused(Exception):
    """A pre-flight check said no: nothing was started, generation N was not touched."""

    def __init__(self, message: str, code: Code) -> None:
        super().__init__(message)
        self.code = code


class SwapTransaction:
    """One swap, from the program check to the old generation's exit."""

    def __init__(
        self,
        hooks: SwapHooks,
        old: Generation,
        swap_id: int,
        trigger: str,
        session: Any,
        exec_fd: int | None = None,
        executable: str | None = None,
        on_phase: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.hooks = hooks
        self.config = hooks.config
        self.old = old
        self.exec_fd = exec_fd
        self.executable = executable
        self.session = session
        self.outcome = SwapOutcome(
            swap_id=swap_id, trigger=trigger, old_generation=old.number, old_pid=old.pid
        )
        self.candidate: Generation | None = None
        self.committed = False
        self._abort = asyncio.Event()
        self._abort_reason = ""
        self._on_phase = on_phase
        self._loop = asyncio.get_running_loop()
        self._mark = self._loop.time()
        self._keep = frozenset().union(*(rule.metrics for rule in self.config.analysis))
        # The last window's scrapes: (candidate at its end, serving at its start and end).
        # Probation judges the committed generation from there against that window.
        self.last_window: (
            tuple[analysis.Snapshot, analysis.Snapshot | None, analysis.Snapshot | None] | None
        ) = None
        self._window_start: tuple[analysis.Snapshot, analysis.Snapshot | None] | None = None

    # ---------------------------------------------------------------- helpers

    def abort(self, reason: str) -> None:
        """Ask the transaction to roll back (hotswapd is stopping); no-op after commit."""
        self._abort_reason = reason
        self._abort.set()

    def _phase(self, name: str, **details: Any) -> None:
        now = self._loop.time()
        self.outcome.phases[name] = round(now - self._mark, 6)
        self._mark = now
        fields = dict(details, swap=self.outcome.swap_id, phase_s=self.outcome.phases[name])
        if self.candidate is not None:
            fields.setdefault("generation", self.candidate.number)
            fields.setdefault("pid", self.candidate.pid)
        self.hooks.log.info("swap_" + name, **fields)
        if self._on_phase is not None and name not in UNSTREAMED:
            self._on_phase(name, fields)

    async def _guard(self, work: Awaitable[Any], limit: float | None, what: str) -> Any:
        """Run one gate, failing it when the candidate exits or hotswapd stops first."""
        assert self.candidate is not None
        assert self.candidate.exited is not None
        task = asyncio.ensure_future(work)
        abort = asyncio.ensure_future(self._abort.wait())
        exited = asyncio.shield(self.candidate.exited)
        try:
            done, _ = await asyncio.wait(
                {task, abort, exited}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for pending in (task, abort):
                if not pending.done():
                    pending.cancel()
            exited.cancel()  # cancels the shield only, not the reaper's future
        # An exit or an abort in the same loop turn as the gate's answer wins: a gate that
        # passed for a process that is already gone has not passed.
        self._check_alive(what)
        if task in done:
            return task.result()
        raise GateFailed(f"{what} timed out", Code.TIMEOUT)

    def _check_alive(self, what: str) -> None:
        """Fail the swap when the candidate has exited or hotswapd is stopping."""
        assert self.candidate is not None
        assert self.candidate.exited is not None
        if not self.candidate.exited.done() and _exited_unreaped(self.candidate.pid):
            # Gone, and SIGCHLD not handled yet: the gate's answer came from a process that
            # is already dead. Its status is the reaper's to collect; it says so shortly.
            raise GateFailed(
                f"generation {self.candidate.number} exited during {what}", Code.EXITED
            )
        if self.candidate.exited.done():
            status = self.candidate.exited.result()
            raise GateFailed(
                f"generation {self.candidate.number} exited during {what} "
                f"({describe_status(status)})",
                Code.EXITED,
            )
        if self._abort.is_set():
            raise GateFailed(f"aborted during {what}: {self._abort_reason}", Code.ABORTED)

    # ---------------------------------------------------------------- the transaction

    async def run(self) -> SwapOutcome:
        try:
            await self._prepare_and_gate()
            self._check_alive("the cutover")  # the last look before the old one is touched
        except GateFailed as exc:
            await self._rollback(str(exc), exc.code)
            return self._finish()
        except Refused as exc:
            self.outcome.serving_generation = self.old.number
            self.outcome.outcome = Outcome.REFUSED
            self.outcome.reason = str(exc)
            self.outcome.code = exc.code
            self.hooks.log.error(
                "swap_refused",
                swap=self.outcome.swap_id,
                source=self.outcome.trigger,
                reason=self.outcome.reason,
                code=exc.code.value,
                serving_generation=self.old.number,
                serving_pid=self.old.pid,
            )
            return self._finish()
        except SpawnError as exc:
            self.outcome.serving_generation = self.old.number
            self.outcome.outcome = Outcome.ROLLED_BACK
            self.outcome.reason = str(exc)
            self.outcome.code = Code.SPAWN
            self.hooks.log.error(
                "swap_rolled_back",
                swap=self.outcome.swap_id,
                reason=self.outcome.reason,
                serving_generation=self.old.number,
                serving_pid=self.old.pid,
            )
            return self._finish()
        await self._cutover()
        return self._finish()

    def _finish(self) -> SwapOutcome:
        self.outcome.finished_at = time.time()
        return self.outcome

    async def _prepare_and_gate(self) -> None:
        config = self.config
        if not config.health_gated:
            self.hooks.log.warning(
                "swap_not_health_gated",
                swap=self.outcome.swap_id,
                fix="add --health /healthz (or --ready notify) so a bad build is rolled back "
                "before it takes traffic; now only 'still running after --settle' is checked",
            )
        old_rss = memory.tree_rss(self.old.pid)
        self.outcome.old_rss_bytes = old_rss
        refusal = memory.headroom_verdict(old_rss)
        if refusal:
            raise Refused(f"swap refused: {refusal}", Code.HEADROOM)
        if config.analysis and not self.hooks.steering.enabled:
            raise Refused(
                "swap refused: --analysis reads each generation's own metrics through a "
                "steered --listen socket, and no listener is steered (use tcp:// listeners "
                "with --steering auto or on)",
                Code.ANALYSIS,
            )
        if self.exec_fd is None:
            # Resolved again at every swap: a new file at that path, or earlier in PATH.
            program = self.executable or self._resolve(config.command[0])
            self.executable = program  # launched as checked: resolved once, not again
            problem = elf.check_program(program)
            if problem:
                raise Refused(f"swap refused: {program} {problem}", Code.PROGRAM)
        self._phase("checked")
        self.candidate = await self._spawn()
        self.outcome.new_generation = self.candidate.number
        self.outcome.new_pid = self.candidate.pid
        self._phase("spawned", executable=self.candidate.executable)
        # _ready enforces --health-timeout itself, with a precise reason; the guard's
        # own limit is only a backstop.
        steering = self.hooks.steering
        if steering.enabled:
            steering.probe(self.candidate.number)  # hotswapd's probes reach it; nothing else
            # An instant, not a phase of its own (its time is the spawn's): logged only.
            self.hooks.log.info(
                "swap_probing",
                swap=self.outcome.swap_id,
                generation=self.candidate.number,
                pid=self.candidate.pid,
                weight_percent=0,
            )
        await self._guard(self._ready(), config.health_timeout + 5, "the readiness gate")
        self._phase("ready")
        if config.settle > 0:
            await self._guard(asyncio.sleep(config.settle), None, "the settle window")
            self._phase("settled")
        # Steered, the candidate is idle here while the old one carries every live
        # connection: this catches a build that is big before it serves anything. The
        # rule is measured again at the end of each canary step, under its share.
        self._memory("the memory gate", "memory_ok")
        steps = canary_steps(config.canary)
        judged = (
            analysis.StepAnalysis(config.analysis, config.analysis_min_requests)
            if config.analysis
            else None
        )
        for number, (percent, seconds) in enumerate(steps, 1):
            self.outcome.canary_step = number
            self.outcome.canary_percent = percent if steering.enabled else None
            if steering.enabled:
                steering.weigh(self.candidate.number, percent)
            self._phase(
                "canary_step",
                step=number,
                steps=len(steps),
                seconds=seconds,
                weight_percent=percent if steering.enabled else None,
            )
            limit = seconds + config.health_timeout
            if judged is not None:
                limit += 4 * scrape.DEFAULT_TIMEOUT_S  # a scrape at each end, and one mid-way
            step = (number, percent, number == len(steps))
            await self._guard(self._canary(seconds, judged, step), limit, "the canary")
            self._memory(f"canary step {number}", None)
            self._phase("canary_step_ok", step=number, steps=len(steps))
        if steps:
            self._phase("canary_ok", canary_s=sum(seconds for _, seconds in steps))
        if config.health or config.health_url:
            # The last look: the gates can pass in a millisecond, and a candidate that
            # answered once and died must not be committed. One more answer, right now.
            result = await self._guard(
                self._probe(self._loop.time() + config.health_timeout),
                config.health_timeout + 5,
                "the last health check",
            )
            if not result.healthy:
                code = Code.SOCKET if result.disbelieved else Code.HEALTH
                raise GateFailed(f"last health check: {self._health_failure(result)}", code)

    def _memory(self, what: str, phase: str | None) -> None:
        """The memory rule, old tree against candidate tree; a failure is a GateFailed."""
        assert self.candidate is not None
        if not self.config.max_memory_growth.enabled:
            return
        old_bytes = memory.tree_rss(self.old.pid)
        new_bytes = memory.tree_rss(self.candidate.pid)
        self.outcome.old_rss_bytes = old_bytes
        self.outcome.new_rss_bytes = new_bytes
        if new_bytes == 0:
            self._check_alive(what)
            raise GateFailed(f"{what} could not measure the candidate (gone?)", Code.MEMORY)
        reason = memory.verdict(old_bytes, new_bytes, self.config.max_memory_growth)
        if reason:
            raise GateFailed(reason if phase else f"{what}: {reason}", Code.MEMORY)
        if phase:
            self._phase(phase, old_rss_bytes=old_bytes, new_rss_bytes=new_bytes)

    def _resolve(self, name: str) -> str:
        if "/" in name:
            return os.path.abspath(name)
        try:
            return os.path.abspath(resolve_program(name, self.hooks.environ))
        except SpawnError as exc:
            raise Refused(f"swap refused: {exc}", Code.PROGRAM) from None

    async def _spawn(self) -> Generation:
        """Spawn the candidate; ETXTBSY means a writer still holds the file: wait and retry."""
        deadline = self._loop.time() + ETXTBSY_RETRY_S
        delay = 0.02
        while True:
            try:
                return self.hooks.launch_candidate(self.exec_fd, self.executable)
            except SpawnError as exc:
                if exc.errno != errno.ETXTBSY or self._loop.time() > deadline:
                    raise
            self.hooks.log.info("swap_wait_etxtbsy", swap=self.outcome.swap_id, retry_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _ready(self) -> None:
        assert self.candidate is not None
        config = self.config
        deadline = self._loop.time() + config.health_timeout
        if config.ready == "notify" and self.candidate.notify is not None:
            try:
                await asyncio.wait_for(
                    self.candidate.notify.wait_ready(), max(deadline - self._loop.time(), 0)
                )
            except TimeoutError:
                if is_stopped(self.candidate.pid):
                    raise GateFailed(self._stopped_reason(), Code.NOTIFY) from None
                raise GateFailed(
                    f"generation {self.candidate.number} sent no READY=1 within --health-timeout "
                    f"{config.health_timeout:g}s (--ready notify: the server must notify "
                    "NOTIFY_SOCKET once it serves)",
                    Code.NOTIFY,
                ) from None
            self._phase("notified", status=self.candidate.notify.status)
        if config.health or config.health_url:
            result = await self._probe(deadline)
            if not result.healthy:
                code = Code.SOCKET if result.disbelieved else Code.HEALTH
                raise GateFailed(self._health_failure(result), code)
        elif config.ready != "notify":
            # einhorn's default: the only readiness signal is "still running after --settle".
            return

    def _target(self) -> tuple[str, probe.Fetch]:
        """What the probe asks (for messages) and how: steered, private listener or URL."""
        assert self.candidate is not None
        config = self.config
        steering = self.hooks.steering
        if config.health_url:
            scheme, host, port, path = probe.split_url(config.health_url)
            if scheme == "https":
                return config.health_url, probe.url_fetcher(self.session, config.health_url)
            target = steering.probe_target()
            if target is not None and port == target[1] and _loopback(host):
                # A URL on a steered listener's own port (`{port:http}`): a plain connection
                # would reach the active generation; the probe is steered to the candidate.
                connect = probe.steered_connector(steering.probe_source(), *target)
                return config.health_url, probe.fetcher(connect, path)
            return config.health_url, probe.fetcher(probe.plain_connector(host, port), path)
        path = config.health or "/"
        target = steering.probe_target()
        if target is not None:
            host, port = target
            connect = probe.steered_connector(steering.probe_source(), host, port)
            shown = f"[{host}]" if ":" in host else host
            return f"http://{shown}:{port}{path}", probe.fetcher(connect, path)
        if self.candidate.probe is None:
            raise GateFailed(
                f"--health {path} has no socket to probe: hotswapd passes no listener without "
                "--listen (give the server's address with --listen, or use --health-url)",
                Code.HEALTH,
            )
        port = self.candidate.probe_port() or 0
        url = f"http://127.0.0.1:{port}{path}"
        return url, probe.fetcher(probe.plain_connector("127.0.0.1", port), path)

    def _believe(self) -> str | None:
        """A probe answer counts only while every candidate socket is in its group.

        Once a candidate's socket left (it called shutdown), the program's index for it
        is past the group's end and the kernel hashes the probe to the *old*
        generation, whose answer would wrongly pass the gate.
        """
        assert self.candidate is not None
        gone = self.hooks.steering.not_listening(self.candidate.number)
        if not gone:
            return None
        return (
            f"generation {self.candidate.number} shut down its own --listen socket "
            f"({', '.join(gone)}: SO_ACCEPTCONN is 0), so it can take no connection; "
            "the serving generation was not affected"
        )

    async def _probe(self, deadline: float) -> probe.ProbeResult:
        url, fetch = self._target()
        steered = self.hooks.steering.enabled and not self.config.health_url
        believe = self._believe if steered else None
        self._probe_url = url
        return await probe.wait_healthy(fetch, deadline, believe)

    def _stopped_reason(self) -> str:
        assert self.candidate is not None
        return (
            f"generation {self.candidate.number} is stopped (SIGSTOP, state T): it cannot "
            "answer until it gets SIGCONT (stopped by a debugger, or kill -STOP?)"
        )

    def _health_failure(self, result: probe.ProbeResult) -> str:
        assert self.candidate is not None
        if is_stopped(self.candidate.pid):
            return self._stopped_reason()
        url = getattr(self, "_probe_url", "")
        if result.disbelieved:
            return result.disbelieved
        steering = self.hooks.steering
        if steering.enabled and not self.config.health_url:
            waiting = steering.queued(self.candidate.number)
            if result.last_status is None and waiting > 0:
                names = ", ".join(lane.listener.name for lane in steering.lanes)
                return (
                    f"generation {self.candidate.number} never accepted on its own --listen "
                    f"socket ({names}, fd 3..): the probe's connection waited in its queue; "
                    "the server must serve the sockets it inherits (LISTEN_FDS)"
                )
        else:
            waiting = (
                accept_queue_length(self.candidate.probe) if self.candidate.probe is not None else 0
            )
            if not self.config.health_url and result.last_status is None and waiting > 0:
                return (
                    f"generation {self.candidate.number} never accepted on its private probe "
                    f"listener (LISTEN_FDNAMES 'probe', after the --listen sockets): the server "
                    "must serve every inherited listener, or use --health-url to probe an "
                    "address it does serve"
                )
        detail = result.last_error or "no answer"
        return (
            f"health check {url} did not pass within --health-timeout "
            f"{self.config.health_timeout:g}s (last: {detail}, {result.attempts} attempts)"
        )

    async def _canary(
        self, seconds: float, judged: analysis.StepAnalysis | None, step: tuple[int, int, bool]
    ) -> None:
        """Keep probing the candidate while it takes its share; any failure rolls back.

        With --analysis both generations are scraped at the step's start, every
        ANALYSIS_EVERY_S for a rule that already fails, and at its end for the verdict.
        """
        assert self.candidate is not None
        end = self._loop.time() + seconds
        if judged is not None:
            start = await self._scrape_both(step)
            if not judged.extending:  # an extended window keeps its start
                self._window_start = start
            judged.begin(*start)
            next_look = self._loop.time() + ANALYSIS_EVERY_S
        while self._loop.time() < end:
            if judged is not None and self._loop.time() >= next_look:
                verdict = judged.fail_fast(*await self._scrape_both(step))
                if verdict is not None:
                    self._judged(verdict, step)
                next_look = self._loop.time() + ANALYSIS_EVERY_S
            if self.hooks.steering.enabled:
                doubt = self._believe()
                if doubt:
                    raise GateFailed(f"canary: {doubt}", Code.CANARY)
            if self.config.health or self.config.health_url:
                result = await self._probe(self._loop.time() + self.config.health_timeout)
                if not result.healthy:
                    raise GateFailed(f"canary: {self._health_failure(result)}", Code.CANARY)
            await asyncio.sleep(min(CANARY_PROBE_EVERY_S, max(end - self._loop.time(), 0)))
        if judged is not None:
            scrapes = await self._scrape_both(step)
            self._judged(judged.judge(*scrapes, final=step[2]), step)
            assert self._window_start is not None
            self.last_window = (scrapes[0], self._window_start[1], scrapes[1])

    def _judged(self, verdict: analysis.StepVerdict, step: tuple[int, int, bool]) -> None:
        """Record a window's values (metrics, status); a failed rule rolls back."""
        number, percent, _ = step
        for each in verdict.verdicts:
            self.outcome.analysis[each.rule.name] = {
                "step": number,
                "status": each.status,
                "candidate": each.candidate.value,
                "serving": each.serving.value,
                "candidate_requests": each.candidate.requests,
                "serving_requests": each.serving.requests,
            }
        self.hooks.log.info(
            "swap_analysis",
            swap=self.outcome.swap_id,
            step=number,
            outcome=verdict.outcome,
            reason=verdict.reason,
        )
        if verdict.outcome == "fail":
            where = f"canary step {number}" + (f" ({percent}%)" if percent else "")
            raise GateFailed(f"{where}: {verdict.reason}", Code.ANALYSIS)

    async def _scrape_both(
        self, step: tuple[int, int, bool]
    ) -> tuple[analysis.Snapshot, analysis.Snapshot | None]:
        """Both generations' metrics; the candidate's must be readable, the serving one's
        need not be (its trouble is no evidence against the candidate)."""
        try:
            candidate = await self._scrape(serving=False)
        except scrape.ScrapeError as exc:
            raise GateFailed(
                f"canary step {step[0]}: the candidate's {self.config.metrics_path} could not "
                f"be read: {exc}",
                Code.ANALYSIS,
            ) from None
        try:
            serving: analysis.Snapshot | None = await self._scrape(serving=True)
        except scrape.ScrapeError as exc:
            self.hooks.log.warning(
                "swap_analysis_serving_unreadable",
                swap=self.outcome.swap_id,
                step=step[0],
                error=str(exc),
            )
            serving = None
        return candidate, serving

    async def _scrape(self, *, serving: bool) -> analysis.Snapshot:
        """One generation's metrics through the public address, steered to it."""
        steering = self.hooks.steering
        target = steering.probe_target()
        assert target is not None
        host, port = target
        try:
            if serving:
                sock = await self._serving_connection(host, port)
            else:  # from the probe source: the program sends it to the candidate
                sock = await steering.probe_source().connect(self._loop, host, port)
        except OSError as exc:
            raise scrape.ScrapeError(f"the connection failed: {exc.strerror or exc}") from None
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return await scrape.scrape_socket(sock, self.config.metrics_path, shown, keep=self._keep)

    async def _serving_connection(self, host: str, port: int) -> socket.socket:
        """A connection that lands on the serving generation, whatever the step's share.

        Probe connections always go to the candidate; any other connection goes to the
        serving generation while the candidate's share is 0. So the share is 0 for the
        time of one loopback handshake (the kernel picks the socket at the SYN), then
        back: the live traffic loses a fraction of a millisecond of its canary share.
        """
        assert self.candidate is not None
        steering = self.hooks.steering
        number = self.candidate.number
        percent = steering.percent if steering.candidate == number else 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if percent:
            steering.weigh(number, 0)
        try:
            await self._loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        finally:
            # Not after a rollback withdrew it (a cancelled scrape ends here late).
            if percent and steering.candidate == number:
                steering.weigh(number, percent)
        return sock

    async def fail(self, reason: str) -> SwapOutcome:
        """End a swap that broke unexpectedly: roll back if nothing was committed yet."""
        if not self.committed:
            await self._rollback(reason, Code.INTERNAL)
        else:
            self.outcome.reason = f"committed; then {reason}"
        return self._finish()

    async def _rollback(self, reason: str, code: Code) -> None:
        self.outcome.outcome = Outcome.ROLLED_BACK
        self.outcome.reason = reason
        self.outcome.code = code
        self.outcome.serving_generation = self.old.number if self.old.alive else None
        candidate = self.candidate
        if candidate is not None:
            # Mark the failure itself, so the gate's time is not counted as stop time.
            self._phase("gate_failed")
        self.hooks.log.error(
            "swap_rolled_back",
            swap=self.outcome.swap_id,
            reason=reason,
            serving_generation=self.old.number,
            serving_pid=self.old.pid,
        )
        if candidate is None:
            return
        self.hooks.rolled_back(candidate)  # steered: its weight is 0 from this instant
        steering = self.hooks.steering
        if steering.enabled and candidate.alive and self.outcome.canary_percent:
            # What a canary step queued for it is still its to serve: let it take those
            # before it is told to stop, as the old generation does at a handover.
            await self._queue_empty(candidate, self.config.stop_timeout)
        await stop_generation(
            candidate,
            self.config.drain_signal,
            self.config.stop_timeout,
            self.hooks.reaper,
            self.hooks.log,
            why="rollback",
        )
        self._phase("candidate_stopped")
        await self.hooks.retire(candidate, self.config.stop_timeout)
        if not self.old.alive:
            # Never "keeps serving" when it does not: say what is left.
            self.outcome.serving_generation = None
            self.outcome.reason += (
                f"; generation {self.old.number} is gone too "
                f"({describe_status(self.old.status or 0)}), nothing serves until --on-exit acts"
            )

    async def _queue_empty(self, gen: Generation, within: float) -> int:
        """Wait until `gen`'s accept queues are empty, plus a grace for handshakes in flight.

        Nothing new lands there (the program names it no more), so the queue only shrinks
        while `gen` accepts. Returns how many were waiting when the wait began.
        """
        steering = self.hooks.steering
        waiting = left = steering.queued(gen.number)
        deadline = self._loop.time() + within
        progress = self._loop.time()
        delay = 0.001
        while left > 0 and gen.alive and self._loop.time() < deadline:
            if self._loop.time() - progress > QUEUE_STALL_S:
                # Not accepting at all (hung, stopped): waiting longer would only delay
                # the signal that makes it act; its drain serves or its exit hands them on.
                self.hooks.log.warning(
                    "handover_queue_stalled",
                    generation=gen.number,
                    queued=left,
                    stalled_s=QUEUE_STALL_S,
                )
                break
            # No event tells when a queue empties: a short, bounded, backing-off look.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            now = steering.queued(gen.number)
            if now < left:
                progress = self._loop.time()
            left = now
        await asyncio.sleep(HANDOVER_GRACE_S)
        return waiting

    async def _cutover(self) -> None:
        assert self.candidate is not None
        config = self.config
        steering = self.hooks.steering
        self.hooks.commit(self.candidate)  # steered: the selector; shared: the drain signal
        self.committed = True
        self.outcome.outcome = Outcome.COMMITTED
        self.outcome.reason = "all gates passed"
        self.outcome.code = Code.PASSED
        self.outcome.serving_generation = self.candidate.number
        self._phase(
            "cutover",
            old_generation=self.old.number,
            old_pid=self.old.pid,
            weight_percent=100 if steering.enabled else None,
        )
        if steering.enabled:
            # Handover: the old socket gets no new connection; what it queued is the old
            # generation's to serve before it is told to drain, or it would be reset.
            waited = await self._queue_empty(self.old, config.drain_timeout)
            self.hooks.drain(self.old)
            self._phase("handover", old_generation=self.old.number, queued_at_cutover=waited)
        status = await stop_generation(
            self.old,
            config.drain_signal,
            config.drain_timeout,
            self.hooks.reaper,
            self.hooks.log,
            why="drain",
            already_signalled=True,
        )
        self._phase(
            "old_exited",
            old_generation=self.old.number,
            old_pid=self.old.pid,
            old_status=describe_status(status),
        )
        await self.hooks.retire(self.old, config.drain_timeout)
        steering.handed_over()


def _exited_unreaped(pid: int) -> bool:
    """True when `pid` is a zombie: exited, its status not collected (WNOWAIT keeps it)."""
    try:
        found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return found is not None


def _loopback(host: str) -> bool:
    return host == "::1" or host.startswith("127.")
