"""Atomic writes: every file hotswapd writes or installs goes through here.

A reader (the supervisor exec'ing `/app/server`, the file watcher, a `docker compose` host)
must never see half a file, and a crash or a full disk at any moment must leave the old file
in place. So the new content goes to a temp file, is fsynced, gets its final mode, and only
then is renamed over the destination; rename(2) swaps the name in one step, and the
directory is fsynced so the swap itself survives a power cut.

The temp file lives in the destination's own directory because rename(2) cannot cross
filesystems (EXDEV): a temp in /tmp could not be renamed onto a bind-mounted /app. Where the
filesystem allows it the temp is an unnamed O_TMPFILE, so a crash while writing leaves
nothing behind; it gets a name only once complete, just before the rename. Elsewhere it is
a hidden `.<name>.hotswapd-tmp-<random>` file (see `is_temp_name`, for the watcher).

Stdlib only: imported on the hot path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable

from hotswapd.errors import HotswapdError

TEMP_INFIX = ".hotswapd-tmp-"
_PROC_FD = "/proc/self/fd"
# O_TMPFILE is refused with one of these by filesystems and kernels that lack it.
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
# copy_file_range refuses these pairs of files; sendfile copies any regular file.
_NO_COPY_RANGE = (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)
_CHUNK = 1 << 30


class AtomicWriteError(HotswapdError):
    """A write or install failed; the destination is untouched and no temp file is left."""


class _Failed(Exception):
    """A failed step that is not an OSError (the source changed under us)."""


def atomic_write(dest: str, data: bytes, mode: int = 0o644, *, use_tmpfile: bool = True) -> None:
    """Replace `dest` with `data` and permission bits `mode` (the umask does not apply).

    `use_tmpfile=False` skips O_TMPFILE and uses the named temp file directly.
    """

    def fill(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    _replace("write", dest, fill, mode, use_tmpfile)


def atomic_install(
    src: str, dest: str, mode: int | None = None, *, use_tmpfile: bool = True
) -> None:
    """Install a copy of `src` as `dest`, with `mode` (default: `src`'s permission bits).

    `dest` is replaced by name: a running program keeps its old inode (no ETXTBSY), and a
    symlink at `dest` is replaced, not followed. A source that changes while it is copied
    (a build still writing it) fails the install rather than installing a mix.
    """
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _error("install", dest, f"opening the source {src}", exc) from exc
    try:
        before = os.fstat(src_fd)
        if not stat.S_ISREG(before.st_mode):
            raise AtomicWriteError(f"cannot install {dest}: the source {src} is not a regular file")

        def fill(fd: int) -> None:
            _copy(src_fd, fd, before.st_size, src)
            after = os.fstat(src_fd)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise _Failed(f"the source {src} changed while being copied (still being written?)")

        final_mode = stat.S_IMODE(before.st_mode) if mode is None else mode
        _replace("install", dest, fill, final_mode, use_tmpfile)
    finally:
        os.close(src_fd)


def is_temp_name(name: str) -> bool:
    """True for the base name of a temp file made here (watchers ignore these)."""
    return name.startswith(".") and TEMP_INFIX in name


def _replace(
    verb: str, dest: str, fill: Callable[[int], None], mode: int, use_tmpfile: bool
) -> None:
    """Fill a temp file in dest's directory, make it durable, and rename it over dest."""
    directory, name = os.path.split(os.path.abspath(dest))
    step = f"opening the directory {directory}"
    dir_fd = fd = -1
    temp: str | None = None  # the temp file's name, once it has one
    committed = False
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        step = f"creating a temp file in {directory}"
        fd, temp = _open_temp(dir_fd, name, use_tmpfile)
        step = f"writing the temp copy in {directory}"
        fill(fd)
        # Mode before fsync, so the fsync makes the mode durable along with the data.
        step = f"setting mode {mode:o} on the temp copy in {directory}"
        os.fchmod(fd, stat.S_IMODE(mode))
        step = f"flushing the temp copy in {directory} to disk"
        os.fsync(fd)
        if temp is None:
            # linkat(2) cannot replace a name, so the complete O_TMPFILE gets a temp name
            # first. dst_dir_fd makes os.link call linkat(AT_SYMLINK_FOLLOW); plain link(2)
            # would try to link the /proc symlink itself and fail with EXDEV.
            step = f"naming the temp copy in {directory}"
            candidate = _temp_name(name)
            os.link(f"{_PROC_FD}/{fd}", candidate, dst_dir_fd=dir_fd)
            temp = candidate
        step = f"renaming the temp copy over {dest}"
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        committed = True
        step = f"syncing the directory {directory}"
        os.fsync(dir_fd)
    except OSError as exc:
        error = _error(verb, dest, step, exc)
        if committed:  # past the point of no return: say so rather than claim nothing changed
            error = AtomicWriteError(
                f"{error} (the new file is in place but may not survive a crash)"
            )
        raise error from exc
    except _Failed as exc:
        raise AtomicWriteError(f"cannot {verb} {dest}: {exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if temp is not None and not committed:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
        if dir_fd >= 0:
            os.close(dir_fd)


def _open_temp(dir_fd: int, name: str, use_tmpfile: bool) -> tuple[int, str | None]:
    """Open a temp file in the directory: (fd, None) for an O_TMPFILE, else (fd, its name)."""
    if use_tmpfile and os.path.isdir(_PROC_FD):  # naming it later goes through /proc
        flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
        try:
            return os.open(".", flags, 0o600, dir_fd=dir_fd), None
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    while True:
        temp = _temp_name(name)
        try:
            return os.open(temp, flags, 0o600, dir_fd=dir_fd), temp
        except FileExistsError:
            continue  # 2**48 names: only a leftover of an earlier crash can collide


def _temp_name(name: str) -> str:
    return f".{name[:200]}{TEMP_INFIX}{os.urandom(6).hex()}"  # 200: stay under NAME_MAX


def _copy(src_fd: int, dst_fd: int, size: int, src: str) -> None:
    """Copy `size` bytes from the start of src_fd to dst_fd in the kernel.

    copy_file_range first (a reflink on btrfs and XFS, no copy at all), sendfile when the
    pair of filesystems refuses it. Both write at dst_fd's position, so they can be mixed.
    """
    copied = 0
    use_range = True
    while copied < size:
        count = min(size - copied, _CHUNK)
        if use_range:
            try:
                done = os.copy_file_range(src_fd, dst_fd, count, copied)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                use_range = False
                continue
        else:
            done = os.sendfile(dst_fd, src_fd, copied, count)
        if done == 0:
            raise _Failed(
                f"the source {src} shrank to {copied} of {size} bytes while being copied "
                "(still being written?)"
            )
        copied += done


def _error(verb: str, dest: str, step: str, exc: OSError) -> AtomicWriteError:
    return AtomicWriteError(f"cannot {verb} {dest}: {step} failed: {exc.strerror or exc}")
