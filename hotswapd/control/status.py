"""The status document: one read-only view of the supervisor, built in one place.

`hotswapd ctl status --json`, the control socket and `/metrics` all read the
supervisor through `build_status`, so the three can never disagree about which
generation is active or what the last swap did. The keys are an interface (scripts
and docs rely on them): add keys, never rename or remove one.

Reading only: nothing here changes the supervisor's state. Memory is measured at call
time, so a status request costs a few /proc reads.

Design note: the executable's sha256 never blocks the loop. Hashing a 100 MB server at
the first request after a swap took the loop for tens of milliseconds (signals, the
swap's own probe and the control socket all waited). So a generation's hash is computed
once, by `hash_executables`, through host.hashing's chunked hasher yielding to the loop
after every MiB (no thread: PID 1 forks), and kept on the generation. A build the watcher
already hashed before it asked for the swap is found by its file identity and not read
again. Callers that cannot await (the metrics collector, which exports no hash) pass
`hash_missing=False` and get `null` until the hash exists.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict
from typing import Any

from hotswapd.gates import memory
from hotswapd.host import hashing

STATUS_VERSION = 1  # bumped only if a key ever has to change meaning


def _exe_key(gen: Any) -> hashing.FileKey | None:
    try:
        return hashing.file_key(os.fstat(gen.exe_fd)) if gen.exe_fd is not None else None
    except OSError:
        return None


def executable_sha256(gen: Any, *, hash_missing: bool = True) -> str | None:
    """The hash of the file `gen` runs: kept, or known by its identity, or (only when
    `hash_missing` and nobody awaited `hash_executables`) computed now, synchronously."""
    if gen.sha256 is None:
        key = _exe_key(gen)
        gen.sha256 = hashing.recall(key) if key is not None else None
    if gen.sha256 is None and hash_missing:
        gen.sha256 = hashing.file_sha256(gen.exe_fd if gen.exe_fd is not None else gen.executable)
    return gen.sha256  # type: ignore[no-any-return]  # the supervisor is typed Any here


async def hash_executables(supervisor: Any) -> None:
    """Hash every generation's executable not hashed yet, yielding to the loop per MiB."""
    for gen in list(supervisor.generations.values()):
        if executable_sha256(gen, hash_missing=False) is not None or gen.exe_fd is None:
            continue
        try:
            fd = os.dup(gen.exe_fd)  # the generation may close its own fd meanwhile
        except OSError:
            continue
        try:
            key = hashing.file_key(os.fstat(fd))
            digest = await hashing.sha256_cooperative(fd, asyncio.sleep)
        except OSError:
            continue
        finally:
            os.close(fd)
        hashing.remember(key, digest)
        gen.sha256 = digest


def generation_status(supervisor: Any, gen: Any, *, hash_missing: bool = True) -> dict[str, Any]:
    """One generation as the status document and the metrics report it."""
    alive = gen.status is None
    return {
        "generation": gen.number,
        "pid": gen.pid,
        "state": gen.state.value,
        "executable": gen.executable,
        "sha256": executable_sha256(gen, hash_missing=hash_missing),
        "rss_bytes": memory.tree_rss(gen.pid) if alive else 0,
        "started_at": gen.started_at,
        "exit_status": gen.status,
    }


def watch_status(supervisor: Any) -> dict[str, Any]:
    """The watcher's own report, or mode "off" when nothing is watched."""
    watcher = getattr(supervisor, "watcher", None)
    if watcher is None:
        return {"mode": "off", "paths": []}
    report = dict(watcher.status())
    report.setdefault("mode", "unknown")
    report.setdefault("paths", [])
    return report


def last_swap_status(supervisor: Any) -> dict[str, Any] | None:
    outcome = supervisor.last_swap
    if outcome is None:
        return None
    report: dict[str, Any] = outcome.as_dict()
    report["duration_s"] = round(sum(outcome.phases.values()), 6)
    return report


def probation_status(supervisor: Any) -> dict[str, Any] | None:
    """The running --probation watch: which generation, seconds left; None when none."""
    remaining = getattr(supervisor, "probation_remaining", None)
    left = remaining() if callable(remaining) else None
    if left is None:
        return None
    return {
        "generation": supervisor.probation_generation,
        "seconds": supervisor.config.probation,
        "remaining_s": left,
    }


def build_status(
    supervisor: Any, control_socket: str | None = None, *, hash_missing: bool = True
) -> dict[str, Any]:
    """The whole status document (see docs/operations.md for every key).

    Await `hash_executables(supervisor)` first, or pass `hash_missing=False`: otherwise an
    executable not hashed yet is hashed here, on the loop, in one go.
    """
    active = supervisor.active
    previous = supervisor.previous
    generations = [
        generation_status(supervisor, gen, hash_missing=hash_missing)
        for _, gen in sorted(supervisor.generations.items())
    ]
    return {
        "version": STATUS_VERSION,
        "hotswapd": {
            "pid": os.getpid(),
            "pid1": os.getpid() == 1,
            "state": supervisor.state.value,
            "started_at": supervisor.started_at,
            "uptime_s": round(time.time() - supervisor.started_at, 3),
            "control_socket": control_socket,
            "cwd": os.getcwd(),  # relative executables below are relative to this
        },
        "active": {"generation": active.number, "pid": active.pid},
        "previous": (
            None
            if previous is None
            else {
                "generation": previous.number,
                "pid": previous.pid,
                "executable": previous.executable,
                "can_roll_back": previous.exe_fd is not None,
            }
        ),
        "generations": generations,
        "last_swap": last_swap_status(supervisor),
        "watch": watch_status(supervisor),
        "probation": probation_status(supervisor),
        # Which generation gets each new connection, per listener, and why (docs/swap.md).
        "listeners": supervisor.steering.status(),
        # PID-1 children of no live generation (a daemon a generation left behind).
        "unowned_children": [
            {"pid": pid, "command": command} for pid, command in sorted(supervisor.unowned.items())
        ],
        "counters": asdict(supervisor.counters),
        "orphans_reaped": supervisor.reaper.orphans_reaped,
    }
