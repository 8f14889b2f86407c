"""The doctor's mount checks: what a watched path or the program's directory really shows.

Every rule comes from the code the runtime uses: the mount table (hotswapd.host.mountinfo),
the watcher's own blind-filesystem test (hotswapd.watch.mode, on hotswapd.host.fsfacts) and
what a mount hides (hotswapd.host.shadow). What is doctor's own is the wording of the
findings that have no runtime counterpart: a single-file bind mount that keeps the old
inode after the host replaces the file, and the entries a mount hides underneath.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from hotswapd.boot.config import Config
from hotswapd.doctor.findings import Finding
from hotswapd.host.mountinfo import Mount, mount_of
from hotswapd.host.shadow import look_under
from hotswapd.watch.mode import blind_filesystem


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
    elif watched and (blind := blind_filesystem([os.path.dirname(path)])) is not None:
        # The watcher's own test, on the directory it watches: polls in auto, refuses in inotify.
        reason, fix = blind
        level = {"inotify": "fail", "poll": "ok"}.get(config.watch_mode, "warn")
        yield Finding(level, check, reason, fix if level != "ok" else "")
    elif mount.fstype == "overlay":
        yield Finding(
            "ok",
            check,
            f"{where} (the container's own layer: changes made inside "
            "the container are seen, host files are not)",
        )
    else:
        yield Finding("ok", check, where)
    if mount.point != "/" and not (os.path.isfile(mount.point)):
        seen = look_under(mount.point)
        if seen is not None and seen.names:
            hidden = seen.names
            shown = ", ".join(hidden[:5]) + (", ..." if len(hidden) > 5 else "")
            entries = f"{len(hidden)} {'entry' if len(hidden) == 1 else 'entries'}"
            yield Finding(
                "warn",
                check,
                f"the {mount.fstype} mount on {mount.point} hides {entries} underneath ({shown})",
                "files the image put there are invisible: mount the volume elsewhere, or move "
                f"them out of {mount.point}",
            )
