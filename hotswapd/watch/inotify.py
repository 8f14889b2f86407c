"""The kernel side of watching: the one inotify instance, one watch per directory, limits.

Watcher (hotswapd.watch.watcher) decides what a change means; this module only keeps each watched
directory watched (re-armed after it is deleted, moved or mounted over) and reports which
names moved in which directory, and where inotify cannot be trusted at all.

Design note: what hotswapd takes from pyinotify, and what it does not.

pyinotify is the chosen dependency, and it supplies the vocabulary here: the event mask
constants (`pyinotify.IN_*`, from its `EventsCodes` table), their names for log lines
(`EventsCodes.ALL_VALUES`), and the `/proc/sys/fs/inotify` sysctls (`ProcINotify`),
which name the limit in a fallback message. Its machinery is not used, because each
part of it breaks a rule of PID 1 (each measured with pyinotify 0.9.6 on Linux 6.x):

- `WatchManager()` looks libc up with `ctypes.util.find_library("c")`, which forks and
  execs `/sbin/ldconfig -p` from PID 1 (and gcc or ld when ldconfig is absent), then calls
  `inotify_init()`, so the fd is neither close-on-exec nor non-blocking from creation.
- `Notifier.read_events()` decodes each name with `bytes.decode()`: one non-UTF-8 file
  name in a watched directory raises after the bytes were read, and the batch is lost.
- `Notifier` prints every event to stdout unless `default_proc_fun` is set, spins with
  `threshold > 0`, routes `IN_Q_OVERFLOW` only to `process_IN_Q_OVERFLOW`, and renames a
  watch to "<path>-unknown-path" after `IN_MOVE_SELF`; `notifier.stop()` closes the fd, so
  a later `wm.close()` closes whatever reused that number.
- `add_watch()` reports ENOSPC as wd -1 (quiet) or a `WatchManagerError` without errno.

So the three syscalls are bound here directly: `inotify_init1(IN_CLOEXEC | IN_NONBLOCK)`
(close-on-exec and non-blocking from creation, nothing to leak in the window before an
fcntl), `inotify_add_watch` and `inotify_rm_watch` with the real errno, a decoder that keeps
names as bytes and maps them with `os.fsdecode` (surrogateescape: it cannot fail), and a
`close()` that closes the fd once. pyinotify's own stderr log handler, added at its import,
is removed below so nothing it logs reaches the container's output unformatted.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import resource
import stat
import struct
import termios
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

with warnings.catch_warnings():
    # pyinotify imports asyncore, which warns on 3.11 and is the pyasyncore backport on 3.12+.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyinotify

_PYINOTIFY_LOG = logging.getLogger("pyinotify")
for _handler in list(_PYINOTIFY_LOG.handlers):
    _PYINOTIFY_LOG.removeHandler(_handler)
# A NullHandler keeps logging's last-resort handler from printing its warnings instead.
_PYINOTIFY_LOG.addHandler(logging.NullHandler())

IN_MODIFY: int = pyinotify.IN_MODIFY
IN_ATTRIB: int = pyinotify.IN_ATTRIB
IN_CLOSE_WRITE: int = pyinotify.IN_CLOSE_WRITE
IN_MOVED_FROM: int = pyinotify.IN_MOVED_FROM
IN_MOVED_TO: int = pyinotify.IN_MOVED_TO
IN_CREATE: int = pyinotify.IN_CREATE
IN_DELETE: int = pyinotify.IN_DELETE
IN_DELETE_SELF: int = pyinotify.IN_DELETE_SELF
IN_MOVE_SELF: int = pyinotify.IN_MOVE_SELF
IN_UNMOUNT: int = pyinotify.IN_UNMOUNT
IN_Q_OVERFLOW: int = pyinotify.IN_Q_OVERFLOW
IN_IGNORED: int = pyinotify.IN_IGNORED
IN_ONLYDIR: int = pyinotify.IN_ONLYDIR
IN_ISDIR: int = pyinotify.IN_ISDIR

# Every watch (a watched directory, or the ancestor waiting for it to come back) uses this
# one mask: a second add_watch on the same inode replaces the mask, so they must agree.
# MODIFY and ATTRIB stay in because some Docker Desktop / WSL2 bind mounts deliver nothing
# else for a host-side edit.
WATCH_MASK = (
    IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
# The watch itself is gone or no longer watches the path: re-arm.
SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED

_IN_CLOEXEC = os.O_CLOEXEC  # the kernel defines IN_CLOEXEC and IN_NONBLOCK as these
_IN_NONBLOCK = os.O_NONBLOCK
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name
_READ_SIZE = 64 * 1024  # whole events only; one event is at most 16 + NAME_MAX + 1 bytes
_MAX_READS = 16  # per wake-up: a flood cannot starve the loop, the fd stays readable

MOUNTINFO = "/proc/self/mountinfo"

# Filesystems where inotify sees only the changes made through this kernel: network
# filesystems (a rebuild on another machine), FUSE (Docker Desktop's grpcfuse, sshfs,
# gcsfuse...), and the VM shares of Docker Desktop (virtiofs, shown as "fakeowner" in
# recent versions) and WSL2 (9p).
BLIND_FS_TYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "virtiofs", "9p", "fakeowner", "vboxsf"}
)


def is_blind(fs_type: str) -> bool:
    """True for filesystem types where inotify misses changes (see BLIND_FS_TYPES)."""
    return (
        fs_type in BLIND_FS_TYPES or fs_type == "fuse" or fs_type.startswith(("fuse.", "fuseblk"))
    )


def mask_names(mask: int) -> str:
    """Names such as "IN_MOVED_TO|IN_ISDIR" for a log line, from pyinotify's table."""
    names: dict[int, str] = pyinotify.EventsCodes.ALL_VALUES
    parts = [name for bit, name in names.items() if bit & mask == bit and bit.bit_count() == 1]
    return "|".join(sorted(parts)) or hex(mask)


def sysctl(name: str) -> str:
    """The value of fs.inotify.NAME (max_user_watches, ...), or "?" when unreadable."""
    try:
        return str(getattr(pyinotify, name).value)
    except (OSError, ValueError, AttributeError):
        return "?"


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One decoded inotify event; `name` is "" for an event on the watched inode itself."""

    wd: int
    mask: int
    cookie: int
    name: str


class DecodeError(ValueError):
    """A read returned bytes that are not whole events: rescan instead of guessing."""


def decode(buffer: bytes) -> list[RawEvent]:
    """Decode one read(2) of an inotify fd; names keep undecodable bytes (surrogateescape)."""
    events: list[RawEvent] = []
    offset = 0
    end = len(buffer)
    while offset < end:
        if offset + _HEADER.size > end:
            raise DecodeError(f"{end - offset} stray bytes after {len(events)} events")
        wd, mask, cookie, length = _HEADER.unpack_from(buffer, offset)
        start = offset + _HEADER.size
        if start + length > end:
            raise DecodeError(f"an event name runs {start + length - end} bytes past the read")
        name = os.fsdecode(buffer[start : start + length].rstrip(b"\0"))
        events.append(RawEvent(wd, mask, cookie, name))
        offset = start + length
    return events


class Inotify:
    """One inotify instance: close-on-exec and non-blocking from creation, closed once."""

    def __init__(self) -> None:
        # CDLL(None): the symbols already in the process (libc), so no library search and
        # no ldconfig subprocess; use_errno gives the real errno of each call.
        libc = ctypes.CDLL(None, use_errno=True)
        self._init1 = libc.inotify_init1
        self._init1.argtypes = [ctypes.c_int]
        self._init1.restype = ctypes.c_int
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm.restype = ctypes.c_int
        fd = self._init1(_IN_CLOEXEC | _IN_NONBLOCK)
        if fd < 0:
            raise _os_error()
        self._fd: int = int(fd)

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("the inotify instance is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def add_watch(self, path: str, mask: int = WATCH_MASK) -> int:
        """Watch `path` (a directory); the same inode always gets the same wd."""
        wd = self._add(self.fileno(), os.fsencode(path), mask)
        if wd < 0:
            raise _os_error(path)
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; one the kernel already dropped (EINVAL) is not an error."""
        if self._fd >= 0 and self._rm(self._fd, wd) < 0:
            error = ctypes.get_errno()
            if error != errno.EINVAL:
                raise OSError(error, os.strerror(error), f"inotify_rm_watch({wd})")

    def read(self) -> list[RawEvent]:
        """Every event queued now (up to _MAX_READS reads); never blocks."""
        events: list[RawEvent] = []
        for _ in range(_MAX_READS):
            try:
                buffer = os.read(self.fileno(), _READ_SIZE)
            except BlockingIOError:
                break
            if not buffer:
                break
            events.extend(decode(buffer))
        return events

    def pending_bytes(self) -> int:
        """How many bytes of events wait to be read (FIONREAD)."""
        size = array.array("i", [0])
        fcntl.ioctl(self.fileno(), termios.FIONREAD, size, True)
        return int(size[0])

    def close(self) -> None:
        """Close the fd exactly once: a second call must not close a reused number."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _os_error(path: str | None = None) -> OSError:
    error = ctypes.get_errno()
    if path is None:
        return OSError(error, os.strerror(error))
    return OSError(error, os.strerror(error), path)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def fs_type(path: str, mountinfo: str | None = None) -> tuple[str, str]:
    """(filesystem type, mount point) of the nearest existing directory at or above `path`.

    The longest mount point that is a prefix of the real path wins; among equal ones the
    last listed (mounted last, so on top). Unknown (no /proc) gives ("", "").
    """
    probe = os.path.realpath(path)
    while not os.path.isdir(probe) and probe != "/":
        probe = os.path.dirname(probe)
    best_point, best_type = "", ""
    try:
        with open(mountinfo or MOUNTINFO, encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.readlines()
    except OSError:
        return "", ""
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = probe == point or probe.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best_point):
            best_point, best_type = point, right.split()[0]
    return best_type, best_point


def explain(exc: OSError, where: str) -> tuple[str, str]:
    """(reason naming the limit and its value, the fix) for a refused inotify call."""
    if exc.errno == errno.ENOSPC:
        return (
            f"fs.inotify.max_user_watches={sysctl('max_user_watches')} exhausted (ENOSPC)",
            "raise it on the node: sysctl -w fs.inotify.max_user_watches=524288",
        )
    if exc.errno == errno.EMFILE:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and len(os.listdir("/proc/self/fd")) >= soft - 1:
            return (
                f"the open file limit is reached (ulimit -n {soft}, EMFILE)",
                "raise it: docker run --ulimit nofile=65536:65536",
            )
        return (
            f"fs.inotify.max_user_instances={sysctl('max_user_instances')} reached (EMFILE)",
            "raise it on the node: sysctl -w fs.inotify.max_user_instances=1024",
        )
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"inotify refused {where}: {exc.strerror} ({name})", "use --watch-mode poll"


# ---------------------------------------------------------------------- directory watches

DirIdent = tuple[int, int]  # st_dev, st_ino
_ARM_ATTEMPTS = 8  # a directory that keeps flipping is retried at the next batch or tick


def ident(path: str) -> DirIdent | None:
    """(st_dev, st_ino) of the directory at `path` (following symlinks), None if there is none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


@dataclass(eq=False)
class WatchedDir:
    """A directory holding watched paths, and how it is watched right now."""

    path: str
    ident: DirIdent | None = None  # what `wd` watches; None while the directory is missing
    wd: int | None = None
    waiting_wd: int | None = None  # on the nearest existing ancestor, while missing
    ancestor: str = ""
    next_name: str = ""  # the ancestor's child on the way back to the directory
    stale: bool = False  # the watch died or moved: re-arm at the next recheck


@dataclass(eq=False)
class _Wd:
    """One kernel watch; several directories can share it (the same inode, the same wd)."""

    path: str
    dirs: set[WatchedDir] = field(default_factory=set)
    waiting: set[WatchedDir] = field(default_factory=set)


@dataclass
class Batch:
    """One read of the fd: named events in watched directories, and whether to rescan."""

    events: int = 0
    names: list[tuple[str, str, int]] = field(default_factory=list)  # (directory, name, mask)
    rescan: str = ""  # why every path must be examined again (overflow, undecodable read)


@dataclass(frozen=True)
class Rearmed:
    """A directory whose watch moved: `old` and `new` are its (st_dev, st_ino), or None."""

    path: str
    old: DirIdent | None
    new: DirIdent | None
    ancestor: str  # what is watched while `new` is None


class DirectoryWatches:
    """One inotify instance and one watch per directory (or on its nearest ancestor).

    Every call that adds a watch raises OSError when the kernel refuses (ENOSPC, ...);
    a path that vanished meanwhile is not an error, it is waited for.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self._inotify = Inotify()
        self.dirs = {path: WatchedDir(path) for path in paths}
        self._wds: dict[int, _Wd] = {}

    def fileno(self) -> int:
        return self._inotify.fileno()

    def close(self) -> None:
        self._inotify.close()
        self._wds.clear()

    def arm_all(self) -> None:
        for d in self.dirs.values():
            self._arm(d)

    def mark_all_stale(self) -> None:
        for d in self.dirs.values():
            d.stale = True

    def read(self) -> Batch:
        """Read what is queued; mark dead or moved watches stale; return the named events."""
        batch = Batch()
        try:
            events = self._inotify.read()
        except DecodeError as exc:
            batch.rescan = f"undecodable inotify read ({exc})"
            return batch
        for event in events:
            batch.events += 1
            if event.mask & IN_Q_OVERFLOW:
                limit = sysctl("max_queued_events")
                batch.rescan = f"inotify queue overflowed (fs.inotify.max_queued_events={limit})"
                continue
            entry = self._wds.get(event.wd)
            if entry is None:
                continue  # a watch we removed; its IN_IGNORED arrives later
            if event.mask & SELF_GONE:
                for d in entry.dirs | entry.waiting:
                    d.stale = True
                if event.mask & IN_IGNORED:  # the kernel dropped it: nothing to remove
                    del self._wds[event.wd]
                    for d in entry.dirs:
                        d.wd = None
                    for d in entry.waiting:
                        d.waiting_wd = None
                continue
            for d in entry.waiting:
                if event.name == d.next_name:
                    d.stale = True
            batch.names.extend((d.path, event.name, event.mask) for d in entry.dirs)
        return batch

    def recheck(self) -> list[Rearmed]:
        """Re-arm every directory whose watch died or whose (st_dev, st_ino) moved.

        A mount over a directory sends no event, so this compares what is at the path now
        with what is watched; it runs after every batch and every safety-net tick.
        """
        changes = []
        for d in self.dirs.values():
            now = ident(d.path)
            watching = d.wd is not None if now is not None else d.waiting_wd is not None
            if not d.stale and now == d.ident and watching:
                continue
            old = d.ident
            self._arm(d)
            if d.ident != old:
                changes.append(Rearmed(d.path, old, d.ident, d.ancestor))
        return changes

    def _arm(self, d: WatchedDir) -> None:
        old_wd, old_waiting = d.wd, d.waiting_wd
        d.wd = d.waiting_wd = d.ident = None
        d.ancestor, d.next_name, d.stale = "", "", False
        for _ in range(_ARM_ATTEMPTS):
            before = ident(d.path)
            if before is not None:
                wd = self._add(d.path)
                # stat, watch, stat: the watch is on `before` only if nothing moved between.
                if wd is not None and ident(d.path) == before:
                    self._attach(wd, d.path, d, waiting=False)
                    d.wd, d.ident = wd, before
                    break
                if wd is not None and wd not in self._wds:
                    self._rm(wd)
                continue
            ancestor, child = _nearest_ancestor(d.path)
            wd = self._add(ancestor)
            if wd is None:
                continue
            self._attach(wd, ancestor, d, waiting=True)
            d.waiting_wd, d.ancestor, d.next_name = wd, ancestor, child
            if ident(d.path) is None:
                break
            self._detach(wd, d, waiting=True)  # it came back meanwhile: watch it instead
            d.waiting_wd, d.ancestor, d.next_name = None, "", ""
        else:
            d.stale = True
        if old_wd is not None and old_wd != d.wd:
            self._detach(old_wd, d, waiting=False)
        if old_waiting is not None and old_waiting != d.waiting_wd:
            self._detach(old_waiting, d, waiting=True)

    def _add(self, path: str) -> int | None:
        try:
            return self._inotify.add_watch(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _attach(self, wd: int, path: str, d: WatchedDir, *, waiting: bool) -> None:
        entry = self._wds.setdefault(wd, _Wd(path))
        (entry.waiting if waiting else entry.dirs).add(d)

    def _detach(self, wd: int, d: WatchedDir, *, waiting: bool) -> None:
        entry = self._wds.get(wd)
        if entry is None:
            return
        (entry.waiting if waiting else entry.dirs).discard(d)
        if not entry.dirs and not entry.waiting:
            del self._wds[wd]
            self._rm(wd)

    def _rm(self, wd: int) -> None:
        # Only a watch the kernel already dropped can fail here; it is gone either way.
        with contextlib.suppress(OSError):
            self._inotify.rm_watch(wd)


def _nearest_ancestor(path: str) -> tuple[str, str]:
    child, parent = os.path.basename(path), os.path.dirname(path)
    while parent != "/" and ident(parent) is None:
        child, parent = os.path.basename(parent), os.path.dirname(parent)
    return parent, child
