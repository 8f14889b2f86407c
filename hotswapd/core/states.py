"""States of the supervisor and of each generation. No imports, no behaviour.

Supervisor:   STARTING → RUNNING ⇄ SWAPPING
              RUNNING → RESTARTING → RUNNING            (--on-exit restart)
              any → STOPPING → STOPPED

Generation:   CANDIDATE → ACTIVE → DRAINING → EXITED    (a committed swap)
              CANDIDATE → ROLLED_BACK → EXITED          (a failed gate)
              ACTIVE → STOPPING → EXITED                (hotswapd stops)

Three facts look like sub-states but are kept as data, on purpose:
- a queued follow-up swap (`Supervisor.follow_up`) is a request waiting its turn, not a
  mode: while SWAPPING, any request is either coalesced into it or refused;
- a restart due during a swap (`Supervisor.restart_pending`) must not end SWAPPING: the
  transaction still owns its candidate and rolls it back or commits it; the restart runs
  when its timer fires (RESTARTING when no swap runs, else inside SWAPPING);
- whether a swap has committed (`SwapTransaction.committed`) is the transaction's own
  phase: after it, the old generation drains and nothing can roll the swap back.
Each is covered by an in-process test of the state machine (tests/test_supervisor.py).
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
