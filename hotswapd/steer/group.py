"""The slot order of one SO_REUSEPORT group, as the kernel keeps it, and safe leaves.

The kernel numbers a group's sockets in the order they joined (for TCP: called
listen()). When one leaves (its last fd is closed, or anyone holding it calls
shutdown(SHUT_RD)), the *last* socket moves into its slot. A program names slots, so
every leave changes what some index means, and the program cannot be swapped in the
same instant as the leave. Two programs bracket it instead (`plan_leave`):

    bridge = group.plan_leave(old, active=new).bridge   # right before and after the leave
    attach(bridge); old_sock.shutdown(SHUT_RD); old_sock.close(); group.leave(old)
    attach(group.plan(active=new))                      # the clean program

The bridge names, for every socket that gets traffic, an index that means that
socket both before and after the leave. That exists when the leaving socket is the
last one, when the last one gets no traffic, or when one socket remains (an index
past the end then falls back to the kernel's hash over that single socket).
Otherwise `UnsafeLeave`: attaching the after-leave program first would send that
traffic to the leaving socket until it is gone, where it is reset.

A join needs no bracket: the program in place names only existing slots, so the
newcomer (appended last) gets nothing until a new program names it.

Members are any objects, compared by identity; a foreign socket that joined the
group can be modelled as a member that is never routed to.
"""

from __future__ import annotations

from hotswapd.steer.bpf import Plan

TYPE_CHECKING = False  # see bpf.py
if TYPE_CHECKING:
    from hotswapd.steer.bpf import ProbeMatch


class UnsafeLeave(Exception):
    """No program keeps every connection on its socket across this leave."""


class LeavePlan:
    """The two programs around one leave: `bridge` before it, `after` once it happened."""

    __slots__ = ("bridge", "after")

    def __init__(self, bridge: Plan, after: Plan) -> None:
        self.bridge = bridge
        self.after = after

    def __repr__(self) -> str:
        return f"LeavePlan(bridge={self.bridge!r}, after={self.after!r})"


class Group:
    """Members in kernel slot order, plus their join order (what /proc/net/tcp shows)."""

    __slots__ = ("_slots", "_joined")

    def __init__(self) -> None:
        self._slots: list[object] = []
        self._joined: list[object] = []

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, member: object) -> bool:
        return any(m is member for m in self._slots)

    def __repr__(self) -> str:
        return f"Group({self._slots!r})"

    @property
    def members(self) -> tuple[object, ...]:
        """The members by slot: `members[i]` gets what a program's index i gets."""
        return tuple(self._slots)

    @property
    def joined(self) -> tuple[object, ...]:
        """The members oldest join first; a leave does not reorder them."""
        return tuple(self._joined)

    def index_of(self, member: object) -> int:
        for index, m in enumerate(self._slots):
            if m is member:
                return index
        raise ValueError(f"{member!r} is not a member of the group")

    def join(self, member: object) -> int:
        """Record that `member` joined (right after its listen()); returns its slot."""
        if member in self:
            raise ValueError(f"{member!r} is already a member of the group")
        self._slots.append(member)
        self._joined.append(member)
        return len(self._slots) - 1

    def leave(self, member: object) -> int:
        """Record that `member` left; the last member takes its slot. Returns that slot."""
        index = self.index_of(member)
        last = self._slots.pop()
        if index < len(self._slots):
            self._slots[index] = last
        self._joined = [m for m in self._joined if m is not member]
        return index

    def plan(
        self,
        active: object,
        candidate: object | None = None,
        probe: ProbeMatch | None = None,
        percent: int = 0,
    ) -> Plan:
        """The program's plan for the current slots, from the members that get traffic."""
        return _plan(self._slots, active, candidate, probe, percent)

    def plan_leave(
        self,
        leaving: object,
        active: object,
        candidate: object | None = None,
        probe: ProbeMatch | None = None,
        percent: int = 0,
    ) -> LeavePlan:
        """The bridge and after-leave programs for `leaving` to go while the rest is served."""
        if leaving is active or leaving is candidate:
            raise ValueError(f"{leaving!r} cannot leave while connections are sent to it")
        index, last = self.index_of(leaving), len(self._slots) - 1
        after_slots = list(self._slots)
        moved = after_slots.pop()
        if index < last:
            after_slots[index] = moved
        after = _plan(after_slots, active, candidate, probe, percent)
        served = (active,) if candidate is None else (active, candidate)
        if index == last or not any(m is moved for m in served):
            return LeavePlan(after, after)  # nobody served changes slot
        if last == 1:
            # `moved` is the only one left: its old index (1) means it before the leave,
            # and after it 1 is past the end, so the kernel's hash picks the only socket.
            return LeavePlan(self.plan(active, candidate, probe, percent), after)
        raise UnsafeLeave(
            f"{leaving!r} leaving slot {index} moves {moved!r}, which gets connections, from slot "
            f"{last}; stop sending it connections first, or let {leaving!r} leave later"
        )


def _plan(
    slots: list[object],
    active: object,
    candidate: object | None,
    probe: ProbeMatch | None,
    percent: int,
) -> Plan:
    def index(member: object) -> int:
        for i, m in enumerate(slots):
            if m is member:
                return i
        raise ValueError(f"{member!r} is not a member of the group")

    return Plan(index(active), None if candidate is None else index(candidate), probe, percent)
