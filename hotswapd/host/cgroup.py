"""This process's cgroup memory limit and usage: one reader for the memory gate and doctor.

cgroup v2 first (one unified line `0::/path` in /proc/self/cgroup), then v1 (the line
whose controllers include `memory`). Inside a cgroup namespace /proc/self/cgroup names
the path as seen from the host, which may not exist under this container's /sys/fs/cgroup;
the container's own cgroup root is then the right directory, so each lookup falls back to
it. "max" (v2) and the huge v1 sentinel both mean unlimited.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
_UNLIMITED = 1 << 60  # v1 writes PAGE_COUNTER_MAX (about 2**63) for "no limit"
_FILES = {
    2: ("memory.max", "memory.current"),
    1: ("memory.limit_in_bytes", "memory.usage_in_bytes"),
}


@dataclass(frozen=True, slots=True)
class Memory:
    """The cgroup's memory figures in bytes; `limit` is None when unlimited."""

    limit: int | None
    usage: int

    @property
    def headroom(self) -> int | None:
        """Bytes left under the limit, or None when unlimited."""
        return None if self.limit is None else self.limit - self.usage


def _memory_dirs(proc_cgroup: str, root: str) -> Iterator[tuple[int, str]]:
    """(cgroup version, directory) candidates of this process's memory cgroup, best first."""
    try:
        with open(proc_cgroup) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base, version = root, 2
        elif "memory" in controllers.split(","):
            base, version = os.path.join(root, "memory"), 1
        else:
            continue
        yield version, os.path.join(base, path.lstrip("/"))
        yield version, base


def memory(proc_cgroup: str = "/proc/self/cgroup", root: str = CGROUP_ROOT) -> Memory | None:
    """The memory limit and usage of this process's cgroup; None when none can be read."""
    for version, directory in _memory_dirs(proc_cgroup, root):
        limit_name, usage_name = _FILES[version]
        usage = _read_bytes(os.path.join(directory, usage_name))
        if usage is not None:
            limit = _read_bytes(os.path.join(directory, limit_name))
            unlimited = limit is None or limit >= _UNLIMITED
            return Memory(None if unlimited else limit, usage)
    return None


def oom_kills(proc_cgroup: str = "/proc/self/cgroup", root: str = CGROUP_ROOT) -> int | None:
    """The OOM kills counted in this process's memory cgroup; None when it cannot be read.

    Children run in hotswapd's cgroup, so its counter is theirs: a SIGKILL is an OOM kill
    only when this counter moved (the reaper's hint, made exact).
    """
    for version, directory in _memory_dirs(proc_cgroup, root):
        name = "memory.events" if version == 2 else "memory.oom_control"
        count = _counter(os.path.join(directory, name), "oom_kill")
        if count is not None:
            return count
    return None


def _counter(path: str, key: str) -> int | None:
    try:
        with open(path) as handle:
            for line in handle:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        return None
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
