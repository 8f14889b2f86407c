"""Signal sources: handlers that only enqueue.

PID 1 of a pid namespace gets no default action for signals sent from inside its
namespace: the kernel drops any signal for which it has no handler. So every signal
hotswapd must forward gets a handler, and those handlers do nothing but put the
signal on the supervisor's queue (no logging, no awaiting, no state changes).

Before the loop exists the same signals are *blocked*, so one that arrives while
generation 1 is being spawned stays pending and is delivered once handlers are in.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

# Raised by the kernel for the process's own faults (or uncatchable): never forwarded.
_NOT_HANDLED = {
    signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE,
    signal.SIGILL, signal.SIGTRAP, signal.SIGSYS, signal.SIGCHLD,
}  # fmt: skip

HANDLED: frozenset[int] = frozenset(
    int(sig) for sig in signal.valid_signals() if sig not in _NOT_HANDLED
)
BLOCKED_AT_START: frozenset[int] = HANDLED | {int(signal.SIGCHLD)}


def block_startup_signals() -> None:
    """Keep every handled signal pending until the event loop can take it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_AT_START)


def install(
    loop: asyncio.AbstractEventLoop,
    on_signal: Callable[[int], None],
    on_child: Callable[[], None],
) -> None:
    """Install loop handlers for every handled signal, then unblock them."""
    for sig in sorted(HANDLED):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGCHLD, on_child)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_AT_START)


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    for sig in sorted(HANDLED | {int(signal.SIGCHLD)}):
        loop.remove_signal_handler(sig)


def name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        if signal.SIGRTMIN <= sig <= signal.SIGRTMAX:
            return f"SIGRTMIN+{sig - signal.SIGRTMIN}"
        return f"SIG{sig}"
