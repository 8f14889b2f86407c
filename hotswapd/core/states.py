"""States of the supervisor and of each generation. No imports, no behaviour.

Supervisor:   STARTING → RUNNING ⇄ SWAPPING
              RUNNING → RESTARTING → RUNNING            (--on-exit restart)
              any → STOPPING → STOPPED

Generation:   CANDIDATE → ACTIVE → DRAINING → EXITED    (a committed swap)
              CANDIDATE → ROLLED_BACK → EXITED          (a failed gate)
              ACTIVE → STOPPING → EXITED                (hotswapd stops)
"""

import enum


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    SWAPPING = "swapping"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


class GenState(enum.Enum):
    CANDIDATE = "candidate"
    ACTIVE = "active"
    DRAINING = "draining"
    ROLLED_BACK = "rolled_back"
    STOPPING = "stopping"
    EXITED = "exited"


# Allowed supervisor transitions; the supervisor refuses any other.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.RUNNING, State.STOPPING}),
    State.RUNNING: frozenset({State.SWAPPING, State.RESTARTING, State.STOPPING}),
    State.SWAPPING: frozenset({State.RUNNING, State.STOPPING}),
    State.RESTARTING: frozenset({State.RUNNING, State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}
