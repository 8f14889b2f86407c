"""The status document: one read-only view of the supervisor, built in one place.

`hotswapd ctl status --json`, the control socket and `/metrics` all read the
supervisor through `build_status`, so the three can never disagree about which
generation is active or what the last swap did. The keys are an interface (scripts
and docs rely on them): add keys, never rename or remove one.

Reading only: nothing here changes the supervisor. Memory is measured and the
executable hashed at call time (the hash once per generation, cached by the
supervisor), so a status request costs a few /proc reads.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

from hotswapd.gates import memory

STATUS_VERSION = 1  # bumped only if a key ever has to change meaning


def generation_status(supervisor: Any, gen: Any) -> dict[str, Any]:
    """One generation as the status document and the metrics report it."""
    alive = gen.status is None
    return {
        "generation": gen.number,
        "pid": gen.pid,
        "state": gen.state.value,
        "executable": gen.executable,
        "sha256": supervisor.executable_sha256(gen),
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


def build_status(supervisor: Any, control_socket: str | None = None) -> dict[str, Any]:
    """The whole status document (see docs/operations.md for every key)."""
    active = supervisor.active
    previous = supervisor.previous
    generations = [
        generation_status(supervisor, gen) for _, gen in sorted(supervisor.generations.items())
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
        "counters": asdict(supervisor.counters),
        "orphans_reaped": supervisor.reaper.orphans_reaped,
    }
