"""Signal numbers and mask calls for the code that runs before generation 1 is spawned.

The `signal` module builds its enums at import (enum, functools: several ms), and
`socket` does the same. Everything between hotswapd's start and generation 1's exec
uses the C modules `_signal` and `_socket` directly so that PID 1 costs the child
nothing; after the spawn the rest of hotswapd uses `signal` as usual.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C half of `signal`; no stub exists

SIGHUP: int = _signal.SIGHUP
SIGINT: int = _signal.SIGINT
SIGQUIT: int = _signal.SIGQUIT
SIGILL: int = _signal.SIGILL
SIGTRAP: int = _signal.SIGTRAP
SIGBUS: int = _signal.SIGBUS
SIGFPE: int = _signal.SIGFPE
SIGKILL: int = _signal.SIGKILL
SIGSEGV: int = _signal.SIGSEGV
SIGTERM: int = _signal.SIGTERM
SIGUSR2: int = _signal.SIGUSR2
SIGCHLD: int = _signal.SIGCHLD
SIGSTOP: int = _signal.SIGSTOP
SIGSYS: int = _signal.SIGSYS
SIGRTMIN: int = _signal.SIGRTMIN
SIGRTMAX: int = _signal.SIGRTMAX
NSIG: int = _signal.NSIG
SIG_BLOCK: int = _signal.SIG_BLOCK
SIG_UNBLOCK: int = _signal.SIG_UNBLOCK
SIG_SETMASK: int = _signal.SIG_SETMASK


def valid_signals() -> set[int]:
    return {int(sig) for sig in _signal.valid_signals()}


def number(name: str) -> int | None:
    """The number of `SIGNAME`, or None when this platform has no such signal."""
    value = getattr(_signal, name, None)
    return int(value) if isinstance(value, int) and name.startswith("SIG") else None


def block(signals: set[int] | frozenset[int]) -> set[int]:
    """Block `signals`; returns the previous mask."""
    return {int(sig) for sig in _signal.pthread_sigmask(SIG_BLOCK, signals)}


def unblock(signals: set[int] | frozenset[int]) -> None:
    _signal.pthread_sigmask(SIG_UNBLOCK, signals)


def set_mask(signals: set[int] | frozenset[int]) -> None:
    _signal.pthread_sigmask(SIG_SETMASK, signals)


def reset_dispositions() -> None:
    """In a forked child: every catchable signal back to SIG_DFL (Python ignores SIGPIPE)."""
    default = _signal.SIG_DFL
    for sig in _signal.valid_signals():
        if sig in (SIGKILL, SIGSTOP):
            continue
        try:
            _signal.signal(sig, default)
        except (OSError, ValueError):
            continue
    _signal.set_wakeup_fd(-1)
