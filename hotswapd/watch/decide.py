"""What a change to a watched path means: fire, ignore, or wait — decided by content.

Events are hints, content decides. After a quiet period (`--debounce`) the file is stat'ed;
when (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) moved, its sha256 is compared with
the last accepted content: a `touch`, an up-to-date `go build` or an identical rebuild fires
nothing. The stat must also equal the one taken at the last hint, a whole quiet period
earlier (the settle interval: a writer inotify cannot see, on a poll or blind mount,
restarts it), and a swap-action executable must be a complete ELF or #! script
(hotswapd.gates.elf) before it fires. Every write sends an event, so the common case costs
one debounce, not two.

No threads (PID 1 forks): a file is hashed in 1 MiB chunks on the loop, yielding between
chunks, so a 100 MB binary never stalls signal handling or the control socket.

Every verdict is a `Decision`: a `watch_*` event name, a snake_case `cause` for the log, and
the short text the status document shows for the path.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass, field

from hotswapd.boot.values import WatchSpec
from hotswapd.gates.elf import check_program
from hotswapd.host import hashing

StatKey = hashing.FileKey  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns

# cause -> (event, the status document's text, log level)
CAUSES: dict[str, tuple[str, str, str]] = {
    "fired": ("watch_fired", "fired", "info"),
    "unchanged": ("watch_ignored", "ignored: unchanged", "debug"),
    "not_regular": ("watch_ignored", "ignored: not a regular file", "info"),
    "touch_only": ("watch_ignored", "ignored: touch only", "info"),
    "identical_content": ("watch_ignored", "ignored: identical content", "info"),
    "file_missing": ("watch_waiting", "waiting: file missing", "info"),
    "still_being_written": ("watch_waiting", "waiting: still being written", "info"),
    "changed_while_reading": ("watch_waiting", "waiting: changed while reading", "debug"),
    "incomplete_binary": ("watch_waiting", "waiting: incomplete binary", "warning"),
    "error": ("watch_error", "error", "warning"),
}


@dataclass(eq=False)
class Target:
    """One --watch path and what has been decided about it."""

    spec: WatchSpec
    name: str
    accepted_hash: str | None = None  # the content at start(), then at each fire
    accepted_key: StatKey | None = None
    seen_key: StatKey | None = None  # the stat last looked at (ticks compare with it)
    hint_key: StatKey | None = None  # the stat when the last hint (re)started the quiet period
    state: str = "idle"
    decision: str = ""
    cause: str = ""
    why: str = ""  # the last hint, for the log line
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    rerun: bool = False
    warned_stale: StatKey | None = None


@dataclass(frozen=True)
class Decision:
    """A verdict on one look at a path."""

    state: str  # the path's new state: idle, stale, waiting, missing, error
    cause: str  # a key of CAUSES
    again: bool = False  # look again after another quiet period
    fields: dict[str, object] = field(default_factory=dict)  # for the log line
    unlinked: bool = False  # a file with no links left: warn (once per stat)

    @property
    def event(self) -> str:
        return CAUSES[self.cause][0]

    @property
    def text(self) -> str:
        return CAUSES[self.cause][1]

    @property
    def level(self) -> str:
        return CAUSES[self.cause][2]


def unlinked_hint(path: str) -> str:
    return (
        f"{path} has no links left (st_nlink == 0): a single-file bind mount or a ConfigMap "
        "subPath whose source was replaced keeps the old file forever; mount the directory "
        "instead"
    )


async def decide(t: Target) -> Decision:
    """Look at the path once; update what was accepted when it fires."""
    path = t.spec.path
    st = stat_or_none(path)
    if st is None:
        t.seen_key = None
        return Decision("missing", "file_missing")
    key = t.seen_key = key_of(st)
    stale = st.st_nlink == 0 and stat.S_ISREG(st.st_mode)
    unlinked = stale and t.warned_stale != key
    if unlinked:
        t.warned_stale = key
    settled = "stale" if stale else "idle"
    if key == t.accepted_key:
        return Decision(settled, "unchanged", unlinked=unlinked)
    if not stat.S_ISREG(st.st_mode):
        return Decision(settled, "not_regular", unlinked=unlinked)
    if key != t.hint_key:
        # The settle interval: the stat must equal the one taken at the last hint, a
        # whole quiet period ago. Every write sends an event that moves the hint, so
        # this only waits again for writes inotify did not see (poll, blind mounts).
        return Decision("waiting", "still_being_written", again=True, unlinked=unlinked)
    hashed = await hash_file(path)
    if hashed is None or hashed[1] != key or stat_key(path) != key:
        return Decision("waiting", "changed_while_reading", again=True, unlinked=unlinked)
    digest = hashed[0]
    if digest == t.accepted_hash:
        touch = t.accepted_key is not None and key[:3] == t.accepted_key[:3]
        t.accepted_key = key
        cause = "touch_only" if touch else "identical_content"
        return Decision(settled, cause, unlinked=unlinked)
    if t.spec.action == "swap" and st.st_mode & 0o111:
        problem = check_program(path)
        if stat_key(path) != key:
            return Decision("waiting", "changed_while_reading", again=True, unlinked=unlinked)
        if problem is not None:
            # The rest of the write brings events (or a tick sees it): no second look asked.
            reason = f"{path} {problem}"
            fields: dict[str, object] = {"reason": reason}
            return Decision("waiting", "incomplete_binary", fields=fields, unlinked=unlinked)
    previous = t.accepted_hash
    t.accepted_hash, t.accepted_key = digest, key
    fired: dict[str, object] = {"sha256": digest[:12], "was": (previous or "")[:12], "why": t.why}
    return Decision(settled, "fired", fields=fired, unlinked=unlinked)


def stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def key_of(st: os.stat_result) -> StatKey:
    return hashing.file_key(st)


def stat_key(path: str) -> StatKey | None:
    st = stat_or_none(path)
    return None if st is None else key_of(st)


async def hash_file(path: str) -> tuple[str, StatKey] | None:
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
        digest = await hashing.sha256_cooperative(fd, asyncio.sleep)
        if key_of(os.fstat(fd)) != key_of(st):
            return None
        hashing.remember(key_of(st), digest)  # the swap's new generation runs this file
        return digest, key_of(st)
    finally:
        os.close(fd)
