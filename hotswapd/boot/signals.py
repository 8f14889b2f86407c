"""Signal sources: handlers that only enqueue.

PID 1 of a pid namespace gets no default action for signals sent from inside its
namespace: the kernel drops any signal for which it has no handler. So every signal
hotswapd must forward gets a handler, and those handlers do nothing but put the
signal on the supervisor's queue (no logging, no awaiting, no state changes).

Before the loop exists the same signals are *blocked*, so one that arrives while
generation 1 is being spawned stays pending and is delivered once handlers are in.
This module is imported before that spawn, so it uses `sigbits`, not `signal`.
"""

from __future__ import annotations

import os

from hotswapd.boot import sigbits

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

# Raised by the kernel for the process's own faults (or uncatchable): never forwarded.
_NOT_HANDLED = {
    sigbits.SIGKILL, sigbits.SIGSTOP, sigbits.SIGSEGV, sigbits.SIGBUS, sigbits.SIGFPE,
    sigbits.SIGILL, sigbits.SIGTRAP, sigbits.SIGSYS, sigbits.SIGCHLD,
}  # fmt: skip

HANDLED: frozenset[int] = frozenset(
    sig for sig in sigbits.valid_signals() if sig not in _NOT_HANDLED
)
BLOCKED_AT_START: frozenset[int] = HANDLED | {sigbits.SIGCHLD}


def block_startup_signals() -> None:
    """Keep every handled signal pending until the event loop can take it."""
    sigbits.block(BLOCKED_AT_START)


def install(
    loop: asyncio.AbstractEventLoop,
    on_signal: Callable[[int], None],
    on_child: Callable[[], None],
) -> None:
    """Install loop handlers for every handled signal, then unblock them."""
    pipe_fd = _pipe_signalfd()
    for sig in sorted(HANDLED):
        if sig == _SIGPIPE and pipe_fd is not None:
            continue
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(sigbits.SIGCHLD, on_child)
    if pipe_fd is not None:
        _installed_pipe_fd.append(pipe_fd)
        loop.add_reader(pipe_fd, _read_pipe_signals, pipe_fd, on_signal)
        sigbits.unblock(BLOCKED_AT_START - {_SIGPIPE})  # SIGPIPE stays blocked: signalfd reads it
    else:
        sigbits.unblock(BLOCKED_AT_START)


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    for sig in sorted(BLOCKED_AT_START):
        loop.remove_signal_handler(sig)
    while _installed_pipe_fd:
        fd = _installed_pipe_fd.pop()
        loop.remove_reader(fd)
        os.close(fd)


# SIGPIPE has two sources: `kill -PIPE 1` from outside, which is forwarded like any other
# signal, and hotswapd's own write to a socket or pipe whose reader is gone (a control or
# metrics client that hung up), which must never reach the server — a C server would die of
# it. A signal handler cannot tell them apart; a signalfd can: the kernel reports a write's
# SIGPIPE as sent by the writer itself. So SIGPIPE stays blocked and is read from a signalfd.
_SIGPIPE: int = sigbits.number("SIGPIPE") or 13
_SIGINFO_SIZE = 128  # struct signalfd_siginfo
_installed_pipe_fd: list[int] = []


def _pipe_signalfd() -> int | None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mask = (ctypes.c_uint64 * 16)()  # sigset_t
        mask[0] = 1 << (_SIGPIPE - 1)
        fd = int(libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC))
    except (OSError, AttributeError):
        return None
    return fd if fd >= 0 else None


def _read_pipe_signals(fd: int, on_signal: Callable[[int], None]) -> None:
    while True:
        try:
            info = os.read(fd, _SIGINFO_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if len(info) < 16:
            return
        sender = int.from_bytes(info[12:16], "little")  # ssi_pid
        if sender != os.getpid():
            on_signal(_SIGPIPE)


def name(sig: int) -> str:
    from hotswapd.boot.units import signal_name

    return signal_name(sig)
