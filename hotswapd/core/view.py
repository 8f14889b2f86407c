"""What the readers of a running supervisor may see and ask: a typed view, not `Any`.

The control socket, `/health`, the status document and the metrics read the supervisor;
only the supervisor changes it. They get this protocol, so a reader that reaches for a
method that changes state, or for an attribute that does not exist, fails the type check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from hotswapd.boot.config import Config
from hotswapd.core.events import Counters, Event, SwapOutcome
from hotswapd.core.generation import Generation
from hotswapd.core.reaper import Reaper
from hotswapd.core.states import State


class SupervisorView(Protocol):
    """The supervisor as its readers see it (core/supervisor.py is the one implementation)."""

    @property
    def config(self) -> Config: ...
    @property
    def state(self) -> State: ...
    @property
    def active(self) -> Generation: ...
    @property
    def previous(self) -> Generation | None: ...
    @property
    def generations(self) -> dict[int, Generation]: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def last_swap(self) -> SwapOutcome | None: ...
    @property
    def reaper(self) -> Reaper: ...
    @property
    def started_at(self) -> float: ...

    def post(self, event: Event) -> None:
        """Enqueue an event: the one way a reader asks for something."""

    def request_swap(
        self,
        source: str,
        reason: str = "",
        *,
        rollback: bool = False,
        reply: asyncio.Future[SwapOutcome] | None = None,
        on_phase: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        """Queue a swap (or a rollback); the outcome arrives on `reply`."""
