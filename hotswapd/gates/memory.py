"""Memory gate: compare the new generation's footprint with the old one's.

Both are measured the same way (RSS summed over the whole process tree). The rule
fails a candidate only when it exceeds *every* configured limit, so the default
`1.5+32MiB` lets a small server that doubles from 7 MB idle to 13 MB under live
traffic through, and stops a build that leaks hundreds of megabytes.
The gate measures and answers; it never stops a process.
"""

from __future__ import annotations

import psutil

from hotswapd.boot.units import format_size
from hotswapd.boot.values import MemoryGrowth
from hotswapd.host import cgroup


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
    figures = cgroup.memory()  # the reader doctor's memory check uses too
    return None if figures is None else figures.headroom


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
