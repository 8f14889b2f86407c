"""Watch files; call back once per accepted change, to swap the server or signal it.

The watcher is the event source: it chooses the mode (hotswapd.watch.mode), keeps the
directories watched (hotswapd.watch.dirwatch), turns kernel events and safety-net ticks into
"maybe changed" hints, debounces them, and asks hotswapd.watch.decide what each path's
content means. Field failures behind each rule are in docs/troubleshooting.md.

- Directories are watched, not files. An event in the parent directory whose name is the
  file's, or starts with ".." (a ConfigMap's `..data` symlink swap, where no event ever
  names the file), only means "maybe changed".
- Watches are re-armed, never trusted: every batch (and every safety-net tick) re-checks
  each directory's (st_dev, st_ino), because a mount over a watched directory sends no
  event at all.
- Every log line is a `watch_*` event (or `watching`, the start-up line) with its details
  as fields, never a sentence with the path inside it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

from hotswapd.boot.values import WatchSpec
from hotswapd.host.inotify_limits import explain
from hotswapd.log import get_logger
from hotswapd.watch import decide as dec
from hotswapd.watch import mode as watch_mode
from hotswapd.watch.dirwatch import DirectoryWatches
from hotswapd.watch.inotify import mask_names
from hotswapd.watch.mode import MODES as MODES
from hotswapd.watch.mode import WatchError as WatchError

StatKey = dec.StatKey


class Watcher:
    """Owns the one inotify fd; calls `on_change(spec, reason)` once per accepted change."""

    def __init__(
        self,
        specs: Sequence[WatchSpec],
        *,
        mode: str = "auto",
        debounce: float = 0.3,
        poll_interval: float = 1.0,
        on_change: Callable[[WatchSpec, str], None],
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"watch mode {mode!r}: use auto, inotify or poll")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._requested = mode
        self._mode = mode
        self._reason = "not started"
        self._debounce = max(0.0, debounce)
        self._poll_interval = poll_interval
        self._on_change = on_change
        self._log = get_logger(component="watch")
        self._targets: list[dec.Target] = []
        self._by_dir: dict[str, list[dec.Target]] = {}  # the parent directory's targets
        for spec in specs:
            parent, name = os.path.split(os.path.normpath(spec.path))
            target = dec.Target(spec, name)
            self._by_dir.setdefault(parent, []).append(target)
            self._targets.append(target)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watches: DirectoryWatches | None = None
        self._reading = False
        self._tick: asyncio.TimerHandle | None = None
        self._started = False
        self._closed = False
        self.events = 0  # inotify events read, plus stat changes seen by ticks
        self.rescans = 0
        self.fired = 0
        self.wakeups = 0  # every timer or readable callback: 0 while idle in inotify mode

    # ------------------------------------------------------------------ public surface

    @property
    def mode(self) -> str:
        """The active mode: "inotify", "auto" (inotify plus a stat safety net) or "poll"."""
        return self._mode

    @property
    def mode_reason(self) -> str:
        return self._reason

    def fileno(self) -> int | None:
        return None if self._watches is None else self._watches.fileno()

    def status(self) -> dict[str, object]:
        timers = (self._tick is not None) + sum(
            (t.timer is not None) + (t.task is not None) for t in self._targets
        )
        return {
            "mode": self._mode,
            "reason": self._reason,
            "paths": [
                {
                    "path": t.spec.path,
                    "action": _action(t.spec),
                    "state": t.state,
                    "decision": t.decision,
                }
                for t in self._targets
            ],
            "events": self.events,
            "rescans": self.rescans,
            "fired": self.fired,
            "wakeups": self.wakeups,
            "timers": timers,
        }

    async def start(self) -> None:
        """Choose the mode, arm the watches, record each path's baseline content."""
        if self._started:
            raise RuntimeError("Watcher.start() was already called")
        self._started = True
        self._loop = asyncio.get_running_loop()
        try:
            choice = watch_mode.choose(self._requested, self._by_dir, self._poll_interval)
        except WatchError:
            await self.close()
            raise
        self._mode, self._reason, self._watches = choice.mode, choice.reason, choice.watches
        # The kernel queues events while the baselines are hashed; reading starts after, so
        # no decision can run against a baseline that is not there yet.
        for target in self._targets:
            await self._baseline(target)
        if self._watches is not None:
            self._loop.add_reader(self._watches.fileno(), self._on_readable)
            self._reading = True
        if self._mode != "inotify":
            self._schedule_tick()
        (self._log.warning if choice.fell_back else self._log.info)(
            "watching",
            mode=self._mode,
            reason=self._reason,
            paths=[t.spec.describe() for t in self._targets],
        )

    async def close(self) -> None:
        """Stop every timer and check, and close the inotify fd (once; idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        tasks = []
        for target in self._targets:
            if target.timer is not None:
                target.timer.cancel()
                target.timer = None
            if target.task is not None:
                target.task.cancel()
                tasks.append(target.task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._teardown_inotify()

    # ------------------------------------------------------------------ inotify lifetime

    def _teardown_inotify(self) -> None:
        if self._watches is None:
            return
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._watches.fileno())
        self._reading = False
        self._watches.close()
        self._watches = None

    def _inotify_failed(self, exc: OSError) -> None:
        """A re-arm was refused (ENOSPC...): keep watching, by polling, and say why."""
        reason, fix = explain(exc, exc.filename or "a directory")
        self._teardown_inotify()
        self._mode, self._reason = "poll", reason
        log = self._log.error if self._requested == "inotify" else self._log.warning
        log("watch_mode_switched", mode="poll", reason=reason, fix=fix)
        if self._tick is None:
            self._schedule_tick()
        for target in self._targets:
            self._mark(target, "switched to poll")

    # ------------------------------------------------------------------ event sources

    def _recheck(self) -> None:
        """Re-arm directories that died, moved or were mounted over; examine their paths."""
        if self._watches is None:
            return
        try:
            changes = self._watches.recheck()
        except OSError as exc:
            self._inotify_failed(exc)
            return
        for change in changes:
            if change.new is None:
                self._log.info("watch_dir_missing", path=change.path, ancestor=change.ancestor)
            elif change.old is not None and change.old[0] != change.new[0]:
                self._log.warning(
                    "watch_mount_changed",
                    path=change.path,
                    old_dev=change.old[0],
                    dev=change.new[0],
                )
            else:
                self._log.info("watch_rearmed", path=change.path)
            for target in self._by_dir[change.path]:
                self._mark(target, "directory re-armed")

    def _on_readable(self) -> None:
        self.wakeups += 1
        if self._watches is None:
            return
        batch = self._watches.read()
        self.events += batch.events
        hints: dict[dec.Target, str] = {}  # one mark (one stat) per path per batch
        for directory, name, mask in batch.names:
            for target in self._by_dir[directory]:
                if name == target.name or name.startswith(".."):
                    hints[target] = f"{mask_names(mask)} {name}"
        for target, why in hints.items():
            self._mark(target, why)
        if batch.rescan:
            self._rescan(batch.rescan)
        self._recheck()

    def _rescan(self, why: str) -> None:
        self.rescans += 1
        self._log.warning("watch_rescan", reason=why)
        if self._watches is not None:
            self._watches.mark_all_stale()
        for target in self._targets:
            self._mark(target, "rescan")

    def _schedule_tick(self) -> None:
        assert self._loop is not None
        self._tick = self._loop.call_later(self._poll_interval, self._on_tick)

    def _on_tick(self) -> None:
        self.wakeups += 1
        self._tick = None
        if self._closed:
            return
        self._schedule_tick()
        self._recheck()
        for target in self._targets:
            key = dec.stat_key(target.spec.path)
            if key != target.seen_key:
                target.seen_key = key
                self.events += 1
                self._mark(target, "stat changed")

    # ------------------------------------------------------------------ debounce, then decide

    def _mark(self, target: dec.Target, why: str) -> None:
        """Maybe changed: (re)start the quiet period, from the stat seen now."""
        if self._closed or self._loop is None:
            return
        target.why = why
        target.hint_key = target.seen_key = dec.stat_key(target.spec.path)
        if target.timer is not None:
            target.timer.cancel()
        target.timer = self._loop.call_later(self._debounce, self._on_quiet, target)
        if target.task is None:
            target.state = "debouncing"

    def _on_quiet(self, target: dec.Target) -> None:
        self.wakeups += 1
        target.timer = None
        if target.task is not None:
            target.rerun = True
        elif self._loop is not None and not self._closed:
            target.task = self._loop.create_task(self._run_checks(target))

    async def _run_checks(self, target: dec.Target) -> None:
        try:
            while True:
                target.rerun = False
                target.state = "checking"
                try:
                    decision = await dec.decide(target)
                except OSError as exc:
                    decision = dec.Decision("error", "error", fields={"error": str(exc)})
                self._apply(target, decision)
                if decision.again:
                    self._mark(target, "still changing")
                if not target.rerun:
                    break
        finally:
            target.task = None

    async def _baseline(self, target: dec.Target) -> None:
        try:
            hashed = await dec.hash_file(target.spec.path)
        except OSError as exc:  # unreadable now: the first readable content will fire
            self._log.warning("watch_baseline_unreadable", path=target.spec.path, error=str(exc))
            hashed = None
        if hashed is None:
            target.seen_key = dec.stat_key(target.spec.path)
            target.state = "missing" if target.seen_key is None else "idle"
        else:
            target.accepted_hash, target.accepted_key = hashed
            target.seen_key = target.accepted_key

    def _apply(self, target: dec.Target, decision: dec.Decision) -> None:
        """Record the verdict, log it as its event, and fire the callback for a change."""
        path = target.spec.path
        if decision.unlinked:
            self._log.warning("watch_file_unlinked", path=path, hint=dec.unlinked_hint(path))
        level = decision.level
        if decision.state == "waiting" and decision.cause == target.cause:
            level = "debug"  # a writer that takes long: say it once, not every debounce
        target.state, target.cause = decision.state, decision.cause
        target.decision = decision.text
        if decision.cause == "error":
            target.decision = f"error: {decision.fields.get('error', '')}"
        getattr(self._log, level)(
            decision.event,
            path=path,
            action=_action(target.spec),
            cause=decision.cause,
            **decision.fields,
        )
        if decision.cause != "fired":
            return
        self.fired += 1
        digest = target.accepted_hash or ""
        try:
            self._on_change(target.spec, f"content changed (sha256 {digest[:12]}…)")
        except Exception:  # noqa: BLE001 - the supervisor's callback must not stop the watcher
            self._log.exception("watch_callback_failed", path=path)


def _action(spec: WatchSpec) -> str:
    return spec.describe().rpartition("=")[2]
