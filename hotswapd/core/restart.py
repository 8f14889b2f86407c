"""The `--on-exit restart` policy: exponential backoff, and which spawn errors pass by themselves.

A crash loop must neither spin (PID 1 at 100% CPU, a log line per millisecond) nor give
up on a failure that is only momentary (a build still writing the file, a full process
table). The backoff doubles from 0.1 s to 30 s and resets after a run of 10 s.
"""

from __future__ import annotations

import errno

BACKOFF_START_S = 0.1  # first restart delay
BACKOFF_CAP_S = 30.0  # a crash loop settles at one attempt per 30 s
HEALTHY_RUN_S = 10.0  # a run this long resets the backoff

# Spawn errors that pass by themselves: a build still writing the file, a full process
# table or fd table. Anything else (missing, not executable) ends a restart loop.
TRANSIENT_SPAWN_ERRORS = frozenset(
    {errno.ETXTBSY, errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


class Backoff:
    """The delay before the next restart attempt; the supervisor alone calls it."""

    def __init__(self) -> None:
        self.delay = BACKOFF_START_S

    def after_exit(self, ran_for: float) -> float:
        """The delay after a generation that ran `ran_for` seconds exited."""
        if ran_for >= HEALTHY_RUN_S:
            self.delay = BACKOFF_START_S
        return self.next()

    def next(self) -> float:
        """The delay for this attempt; the following one waits twice as long (capped)."""
        delay = self.delay
        self.delay = min(self.delay * 2, BACKOFF_CAP_S)
        return delay


def is_transient(spawn_errno: int) -> bool:
    return spawn_errno in TRANSIENT_SPAWN_ERRORS
