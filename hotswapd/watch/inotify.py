"""The inotify binding: one instance, close-on-exec and non-blocking, and its events decoded.

Only the kernel interface lives here. What is watched (one watch per directory, re-armed)
is hotswapd.watch.dirwatch; what a change means is hotswapd.watch.decide; the limits and
their fixes are hotswapd.host.inotify_limits, shared with doctor.

Design note: what hotswapd takes from pyinotify, and what it does not.

pyinotify is the chosen dependency, and it supplies the vocabulary here: the event mask
constants (`pyinotify.IN_*`, from its `EventsCodes` table) and their names for log lines
(`EventsCodes.ALL_VALUES`). Its machinery is not used, because each
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
is removed below so nothing it logs reaches the container's output unformatted. doctor's
trial instance is this same class, so its verdict is the kernel's answer to this code.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import logging
import os
import struct
import termios
import warnings
from dataclasses import dataclass

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


def mask_names(mask: int) -> str:
    """Names such as "IN_MOVED_TO|IN_ISDIR" for a log line, from pyinotify's table."""
    names: dict[int, str] = pyinotify.EventsCodes.ALL_VALUES
    parts = [name for bit, name in names.items() if bit & mask == bit and bit.bit_count() == 1]
    return "|".join(sorted(parts)) or hex(mask)


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
