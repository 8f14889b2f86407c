"""What a mount hides: the image's files under a volume or tmpfs mounted over their directory.

The most common container surprise: an image puts `/tmp/app/server` there, and the pod mounts
an emptyDir on `/tmp` (or a volume on `/tmp/app`). The program is then simply missing, and
ENOENT says nothing about why. Looking underneath a mount needs the mount gone, so
`look_under` forks a child that detaches it in a private mount namespace of its own and
reports what is there: nothing changes for this process or the container.

Both doctor and the run mode (`program_hint`, when generation 1's program is missing)
call `hidden_by_mount`, so both say the same sentence. The child is waited for here by
pid; meant for before anything is supervised (a waitpid(-1) reaper could take its status
first, which is tolerated: the answer comes through the pipe). Looking underneath needs
CAP_SYS_ADMIN; without it the answer is None and nothing is blamed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from hotswapd.errors import EXIT_NOT_FOUND, HotswapdError
from hotswapd.host.mountinfo import Mount, inside, read_mounts

_CLONE_NEWNS, _MS_REC, _MS_PRIVATE, _MNT_DETACH = 0x20000, 0x4000, 0x40000, 2
_MAX_NAMES = 1000


@dataclass(frozen=True, slots=True)
class Underneath:
    """What a mount point shows with the mount detached."""

    names: tuple[str, ...]  # the directory's entries (sorted, at most _MAX_NAMES)
    present: tuple[bool, ...]  # whether each asked-for path exists there


@functools.cache
def look_under(point: str, paths: tuple[str, ...] = ()) -> Underneath | None:
    """List `point`, and check `paths`, with the mount on `point` detached (privately).

    None when it cannot be seen (no CAP_SYS_ADMIN, the kernel refused, or a fork failed).
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:  # pragma: no cover - the child reports through the pipe only
        code = 1
        try:
            os.close(read_fd)
            libc = ctypes.CDLL(None, use_errno=True)
            if (
                libc.unshare(_CLONE_NEWNS) == 0
                and libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0
                and libc.umount2(os.fsencode(point), _MNT_DETACH) == 0
            ):
                names = sorted(os.listdir(point))[:_MAX_NAMES]
                present = [os.path.lexists(path) for path in paths]
                os.write(write_fd, json.dumps([names, present]).encode())
                code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    with contextlib.suppress(ChildProcessError):  # a waitpid(-1) reaper may have been first
        os.waitpid(pid, 0)
    try:  # the child writes its one JSON document only after every step succeeded
        names, present = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return Underneath(tuple(names), tuple(present))


def covering_mounts(path: str, table: list[Mount]) -> list[Mount]:
    """The mounts above `path` other than /, the topmost (deepest) first."""
    real = os.path.realpath(path)
    found = [m for m in table if m.point != "/" and inside(real, m.point)]
    return sorted(found, key=lambda m: len(m.point), reverse=True)


def hidden_by_mount(path: str, table: list[Mount] | None = None) -> Mount | None:
    """The mount that hides a missing `path`: with it detached, `path` is there."""
    if os.path.lexists(path):
        return None
    table = read_mounts() if table is None else table
    for mount in covering_mounts(path, table):
        seen = look_under(mount.point, (os.path.abspath(path),))
        if seen is not None and seen.present[0]:
            return mount
    return None


def hidden_finding(path: str, mount: Mount) -> tuple[str, str]:
    """(what is wrong, the fix) for a path a mount hides: doctor and the run mode say this."""
    return (
        f"{path} is hidden by the {mount.fstype} mount on {mount.point}: it exists underneath, "
        "where the image put it",
        f"mount the volume elsewhere, or install {os.path.basename(path)} outside {mount.point}",
    )


def missing_hint(path: str) -> str:
    """For the run mode's 'No such file or directory': the mount to blame, or ""."""
    mount = hidden_by_mount(path)
    if mount is None:
        return ""
    finding, fix = hidden_finding(path, mount)
    return f": {finding} ({fix})"


def program_hint(exc: HotswapdError, command: Sequence[str]) -> str:
    """For the run mode's exit 127 line: `missing_hint` when a path PROGRAM is missing."""
    missing = exc.exit_code == EXIT_NOT_FOUND and getattr(exc, "errno", 0) == errno.ENOENT
    if not missing or not command or "/" not in command[0]:
        return ""
    return missing_hint(command[0])
