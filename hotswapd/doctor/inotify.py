"""The doctor's `inotify` check: will the watcher get its instance and its watches?

The kernel limits inotify per user (fs.inotify.max_user_instances and max_user_watches),
and a container's user is usually shared with every other container on the host, so the
limits can be used up by processes this container cannot even see. Two views are given:
the usage visible from /proc (this pid namespace only, as context for the fix), and a
trial instance watching the real directories, which is the kernel's own answer and the
one the verdict rests on.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from typing import Any

from hotswapd.boot.config import Config
from hotswapd.doctor.findings import Finding, read_text, status_field

IN_MODIFY = 0x2


def inotify_usage(euid: int) -> tuple[int, int]:
    """(instances, watches) held by processes of this effective uid, from /proc/*/fdinfo.

    The kernel charges both limits per user (all of that user's containers together); an
    fd shared by fork is counted once per process, so this can only over-count."""
    instances = watches = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        uids = status_field(pid, "Uid").split()
        if len(uids) < 2 or int(uids[1]) != euid:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
            except OSError:
                continue
            instances += 1
            info = read_text(f"/proc/{pid}/fdinfo/{fd}") or ""
            watches += sum(line.startswith("inotify wd:") for line in info.splitlines())
    return instances, watches


def inotify_probe(directories: set[str]) -> str | None:
    """Ask the kernel itself: make an instance, watch each directory, close it.

    The /proc count sees only this pid namespace, but the limits are per user across
    every container on the host; only a real attempt gives the kernel's answer."""
    libc: Any = ctypes.CDLL(None, use_errno=True)  # untyped C calls
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        what = "no inotify instance left" if err == errno.EMFILE else "inotify_init1 failed"
        return f"{what} ({os.strerror(err)})"
    try:
        for directory in sorted(directories):
            if libc.inotify_add_watch(fd, os.fsencode(directory), IN_MODIFY) < 0:
                err = ctypes.get_errno()
                if err == errno.ENOSPC:
                    return f"no inotify watch left for {directory} ({os.strerror(err)})"
                if err != errno.ENOENT:  # a missing directory is the watcher's to report
                    return f"cannot watch {directory}: {os.strerror(err)}"
    finally:
        os.close(fd)
    return None


def check_inotify(config: Config) -> Iterator[Finding]:
    limits = {
        name: int((read_text(f"/proc/sys/fs/inotify/{name}") or "0").strip() or 0)
        for name in ("max_user_instances", "max_user_watches")
    }
    euid = os.geteuid()
    instances, watches = inotify_usage(euid)
    directories = {os.path.dirname(spec.path) for spec in config.watch}
    usage = (
        f"uid {euid} holds {instances} of {limits['max_user_instances']} instances and "
        f"{watches} of {limits['max_user_watches']} watches (in this pid namespace)"
    )
    if not config.watch or config.watch_mode == "poll":
        yield Finding("ok", "inotify", f"not used ({'poll mode' if config.watch else 'no --watch'})"
                      f"; {usage}")  # fmt: skip
        return
    problem = inotify_probe(directories)
    if problem:
        level = "fail" if config.watch_mode == "inotify" else "warn"
        after = "the watch will fail" if level == "fail" else "auto mode will fall back to polling"
        yield Finding(level, "inotify", f"{problem}; {usage}: {after}",
                      "raise it on the host (per user, shared by every container): sysctl -w "
                      "fs.inotify.max_user_instances=512 fs.inotify.max_user_watches=524288, or "
                      "use --watch-mode poll")  # fmt: skip
        return
    yield Finding("ok", "inotify", f"{usage}; a trial instance watching "
                  f"{', '.join(sorted(directories))} worked")  # fmt: skip
