"""The doctor's mount checks: what a watched path or the program's directory really shows.

Read from /proc/self/mountinfo, the table the kernel uses, because the failures looked for
exist only at run time and never in the image: a single-file bind mount that keeps the old
inode after the host replaces the file, a host or network filesystem whose changes inotify
never sees, and a volume or tmpfs mounted over a directory the image filled, which hides
those files. The last one needs looking underneath a mount: `hidden_entries` forks a child
that detaches the mount in a private mount namespace of its own and lists what is left, so
nothing changes for this process or the container (a doctor run is not PID 1's supervisor:
it may fork).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hotswapd.boot.config import Config
from hotswapd.doctor.findings import Finding, read_text

BLIND_FS = ("nfs", "nfs4", "cifs", "smb3", "9p", "virtiofs", "vboxsf", "fakeowner", "grpcfuse")
CLONE_NEWNS, MS_REC, MS_PRIVATE, MNT_DETACH = 0x20000, 0x4000, 0x40000, 2


@dataclass(frozen=True)
class Mount:
    point: str
    root: str  # the part of the source filesystem shown here ("/" unless a bind mount)
    fstype: str
    source: str


def mounts() -> list[Mount]:
    found = []
    for line in (read_text("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        found.append(Mount(_unescape(fields[4]), _unescape(fields[3]), tail[0], tail[1]))
    return found


def _unescape(text: str) -> str:
    """mountinfo writes a space in a path as \\040 (and tab, newline, backslash likewise)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def mount_of(path: str, table: list[Mount]) -> Mount | None:
    """The mount that shows `path`: the longest mount point above it, the last one stacked."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for mount in table:
        point = mount.point.rstrip("/") or "/"
        if (real == point or real.startswith(point.rstrip("/") + "/")) and (
            best is None or len(point) >= len(best.point.rstrip("/") or "/")
        ):
            best = mount
    return best


@functools.cache
def hidden_entries(point: str) -> list[str] | None:
    """What a mount hides: list `point` with that mount detached, in a private namespace.

    None when it cannot be seen (no CAP_SYS_ADMIN, or the kernel refused)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe only
        code = 1
        try:
            os.close(read_fd)
            libc: Any = ctypes.CDLL(None, use_errno=True)  # untyped C calls
            if (libc.unshare(CLONE_NEWNS) == 0 and libc.mount(b"none", b"/", None,
                    MS_REC | MS_PRIVATE, None) == 0 and libc.umount2(
                    os.fsencode(point), MNT_DETACH) == 0):  # fmt: skip
                os.write(write_fd, json.dumps(sorted(os.listdir(point))[:1000]).encode())
                code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    names: list[str] = json.loads(b"".join(chunks))
    return names


def check_path(label: str, path: str, config: Config, table: list[Mount]) -> Iterator[Finding]:
    watched = label == "watch"
    mount = mount_of(path, table)
    if mount is None:
        return
    check = f"{label} {path}"
    bind = f", a bind mount of {mount.root}" if mount.root != "/" else ""
    where = f"{mount.fstype} mounted on {mount.point} from {mount.source}{bind}"
    if mount.point == os.path.realpath(path) and os.path.isfile(path):
        level = "warn" if watched else "ok"
        yield Finding(
            level,
            check,
            f"single-file bind mount ({where}): a rebuild that replaces "
            "the file on the host (rename) is never seen here; the old inode stays",
            "bind-mount the directory instead (-v ./build:/app)" if watched else "",
        )
    elif watched and (mount.fstype in BLIND_FS or mount.fstype.startswith("fuse")):
        level = "fail" if config.watch_mode == "inotify" else "warn"
        yield Finding(
            level,
            check,
            f"{where}: inotify does not see changes made on the other "
            "side (host, NFS server, Docker Desktop)",
            "use --watch-mode poll",
        )
    elif mount.fstype == "overlay":
        yield Finding("ok", check, f"{where} (the container's own layer: changes made inside "
                      "the container are seen, host files are not)")  # fmt: skip
    else:
        yield Finding("ok", check, where)
    if mount.point != "/" and not (os.path.isfile(mount.point)):
        hidden = hidden_entries(mount.point)
        if hidden:
            shown = ", ".join(hidden[:5]) + (", ..." if len(hidden) > 5 else "")
            entries = f"{len(hidden)} {'entry' if len(hidden) == 1 else 'entries'}"
            yield Finding("warn", check, f"the {mount.fstype} mount on {mount.point} hides "
                          f"{entries} underneath ({shown})", "files the image put "
                          f"there are invisible: mount the volume elsewhere, or move them out of "
                          f"{mount.point}")  # fmt: skip
