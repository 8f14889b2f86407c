"""One watch per watched directory, re-armed after it is deleted, moved or mounted over.

Directories are watched, not files: builds, editors and kubelet replace a file by rename,
and a watch on the file dies with the old inode. A directory that is missing is waited for
on its nearest existing ancestor. A watch is never trusted blindly: after IN_IGNORED,
DELETE_SELF, MOVE_SELF or UNMOUNT it is re-armed, and `recheck` compares each directory's
(st_dev, st_ino) with what is watched after every batch, because a mount over a watched
directory sends no event at all. This module reports which names moved in which directory;
what that means is the watcher's business.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from hotswapd.host.inotify_limits import sysctl
from hotswapd.watch.inotify import IN_IGNORED, IN_Q_OVERFLOW, SELF_GONE, DecodeError, Inotify

DirIdent = tuple[int, int]  # st_dev, st_ino
_ARM_ATTEMPTS = 8  # a directory that keeps flipping is retried at the next batch or tick


def ident(path: str) -> DirIdent | None:
    """(st_dev, st_ino) of the directory at `path` (following symlinks), None if there is none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


@dataclass(eq=False)
class WatchedDir:
    """A directory holding watched paths, and how it is watched right now."""

    path: str
    ident: DirIdent | None = None  # what `wd` watches; None while the directory is missing
    wd: int | None = None
    waiting_wd: int | None = None  # on the nearest existing ancestor, while missing
    ancestor: str = ""
    next_name: str = ""  # the ancestor's child on the way back to the directory
    stale: bool = False  # the watch died or moved: re-arm at the next recheck


@dataclass(eq=False)
class _Wd:
    """One kernel watch; several directories can share it (the same inode, the same wd)."""

    path: str
    dirs: set[WatchedDir] = field(default_factory=set)
    waiting: set[WatchedDir] = field(default_factory=set)


@dataclass
class Batch:
    """One read of the fd: named events in watched directories, and whether to rescan."""

    events: int = 0
    names: list[tuple[str, str, int]] = field(default_factory=list)  # (directory, name, mask)
    rescan: str = ""  # why every path must be examined again (overflow, undecodable read)


@dataclass(frozen=True)
class Rearmed:
    """A directory whose watch moved: `old` and `new` are its (st_dev, st_ino), or None."""

    path: str
    old: DirIdent | None
    new: DirIdent | None
    ancestor: str  # what is watched while `new` is None


class DirectoryWatches:
    """One inotify instance and one watch per directory (or on its nearest ancestor).

    Every call that adds a watch raises OSError when the kernel refuses (ENOSPC, ...);
    a path that vanished meanwhile is not an error, it is waited for.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self._inotify = Inotify()
        self.dirs = {path: WatchedDir(path) for path in paths}
        self._wds: dict[int, _Wd] = {}

    def fileno(self) -> int:
        return self._inotify.fileno()

    def close(self) -> None:
        self._inotify.close()
        self._wds.clear()

    def arm_all(self) -> None:
        for d in self.dirs.values():
            self._arm(d)

    def mark_all_stale(self) -> None:
        for d in self.dirs.values():
            d.stale = True

    def read(self) -> Batch:
        """Read what is queued; mark dead or moved watches stale; return the named events."""
        batch = Batch()
        try:
            events = self._inotify.read()
        except DecodeError as exc:
            batch.rescan = f"undecodable inotify read ({exc})"
            return batch
        for event in events:
            batch.events += 1
            if event.mask & IN_Q_OVERFLOW:
                limit = sysctl("max_queued_events")
                batch.rescan = f"inotify queue overflowed (fs.inotify.max_queued_events={limit})"
                continue
            entry = self._wds.get(event.wd)
            if entry is None:
                continue  # a watch we removed; its IN_IGNORED arrives later
            if event.mask & SELF_GONE:
                for d in entry.dirs | entry.waiting:
                    d.stale = True
                if event.mask & IN_IGNORED:  # the kernel dropped it: nothing to remove
                    del self._wds[event.wd]
                    for d in entry.dirs:
                        d.wd = None
                    for d in entry.waiting:
                        d.waiting_wd = None
                continue
            for d in entry.waiting:
                if event.name == d.next_name:
                    d.stale = True
            batch.names.extend((d.path, event.name, event.mask) for d in entry.dirs)
        return batch

    def recheck(self) -> list[Rearmed]:
        """Re-arm every directory whose watch died or whose (st_dev, st_ino) moved.

        A mount over a directory sends no event, so this compares what is at the path now
        with what is watched; it runs after every batch and every safety-net tick.
        """
        changes = []
        for d in self.dirs.values():
            now = ident(d.path)
            watching = d.wd is not None if now is not None else d.waiting_wd is not None
            if not d.stale and now == d.ident and watching:
                continue
            old = d.ident
            self._arm(d)
            if d.ident != old:
                changes.append(Rearmed(d.path, old, d.ident, d.ancestor))
        return changes

    def _arm(self, d: WatchedDir) -> None:
        old_wd, old_waiting = d.wd, d.waiting_wd
        d.wd = d.waiting_wd = d.ident = None
        d.ancestor, d.next_name, d.stale = "", "", False
        for _ in range(_ARM_ATTEMPTS):
            before = ident(d.path)
            if before is not None:
                wd = self._add(d.path)
                # stat, watch, stat: the watch is on `before` only if nothing moved between.
                if wd is not None and ident(d.path) == before:
                    self._attach(wd, d.path, d, waiting=False)
                    d.wd, d.ident = wd, before
                    break
                if wd is not None and wd not in self._wds:
                    self._rm(wd)
                continue
            ancestor, child = _nearest_ancestor(d.path)
            wd = self._add(ancestor)
            if wd is None:
                continue
            self._attach(wd, ancestor, d, waiting=True)
            d.waiting_wd, d.ancestor, d.next_name = wd, ancestor, child
            if ident(d.path) is None:
                break
            self._detach(wd, d, waiting=True)  # it came back meanwhile: watch it instead
            d.waiting_wd, d.ancestor, d.next_name = None, "", ""
        else:
            d.stale = True
        if old_wd is not None and old_wd != d.wd:
            self._detach(old_wd, d, waiting=False)
        if old_waiting is not None and old_waiting != d.waiting_wd:
            self._detach(old_waiting, d, waiting=True)

    def _add(self, path: str) -> int | None:
        try:
            return self._inotify.add_watch(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _attach(self, wd: int, path: str, d: WatchedDir, *, waiting: bool) -> None:
        entry = self._wds.setdefault(wd, _Wd(path))
        (entry.waiting if waiting else entry.dirs).add(d)

    def _detach(self, wd: int, d: WatchedDir, *, waiting: bool) -> None:
        entry = self._wds.get(wd)
        if entry is None:
            return
        (entry.waiting if waiting else entry.dirs).discard(d)
        if not entry.dirs and not entry.waiting:
            del self._wds[wd]
            self._rm(wd)

    def _rm(self, wd: int) -> None:
        # Only a watch the kernel already dropped can fail here; it is gone either way.
        with contextlib.suppress(OSError):
            self._inotify.rm_watch(wd)


def _nearest_ancestor(path: str) -> tuple[str, str]:
    child, parent = os.path.basename(path), os.path.dirname(path)
    while parent != "/" and ident(parent) is None:
        child, parent = os.path.basename(parent), os.path.dirname(parent)
    return parent, child
