"""The inotify limits and what to say when one is hit: one text for the watcher and doctor.

The kernel charges inotify instances (fs.inotify.max_user_instances) and watches
(max_user_watches) per user, across every container of that user on the node, so a limit
can be used up by processes this container cannot even see; the fix is a sysctl on the
node, never inside the container. EMFILE from inotify_init1 means either that limit or the
process's own open file limit, and the two have different fixes, so the fd table is counted
to tell them apart.

Stdlib only: the values are read from /proc/sys directly.
"""

from __future__ import annotations

import errno
import os
import resource

SYSCTL_DIR = "/proc/sys/fs/inotify"
# The values the fix suggests: generous for a node running many watching containers.
SUGGESTED = {"max_user_watches": 524288, "max_user_instances": 1024}


def sysctl(name: str) -> str:
    """The value of fs.inotify.NAME (max_user_watches, ...), or "?" when unreadable."""
    try:
        with open(os.path.join(SYSCTL_DIR, name)) as handle:
            return handle.read().strip() or "?"
    except OSError:
        return "?"


def raise_hint(name: str) -> str:
    """The fix for an exhausted fs.inotify.NAME."""
    return (
        "raise it on the node (per user, shared by every container): "
        f"sysctl -w fs.inotify.{name}={SUGGESTED[name]}"
    )


def explain(exc: OSError, where: str) -> tuple[str, str]:
    """(reason naming the limit and its value, the fix) for a refused inotify call."""
    if exc.errno == errno.ENOSPC:
        return (
            f"fs.inotify.max_user_watches={sysctl('max_user_watches')} exhausted (ENOSPC)",
            raise_hint("max_user_watches"),
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
            raise_hint("max_user_instances"),
        )
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"inotify refused {where}: {exc.strerror} ({name})", "use --watch-mode poll"
