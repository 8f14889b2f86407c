"""The supervisor's events: what signals, the reaper, the watcher, the control socket
and its own tasks put on the one queue. Each has a `handle_<event>` in the supervisor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SwapOutcome:
    """The one record of a swap; `status` and `/metrics` report it as is."""

    swap_id: int
    trigger: str
    outcome: str = "pending"  # committed | rolled_back | refused
    reason: str = ""
    old_generation: int | None = None
    old_pid: int | None = None
    new_generation: int | None = None
    new_pid: int | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    old_rss_bytes: int | None = None
    new_rss_bytes: int | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class ChildExited:
    pid: int
    status: int


@dataclass
class SwapRequested:
    source: str  # signal | watch | ctl | rollback
    reason: str = ""
    rollback: bool = False
    reply: asyncio.Future[SwapOutcome] | None = None
    on_phase: Callable[[str, dict[str, Any]], None] | None = None
    joined: list[SwapRequested] = field(default_factory=list)  # coalesced into this one


@dataclass(frozen=True)
class SwapFinished:
    outcome: SwapOutcome


@dataclass(frozen=True)
class SignalRequested:
    signum: int
    source: str


@dataclass(frozen=True)
class RestartDue:
    pass


@dataclass(frozen=True)
class StopFinished:
    pass


@dataclass(frozen=True)
class StopRequested:
    exit_code: int
    reason: str


Event = (
    SignalReceived | ChildExited | SwapRequested | SwapFinished | SignalRequested | RestartDue
    | StopFinished | StopRequested
)  # fmt: skip


@dataclass
class Counters:
    swaps_committed: int = 0
    swaps_rolled_back: int = 0
    swaps_refused: int = 0
    swaps_coalesced: int = 0
    restarts: int = 0
    signals_forwarded: int = 0
    rollback_reasons: dict[str, int] = field(default_factory=dict)
