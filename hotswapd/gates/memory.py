"""Memory gate: compare the new generation's footprint with the old one's.

Both are measured the same way (RSS summed over the whole process tree). The rule
fails a candidate only when it exceeds *every* configured limit, so the default
`1.5+32MiB` lets a small server that doubles from 7 MB idle to 13 MB under live
traffic through, and stops a build that leaks hundreds of megabytes.
The gate measures and answers; it never stops a process.
"""

from __future__ import annotations

import os

import psutil

from hotswapd.boot.units import format_size
from hotswapd.boot.values import MemoryGrowth


def tree_rss(pid: int) -> int:
    """RSS of `pid` and all its descendants, in bytes (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue  # exited while we measured
    return total


def verdict(old_bytes: int, new_bytes: int, rule: MemoryGrowth) -> str | None:
    """None when the candidate passes, else a one-line reason with both figures."""
    if not rule.enabled or old_bytes <= 0:
        return None
    growth = new_bytes - old_bytes
    over_ratio = rule.ratio is None or new_bytes > old_bytes * rule.ratio
    over_size = rule.allowance is None or growth > rule.allowance
    if over_ratio and over_size:
        return (
            f"memory grew from {format_size(old_bytes)} to {format_size(new_bytes)} "
            f"(+{format_size(growth)}, {new_bytes / old_bytes:.2f}x): over the limit of "
            f"--max-memory-growth {rule.describe()} (a swap fails only when over all of them)"
        )
    return None


def cgroup_headroom() -> int | None:
    """Bytes left under this cgroup's memory limit (v2 or v1), or None when unlimited."""
    try:
        with open("/proc/self/cgroup") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
            limit = _read(os.path.join(base, "memory.max")) or _read("/sys/fs/cgroup/memory.max")
            usage = _read(os.path.join(base, "memory.current")) or _read(
                "/sys/fs/cgroup/memory.current"
            )
        elif "memory" in controllers.split(","):
            base = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
            if not os.path.isdir(base):
                base = "/sys/fs/cgroup/memory"
            limit = _read(os.path.join(base, "memory.limit_in_bytes"))
            usage = _read(os.path.join(base, "memory.usage_in_bytes"))
        else:
            continue
        if limit is None or usage is None or limit >= 1 << 60:
            return None
        return limit - usage
    return None


def _read(path: str) -> int | None:
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    if text == "max":
        return 1 << 62
    try:
        return int(text)
    except ValueError:
        return None


def headroom_verdict(old_bytes: int) -> str | None:
    """Refuse a swap that would not fit: two generations coexist during the overlap."""
    headroom = cgroup_headroom()
    if headroom is None or headroom >= old_bytes:
        return None
    return (
        f"only {format_size(headroom)} left under the cgroup memory limit but the serving "
        f"generation uses {format_size(old_bytes)}: both run during a swap and an OOM kill "
        "could hit the serving one (raise the container's memory limit)"
    )
