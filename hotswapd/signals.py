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

from hotswapd import sigbits

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
    for sig in sorted(HANDLED):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(sigbits.SIGCHLD, on_child)
    sigbits.unblock(BLOCKED_AT_START)


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    for sig in sorted(BLOCKED_AT_START):
        loop.remove_signal_handler(sig)


def name(sig: int) -> str:
    from hotswapd.units import signal_name

    return signal_name(sig)
