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
    sigbits.SIGKILL,
    sigbits.SIGSTOP,
    sigbits.SIGSEGV,
    sigbits.SIGBUS,
    sigbits.SIGFPE,
    sigbits.SIGILL,
    sigbits.SIGTRAP,
    sigbits.SIGSYS,
    sigbits.SIGCHLD,
}

HANDLED: frozenset[int] = frozenset(
    sig for sig in sigbits.valid_signals() if sig not in _NOT_HANDLED
)
BLOCKED_AT_START: frozenset[int] = HANDLED | {sigbits.SIGCHLD}


def block_startup_signals() -> None:
    """Keep every handled signal pending until the event loop can take it.

    Called before generation 1 is spawned, which is also the last moment to see whether
    hotswapd holds a terminal's foreground (see "The terminal" below).
    """
    sigbits.block(BLOCKED_AT_START)
    _terminal[:] = [os.getpid() == 1 and foreground_is_ours()]


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
        if sig in _TTY_STOPS and hands_terminal():
            _ignore(sig)  # see "The terminal": never forwarded then
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
        loop.remove_signal_handler(sig)  # TTIN/TTOU, when ignored, have none and stay so
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


# The terminal. `docker run -it` gives PID 1 a terminal on stdin with PID 1's group in the
# foreground. Each generation runs in a process group of its own (stop and kill reach all
# it spawned), so unless its group is made the terminal's foreground group, the server is
# a background job there: a read from the terminal stops it with SIGTTIN, and Ctrl-C and
# Ctrl-Z reach hotswapd rather than the server. As tini does: a generation spawned while
# hotswapd holds the foreground takes it (in the child, after setpgid: spawn.py), the
# terminal comes back to hotswapd when that generation's leader is reaped (core/reaper.py)
# so a restarted one can take it in turn, and a swap passes it from the old generation to
# the new at the cutover (`pass_terminal`). hotswapd itself then ignores SIGTTIN and
# SIGTTOU: as a background process it would raise them at itself by taking the terminal
# back (or by logging to it under `stty tostop`), and forwarding them would stop the server.
# Only as PID 1: under a shell's job control (not PID 1), Ctrl-Z would stop the server's
# group while the shell watches hotswapd's, and the terminal would hang; there hotswapd keeps
# the foreground and forwards what the terminal sends, as before.
_TTY_STOPS = frozenset({sigbits.number("SIGTTIN") or 21, sigbits.number("SIGTTOU") or 22})
_terminal: list[bool] = []  # [hands the terminal to its generations], decided at start


def _ignore(sig: int) -> None:
    import signal  # after the spawn: loaded by asyncio already

    signal.signal(sig, signal.SIG_IGN)


def foreground_is_ours() -> bool:
    """Is stdin a terminal whose foreground process group is this process's group?"""
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:  # not a terminal, or no controlling terminal
        return False


def hands_terminal() -> bool:
    """Does hotswapd give its generations the terminal (PID 1 with a terminal)?"""
    return bool(_terminal and _terminal[0])


def pass_terminal(from_pgid: int, to_pgid: int) -> bool:
    """Move the terminal's foreground from group `from_pgid` to `to_pgid`, if it is there.

    Safe to call without a terminal (does nothing). SIGTTOU is blocked around the call: a
    background process that changes the foreground would otherwise be sent it.
    """
    if not hands_terminal():
        return False
    previous = sigbits.block(_TTY_STOPS)
    try:
        if os.tcgetpgrp(0) != from_pgid:
            return False
        os.tcsetpgrp(0, to_pgid)
    except OSError:  # the terminal is gone (hung up), or the group already is
        return False
    finally:
        sigbits.set_mask(previous)
    return True


def take_terminal() -> bool:
    """In a forked child in its own new group: become the terminal's foreground group.

    A hung-up terminal must not fail the spawn, so an error is only a False.
    """
    try:
        os.tcsetpgrp(0, os.getpid())
    except OSError:
        return False
    return True


def reclaim_terminal(pgid: int) -> bool:
    """Take the terminal back from generation group `pgid` (its leader was just reaped)."""
    return pass_terminal(pgid, os.getpgrp())
