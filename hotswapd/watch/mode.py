"""Which way to watch: inotify, inotify plus a stat safety net ("auto"), or polling.

"inotify" has no timer at all while idle; "auto" adds a stat of every path each
`--poll-interval` (mounts over directories, filesystems that lose events); "poll" only
stats. "auto" drops to "poll" when the kernel refuses (ENOSPC, EMFILE) or the filesystem
is one where inotify is blind, and says which sysctl or mount is to blame; "inotify"
refuses to start instead. doctor calls `attempt` itself, so what it predicts is what the
watcher will do, with the same words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hotswapd.errors import HotswapdError
from hotswapd.host.fsfacts import BLIND_FIX, blind_reason, is_blind
from hotswapd.host.inotify_limits import explain
from hotswapd.host.mountinfo import fs_type
from hotswapd.watch.dirwatch import DirectoryWatches

MODES = ("auto", "inotify", "poll")


class WatchError(HotswapdError):
    """--watch-mode inotify cannot work here; the message names the limit and the fix."""


@dataclass(eq=False)
class ModeChoice:
    """The mode chosen, why, and (when inotify could not be had) the fix."""

    mode: str
    reason: str
    fix: str = ""
    watches: DirectoryWatches | None = None  # armed, in inotify and auto mode

    @property
    def fell_back(self) -> bool:
        return bool(self.fix)


def refusal(reason: str, fix: str) -> str:
    """The one line for --watch-mode inotify when inotify cannot be had."""
    return (
        f"--watch-mode inotify: {reason}; {fix}, or use --watch-mode auto to fall back to polling"
    )


def blind_filesystem(directories: Iterable[str]) -> tuple[str, str] | None:
    """(reason, fix) for the first directory on a filesystem where inotify is blind."""
    for directory in directories:
        kind, point = fs_type(directory)
        if is_blind(kind):
            return blind_reason(directory, kind, point), BLIND_FIX
    return None


def open_watches(directories: Iterable[str]) -> tuple[DirectoryWatches | None, tuple[str, str]]:
    """An armed DirectoryWatches, or None and (reason, fix) when the kernel refused."""
    try:
        watches = DirectoryWatches(directories)
    except OSError as exc:
        return None, explain(exc, "inotify_init1")
    try:
        watches.arm_all()
    except OSError as exc:
        watches.close()
        return None, explain(exc, exc.filename or "a directory")
    return watches, ("", "")


def attempt(requested: str, directories: Iterable[str], poll_interval: float) -> ModeChoice:
    """The mode these directories get; a failed inotify gives "poll" with the reason and fix.

    The caller owns (and closes) the returned watches. doctor calls this directly.
    """
    if requested not in MODES:
        raise ValueError(f"watch mode {requested!r}: use auto, inotify or poll")
    if requested == "poll":
        return ModeChoice("poll", "--watch-mode poll")
    directories = list(directories)
    failure = blind_filesystem(directories)
    watches = None
    if failure is None:
        watches, failure = open_watches(directories)
    if watches is None:
        reason, fix = failure
        return ModeChoice("poll", reason, fix)
    if requested == "inotify":
        return ModeChoice("inotify", "--watch-mode inotify (no periodic stat)", watches=watches)
    reason = f"inotify, with a stat safety net every {poll_interval:g}s"
    return ModeChoice("auto", reason, watches=watches)


def choose(requested: str, directories: Iterable[str], poll_interval: float) -> ModeChoice:
    """`attempt`, except that --watch-mode inotify without inotify raises WatchError."""
    choice = attempt(requested, directories, poll_interval)
    if requested == "inotify" and choice.fell_back:
        raise WatchError(refusal(choice.reason, choice.fix))
    return choice
