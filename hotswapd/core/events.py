"""The supervisor's events: what signals, the reaper, the watcher, the control socket
and its own tasks put on the one queue. Each has a `handle_<event>` in the supervisor.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


class Outcome(enum.StrEnum):
    """How a swap ended. A str enum: logs, JSON and metrics show the plain value."""

    PENDING = "pending"
    COMMITTED = "committed"  # the candidate passed every gate and is active
    ROLLED_BACK = "rolled_back"  # a candidate was started and failed a gate; it was stopped
    REFUSED = "refused"  # nothing was started: a pre-flight check or the supervisor said no


class Code(enum.StrEnum):
    """Why a swap ended, as a stable low-cardinality label (metrics, counters, scripts).

    The free-text `reason` is for people; this is what a program should match on.
    """

    PASSED = "all_gates_passed"
    # refused: nothing was started
    PROGRAM = "program_refused"  # missing, not executable, truncated or foreign program
    HEADROOM = "no_headroom"  # the cgroup cannot hold two generations
    BUSY = "swap_in_progress"  # a rollback asked for while a swap runs
    NOT_RUNNING = "not_running"  # hotswapd is stopping or restarting
    NO_PREVIOUS = "no_previous"  # rollback with nothing committed before
    # rolled back: a candidate was started and is gone again
    SPAWN = "spawn_failed"  # fork or exec of the candidate failed
    NOTIFY = "notify"  # no READY=1 within --health-timeout
    HEALTH = "health"  # the health probe did not pass
    MEMORY = "memory"  # grew past --max-memory-growth (or could not be measured)
    CANARY = "canary"  # a probe failed during a canary step
    ANALYSIS = "analysis"  # an --analysis rule failed the candidate against the serving one
    SOCKET = "socket_shut_down"  # the candidate shut down its own listening socket
    EXITED = "exited"  # the candidate exited during a gate
    ABORTED = "aborted"  # hotswapd is stopping, or the active generation exited
    TIMEOUT = "timed_out"  # a gate's backstop deadline passed
    INTERNAL = "internal"  # a bug: the swap still ended with an outcome


@dataclass
class SwapOutcome:
    """The one record of a swap; `status` and `/metrics` report it as is."""

    swap_id: int
    trigger: str
    outcome: Outcome = Outcome.PENDING
    reason: str = ""
    code: Code | None = None
    old_generation: int | None = None
    old_pid: int | None = None
    new_generation: int | None = None
    new_pid: int | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    old_rss_bytes: int | None = None
    new_rss_bytes: int | None = None
    # The generation serving once the swap ended: the new one, the old one, or None when
    # neither is alive (shared mode: a candidate can take the one socket down for all).
    serving_generation: int | None = None
    canary_step: int | None = None  # the canary step reached (1-based), None: no canary
    canary_percent: int | None = None  # its weight; None in shared mode (no weights there)
    # --analysis, per rule: the last judged window's values (the rule's unit, None: no
    # value), and the step that judged them
    analysis: dict[str, dict[str, Any]] = field(default_factory=dict)
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


@dataclass(frozen=True)
class ProbationDecided:
    """The probation watch of generation `generation` passed or failed (`reason`)."""

    generation: int
    outcome: str  # passed | failed
    reason: str


@dataclass(frozen=True)
class LivenessProbed:
    """One --liveness probe of the active generation `generation` (outside swaps)."""

    generation: int
    healthy: bool
    detail: str


Event = (
    SignalReceived
    | ChildExited
    | SwapRequested
    | SwapFinished
    | SignalRequested
    | RestartDue
    | StopFinished
    | StopRequested
    | ProbationDecided
    | LivenessProbed
)


@dataclass
class Counters:
    swaps_committed: int = 0
    swaps_rolled_back: int = 0
    swaps_refused: int = 0
    swaps_coalesced: int = 0
    restarts: int = 0
    signals_forwarded: int = 0
    probations: dict[str, int] = field(default_factory=dict)  # by outcome: passed | failed
    liveness: dict[str, int] = field(default_factory=dict)  # "replacements": how many
    rollback_reasons: dict[str, int] = field(default_factory=dict)  # by Code value
    refusal_reasons: dict[str, int] = field(default_factory=dict)  # by Code value
