"""The doctor's `inotify` check: will the watcher get its instance and its watches?

The verdict is the watcher's own: `hotswapd.watch.mode.attempt` is called with the
configuration's mode and directories, exactly as the watcher's start does, and its watches
are closed again. The usage visible from /proc (this pid namespace only) is context for the
fix: the kernel charges the limits per user, across every container of that user on the
node, so a limit can be used up by processes this container cannot see.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from hotswapd.boot.config import Config
from hotswapd.doctor.findings import Finding, read_text, status_field
from hotswapd.host.inotify_limits import sysctl
from hotswapd.watch.inotify import IN_MODIFY as IN_MODIFY
from hotswapd.watch.mode import attempt, blind_filesystem


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


def check_inotify(config: Config) -> Iterator[Finding]:
    euid = os.geteuid()
    instances, watches = inotify_usage(euid)
    directories = sorted({os.path.dirname(os.path.normpath(spec.path)) for spec in config.watch})
    usage = (
        f"uid {euid} holds {instances} of {sysctl('max_user_instances')} instances and "
        f"{watches} of {sysctl('max_user_watches')} watches (in this pid namespace)"
    )
    if not config.watch or config.watch_mode == "poll":
        why = "poll mode" if config.watch else "no --watch"
        yield Finding("ok", "inotify", f"not used ({why}); {usage}")
        return
    if blind_filesystem(directories) is not None:
        return  # the watch check names the filesystem; the limits are not what decides
    choice = attempt(config.watch_mode, directories, config.poll_interval)
    if choice.watches is not None:
        choice.watches.close()
    if choice.fell_back:
        if config.watch_mode == "inotify":
            after, level = "the watch will fail (--watch-mode inotify)", "fail"
        else:
            after, level = "auto mode will fall back to polling", "warn"
        yield Finding(level, "inotify", f"{choice.reason}; {usage}: {after}", choice.fix)
        return
    yield Finding(
        "ok",
        "inotify",
        f"{usage}; a trial of the watcher's own watches on {', '.join(directories)} worked",
    )
