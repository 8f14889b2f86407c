"""This process's cgroup memory limit and usage: one reader for the memory gate and doctor.

cgroup v2 first (one unified line `0::/path` in /proc/self/cgroup), then v1 (the line
whose controllers include `memory`). Inside a cgroup namespace /proc/self/cgroup names
the path as seen from the host, which may not exist under this container's /sys/fs/cgroup;
the container's own cgroup root is then the right directory, so each lookup falls back to
it. "max" (v2) and the huge v1 sentinel both mean unlimited.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
_UNLIMITED = 1 << 60  # v1 writes PAGE_COUNTER_MAX (about 2**63) for "no limit"


@dataclass(frozen=True, slots=True)
class Memory:
    """The cgroup's memory figures in bytes; `limit` is None when unlimited."""

    limit: int | None
    usage: int

    @property
    def headroom(self) -> int | None:
        """Bytes left under the limit, or None when unlimited."""
        return None if self.limit is None else self.limit - self.usage


def memory(proc_cgroup: str = "/proc/self/cgroup", root: str = CGROUP_ROOT) -> Memory | None:
    """The memory limit and usage of this process's cgroup; None when none can be read."""
    try:
        with open(proc_cgroup) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            bases = [os.path.join(root, path.lstrip("/")), root]
            names = ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            v1 = os.path.join(root, "memory")
            bases = [os.path.join(v1, path.lstrip("/")), v1]
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        for base in bases:
            usage = _read_bytes(os.path.join(base, names[1]))
            if usage is not None:
                limit = _read_bytes(os.path.join(base, names[0]))
                unlimited = limit is None or limit >= _UNLIMITED
                return Memory(None if unlimited else limit, usage)
    return None


def _read_bytes(path: str) -> int | None:
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    if text == "max":
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None
