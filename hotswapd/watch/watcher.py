"""Watch files; decide by content when a change should swap the server or signal it.

Design notes (the field failures behind them are in docs/troubleshooting.md):

- Directories are watched, not files. Builds, editors, `sed -i`, `go build -o` and kubelet
  replace a file by rename, and a watch on the file dies with the old inode. An event in
  the parent directory whose name is the file's, or starts with ".." (a ConfigMap's
  `..data` symlink swap, where no event ever names the file), only means "maybe changed".
- Events are hints, content decides. After a quiet period (`--debounce`) the file is
  stat'ed; when (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) moved, its sha256 is
  compared with the last accepted content: a `touch`, an up-to-date `go build` or an
  identical rebuild fires nothing. The stat must also equal the one taken at the last
  hint, a whole quiet period earlier (the settle interval: a writer inotify cannot see,
  on a poll or blind mount, restarts it), and a swap-action executable must be a complete
  ELF or #! script (hotswapd.gates.elf) before it fires. Every write sends an event, so the
  common case costs one debounce, not two.
- Watches are re-armed, never trusted: after IN_IGNORED, DELETE_SELF, MOVE_SELF or UNMOUNT
  the nearest existing ancestor is watched until the directory comes back, and every
  batch (and every safety-net tick) re-checks each directory's (st_dev, st_ino), because a
  mount over a watched directory sends no event at all.
- Modes: "inotify" has no timer at all while idle; "auto" adds a stat of every path each
  `--poll-interval` (mounts over directories, filesystems that lose events); "poll" only
  stats. "auto" drops to "poll" when the kernel refuses (ENOSPC, EMFILE) or the
  filesystem is one where inotify is blind, and says which sysctl or mount is to blame.
- No threads (PID 1 forks): a file is hashed in 1 MiB chunks on the loop, yielding between
  chunks, so a 100 MB binary never stalls signal handling or the control socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hotswapd.boot.values import WatchSpec
from hotswapd.errors import HotswapdError
from hotswapd.gates.elf import check_program
from hotswapd.log import get_logger
from hotswapd.watch import inotify as ino

MODES = ("auto", "inotify", "poll")
StatKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns
_CHUNK = 1 << 20


class WatchError(HotswapdError):
    """--watch-mode inotify cannot work here; the message names the limit and the fix."""


@dataclass(eq=False)
class _Target:
    """One --watch path and what has been decided about it."""

    spec: WatchSpec
    name: str
    accepted_hash: str | None = None  # the content at start(), then at each fire
    accepted_key: StatKey | None = None
    seen_key: StatKey | None = None  # the stat last looked at (ticks compare with it)
    hint_key: StatKey | None = None  # the stat when the last hint (re)started the quiet period
    state: str = "idle"
    decision: str = ""
    why: str = ""  # the last hint, for the log line
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    rerun: bool = False
    warned_stale: StatKey | None = None


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
        self._targets: list[_Target] = []
        self._by_dir: dict[str, list[_Target]] = {}  # the parent directory's targets
        for spec in specs:
            parent, name = os.path.split(os.path.normpath(spec.path))
            target = _Target(spec, name)
            self._by_dir.setdefault(parent, []).append(target)
            self._targets.append(target)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watches: ino.DirectoryWatches | None = None
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
        if self._requested == "poll":
            self._mode, self._reason = "poll", "--watch-mode poll"
        else:
            failure = self._blind_filesystem() or self._open_inotify()
            if failure is not None:
                reason, fix = failure
                if self._requested == "inotify":
                    await self.close()
                    raise WatchError(
                        f"--watch-mode inotify: {reason}; {fix}, "
                        "or use --watch-mode auto to fall back to polling"
                    )
                self._mode, self._reason = "poll", reason
            elif self._requested == "inotify":
                self._mode, self._reason = "inotify", "--watch-mode inotify (no periodic stat)"
            else:
                self._mode = "auto"
                self._reason = f"inotify, with a stat safety net every {self._poll_interval:g}s"
        # The kernel queues events while the baselines are hashed; reading starts after, so
        # no decision can run against a baseline that is not there yet.
        for target in self._targets:
            await self._baseline(target)
        if self._watches is not None:
            self._loop.add_reader(self._watches.fileno(), self._on_readable)
            self._reading = True
        if self._mode != "inotify":
            self._schedule_tick()
        fell_back = self._mode == "poll" and self._requested != "poll"
        (self._log.warning if fell_back else self._log.info)(
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

    # ------------------------------------------------------------------ choosing the mode

    def _blind_filesystem(self) -> tuple[str, str] | None:
        for directory in self._by_dir:
            kind, point = ino.fs_type(directory)
            if ino.is_blind(kind):
                return (
                    f"{directory} is on {kind} (mounted at {point}), where inotify "
                    "misses changes made outside this kernel",
                    "use --watch-mode poll",
                )
        return None

    def _open_inotify(self) -> tuple[str, str] | None:
        try:
            self._watches = ino.DirectoryWatches(self._by_dir)
        except OSError as exc:
            return ino.explain(exc, "inotify_init1")
        try:
            self._watches.arm_all()
        except OSError as exc:
            self._teardown_inotify()
            return ino.explain(exc, exc.filename or "a directory")
        return None

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
        reason, fix = ino.explain(exc, exc.filename or "a directory")
        self._teardown_inotify()
        self._mode, self._reason = "poll", reason
        log = self._log.error if self._requested == "inotify" else self._log.warning
        log("watch mode switched to poll", mode="poll", reason=reason, fix=fix)
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
                self._log.info(
                    "directory missing, watching ancestor",
                    path=change.path,
                    ancestor=change.ancestor,
                )
            elif change.old is not None and change.old[0] != change.new[0]:
                self._log.warning(f"mount changed under {change.path}", path=change.path,
                                  old_dev=change.old[0], dev=change.new[0])  # fmt: skip
            else:
                self._log.info("re-armed", path=change.path)
            for target in self._by_dir[change.path]:
                self._mark(target, "directory re-armed")

    def _on_readable(self) -> None:
        self.wakeups += 1
        if self._watches is None:
            return
        batch = self._watches.read()
        self.events += batch.events
        hints: dict[_Target, str] = {}  # one mark (one stat) per path per batch
        for directory, name, mask in batch.names:
            for target in self._by_dir[directory]:
                if name == target.name or name.startswith(".."):
                    hints[target] = f"{ino.mask_names(mask)} {name}"
        for target, why in hints.items():
            self._mark(target, why)
        if batch.rescan:
            self._rescan(batch.rescan)
        self._recheck()

    def _rescan(self, why: str) -> None:
        self.rescans += 1
        self._log.warning("rescanning every watched path", reason=why)
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
            key = _stat_key(target.spec.path)
            if key != target.seen_key:
                target.seen_key = key
                self.events += 1
                self._mark(target, "stat changed")

    # ------------------------------------------------------------------ decisions

    def _mark(self, target: _Target, why: str) -> None:
        """Maybe changed: (re)start the quiet period, from the stat seen now."""
        if self._closed or self._loop is None:
            return
        target.why = why
        target.hint_key = target.seen_key = _stat_key(target.spec.path)
        if target.timer is not None:
            target.timer.cancel()
        target.timer = self._loop.call_later(self._debounce, self._on_quiet, target)
        if target.task is None:
            target.state = "debouncing"

    def _on_quiet(self, target: _Target) -> None:
        self.wakeups += 1
        target.timer = None
        if target.task is not None:
            target.rerun = True
        elif self._loop is not None and not self._closed:
            target.task = self._loop.create_task(self._run_checks(target))

    async def _run_checks(self, target: _Target) -> None:
        try:
            while True:
                target.rerun = False
                target.state = "checking"
                try:
                    again = await self._decide(target)
                except OSError as exc:
                    again = False
                    self._set(target, "error", f"error: {exc}", self._log.warning)
                if again:
                    self._mark(target, "still changing")
                if not target.rerun:
                    break
        finally:
            target.task = None

    async def _baseline(self, target: _Target) -> None:
        try:
            hashed = await _hash_file(target.spec.path)
        except OSError as exc:  # unreadable now: the first readable content will fire
            self._log.warning("cannot read the baseline", path=target.spec.path, error=str(exc))
            hashed = None
        if hashed is None:
            target.seen_key = _stat_key(target.spec.path)
            target.state = "missing" if target.seen_key is None else "idle"
        else:
            target.accepted_hash, target.accepted_key = hashed
            target.seen_key = target.accepted_key

    async def _decide(self, t: _Target) -> bool:
        """Fire, ignore or wait; True asks for another look after a quiet period."""
        path = t.spec.path
        st = _stat(path)
        if st is None:
            t.seen_key = None
            self._set(t, "missing", "waiting: file missing")
            return False
        key = t.seen_key = _key(st)
        stale = st.st_nlink == 0 and stat.S_ISREG(st.st_mode)
        if stale and t.warned_stale != key:
            t.warned_stale = key
            self._log.warning(
                f"{path} has no links left (st_nlink == 0): a single-file bind mount or a "
                "ConfigMap subPath whose source was replaced keeps the old file forever; "
                "mount the directory instead",
                path=path,
            )
        settled = "stale" if stale else "idle"
        if key == t.accepted_key:
            self._set(t, settled, "ignored: unchanged", self._log.debug)
            return False
        if not stat.S_ISREG(st.st_mode):
            self._set(t, settled, "ignored: not a regular file")
            return False
        if key != t.hint_key:
            # The settle interval: the stat must equal the one taken at the last hint, a
            # whole quiet period ago. Every write sends an event that moves the hint, so
            # this only waits again for writes inotify did not see (poll, blind mounts).
            self._set(t, "waiting", "waiting: still being written")
            return True
        hashed = await _hash_file(path)
        if hashed is None or hashed[1] != key or _stat_key(path) != key:
            self._set(t, "waiting", "waiting: changed while reading", self._log.debug)
            return True
        digest = hashed[0]
        if digest == t.accepted_hash:
            touch = t.accepted_key is not None and key[:3] == t.accepted_key[:3]
            t.accepted_key = key
            self._set(t, settled, "ignored: touch only" if touch else "ignored: identical content")
            return False
        if t.spec.action == "swap" and st.st_mode & 0o111:
            problem = check_program(path)
            if _stat_key(path) != key:
                self._set(t, "waiting", "waiting: changed while reading", self._log.debug)
                return True
            if problem is not None:
                self._set(t, "waiting", "waiting: incomplete binary", self._log.warning,
                          reason=f"{path} {problem}")  # fmt: skip
                return False  # the rest of the write brings events (or a tick sees it)
        previous = t.accepted_hash
        t.accepted_hash, t.accepted_key = digest, key
        self.fired += 1
        self._set(t, settled, "fired", sha256=digest[:12], was=(previous or "")[:12], why=t.why)
        try:
            self._on_change(t.spec, f"content changed (sha256 {digest[:12]}…)")
        except Exception:  # noqa: BLE001 - the supervisor's callback must not stop the watcher
            self._log.exception("on_change failed", path=path)
        return False

    def _set(
        self,
        target: _Target,
        state: str,
        decision: str,
        log: Callable[..., object] | None = None,
        **fields: object,
    ) -> None:
        if decision.startswith("waiting") and decision == target.decision:
            log = self._log.debug  # a writer that takes long: say it once, not every debounce
        target.state, target.decision = state, decision
        (log or self._log.info)(decision, path=target.spec.path, action=_action(target.spec),
                                **fields)  # fmt: skip


# ---------------------------------------------------------------------- helpers


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stat_key(path: str) -> StatKey | None:
    st = _stat(path)
    return None if st is None else _key(st)


def _action(spec: WatchSpec) -> str:
    return spec.describe().rpartition("=")[2]


async def _hash_file(path: str) -> tuple[str, StatKey] | None:
    """sha256 and the stat key of what was read; None if missing or changed while read."""
    try:
        # O_NONBLOCK: a FIFO put at the path must not hang the loop.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
            await asyncio.sleep(0)  # no threads in PID 1: yield between chunks instead
        after = os.fstat(fd)
        return (digest.hexdigest(), _key(st)) if _key(after) == _key(st) else None
    finally:
        os.close(fd)
