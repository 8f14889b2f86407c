"""The mount table, as the kernel reports it: one parser for the watcher and doctor.

/proc/self/mountinfo is read rather than /proc/mounts because it carries the root of a
bind mount (field 4: which part of the source filesystem is shown) and escapes spaces,
tabs, newlines and backslashes in paths as octal (`\\040`), which must be decoded before a
mount point can be compared with a path. A path belongs to the longest mount point above
it; among equal ones the last listed wins, because it was mounted last and sits on top.

Stdlib only, no state: a read answers for the moment it was made.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo: where, what part of which filesystem, of which type."""

    point: str
    root: str  # the part of the source filesystem shown here ("/" unless a bind mount)
    fstype: str
    source: str


def unescape(text: str) -> str:
    """mountinfo writes a space in a path as \\040 (and tab, newline, backslash likewise)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), text)


def parse(text: str) -> list[Mount]:
    """Every well-formed line of a mountinfo text; a malformed line is skipped."""
    found = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        source = tail[1] if len(tail) > 1 else ""
        found.append(Mount(unescape(fields[4]), unescape(fields[3]), tail[0], source))
    return found


def read_mounts(path: str | None = None) -> list[Mount]:
    """The mount table now; empty when it cannot be read (no /proc)."""
    try:
        with open(path or MOUNTINFO, encoding="utf-8", errors="surrogateescape") as handle:
            return parse(handle.read())
    except OSError:
        return []


def inside(path: str, point: str) -> bool:
    """True when the real path `path` is `point` or below it."""
    point = point.rstrip("/") or "/"
    return path == point or path.startswith(point.rstrip("/") + "/")


def existing_dir(path: str) -> str:
    """The nearest existing directory at or above the real path of `path`."""
    probe = os.path.realpath(path)
    while not os.path.isdir(probe) and probe != "/":
        probe = os.path.dirname(probe)
    return probe


def mount_of(path: str, table: list[Mount]) -> Mount | None:
    """The mount that shows `path` (taken as it is, resolved through symlinks)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for mount in table:
        if inside(real, mount.point) and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best


def fs_type(path: str, mountinfo: str | None = None) -> tuple[str, str]:
    """(filesystem type, mount point) of the nearest existing directory at or above `path`.

    Unknown (no /proc) gives ("", "").
    """
    mount = mount_of(existing_dir(path), read_mounts(mountinfo))
    return ("", "") if mount is None else (mount.fstype, mount.point)
