"""The escalating stop: signal → timeout → SIGKILL of the process group, each step logged.

Used for every way a generation ends: hotswapd stopping, a drained old generation,
a rolled-back candidate, and what is left of a group after its leader exited.

Every stop or drain signal is followed by SIGCONT to the group, as init systems do: a
stopped process (SIGSTOP, a debugger detached, `kill -STOP` by hand) keeps the signal
pending and would sit out the whole timeout before the SIGKILL, though it would have
exited cleanly the moment it ran again. SIGCONT to a running process does nothing
unless it asked to hear it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from hotswapd.boot.units import signal_name
from hotswapd.core.generation import Generation
from hotswapd.core.reaper import Reaper, group_alive

KILL_WAIT_S = 10.0  # how long a SIGKILLed process may take to be reaped before we move on


def send(pid: int, sig: int) -> bool:
    """Signal one process; False when it is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already empty
        os.killpg(pgid, sig)


def resume_group(pgid: int) -> None:
    """SIGCONT after a stop or drain signal, so a stopped member can act on it."""
    kill_group(pgid, signal.SIGCONT)


def is_stopped(pid: int) -> bool:
    """Is `pid` stopped by a signal (state `T` in /proc/PID/stat)?

    It then cannot answer a probe or send READY=1 until someone sends SIGCONT, and a
    gate that times out should say so rather than blame the server's code.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    # The command name may contain spaces and parentheses: the state follows the last ')'.
    fields = stat.rpartition(b")")[2].split()
    return bool(fields) and fields[0] == b"T"


async def stop_generation(
    gen: Generation,
    sig: int,
    grace: float,
    reaper: Reaper,
    log: Any,
    why: str,
    already_signalled: bool = False,
) -> int:
    """Send `sig`, wait `grace` seconds, then SIGKILL the group; returns the raw wait status."""
    assert gen.exited is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    if gen.alive:
        if not already_signalled:
            log.info(
                "stop_signal_sent",
                generation=gen.number,
                pid=gen.pid,
                signal=signal_name(sig),
                why=why,
                timeout_s=grace,
            )
            send(gen.pid, sig)
        # Also when the caller sent the signal (the drain at cutover): this is the first
        # moment the stop is ours, and a stopped generation must get to act on it.
        resume_group(gen.pid)
        status = await _exit_within(gen, grace)
        if status is None:
            log.warning(
                "stop_timeout_kill",
                generation=gen.number,
                pid=gen.pid,
                timeout_s=grace,
                why=why,
                fix="raise --stop-timeout/--drain-timeout if it needs longer",
            )
            kill_group(gen.pid)
            # SIGKILL cannot be refused, but a process stuck in the kernel (D state) can
            # take a while to die: wait, bounded, and never hang PID 1 on it.
            status = await _exit_within(gen, KILL_WAIT_S)
            if status is None:
                log.error(
                    "not_dead_after_sigkill",
                    generation=gen.number,
                    pid=gen.pid,
                    waited_s=KILL_WAIT_S,
                    note="stuck in the kernel (D state?); giving up on it",
                )
                status = int(signal.SIGKILL)  # the raw status of a SIGKILL death
    else:
        status = await gen.exited
    # The leader is gone; give the rest of its group what is left of the grace period.
    if group_alive(gen.pid):
        kill_group(gen.pid, sig)
        resume_group(gen.pid)
        if not await reaper.wait_group_empty(gen.pid, max(deadline - loop.time(), 0)):
            log.warning("stop_group_kill", generation=gen.number, pgid=gen.pid, why=why)
            kill_group(gen.pid)
            await reaper.wait_group_empty(gen.pid, 5.0)
    return status


async def _exit_within(gen: Generation, within: float) -> int | None:
    """The generation's raw wait status, or None if it has not exited within `within` s."""
    assert gen.exited is not None
    try:
        return await asyncio.wait_for(asyncio.shield(gen.exited), max(within, 0))
    except TimeoutError:
        return None
