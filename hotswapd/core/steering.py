"""The selector's controller: per steered listener, one socket per generation, one program.

The swap's phases, as the kernel sees them (docs/swap.md has the table):

    active only  → probing        probes (hotswapd's reserved source) to the candidate
                 → canary w%       w% of new connections, SKF_AD_RANDOM, to the candidate
                 → cutover         every new connection to the new generation
                 → handover        the old socket gets nothing; its queue drains; then
                                   the drain signal; once it exited, its socket leaves

Hard rules this module keeps (each a measured failure, tests/test_steer.py):
- a program is attached *before* a socket joins (listen()), naming only members that
  exist, so a newcomer gets nothing until a program names it;
- a socket leaves only through `_leave`: bridge program, shutdown(SHUT_RD) by hotswapd
  itself (the exact moment it leaves), the model updated, the after program;
- a member that left behind hotswapd's back (a child's shutdown) is found by
  SO_ACCEPTCONN before any program is attached and before a probe answer is believed;
- a foreign SO_REUSEPORT socket on the same address sits in the kernel's slots: it is
  modelled as a member that is never routed to, and said once in the log.
"""

from __future__ import annotations

import _socket
import contextlib
import os
from typing import Any

from hotswapd.boot.listeners import BACKLOG, Listener
from hotswapd.steer import bpf, observe
from hotswapd.steer.group import Group, UnsafeLeave
from hotswapd.steer.probe import ProbeSource


class Foreign:
    """A socket in one of our groups that hotswapd did not create: never routed to."""

    __slots__ = ("inode", "uid")

    def __init__(self, inode: int, uid: int) -> None:
        self.inode = inode
        self.uid = uid

    def __repr__(self) -> str:
        return f"Foreign(inode={self.inode}, uid={self.uid})"


class Lane:
    """One steered listener: its group model and each generation's socket in it."""

    def __init__(self, listener: Listener, first: int) -> None:
        self.listener = listener
        self.group = Group()
        self.sockets: dict[int, _socket.socket] = {first: listener.sock}
        self.group.join(listener.sock)
        self.foreign: dict[int, Foreign] = {}
        self.attached = False  # until the first program; an empty group loses it
        self.family = listener.family
        self.address = str(listener.sockname[0])
        self.port = int(listener.sockname[1])

    def probe_host(self) -> str:
        """Where a probe connects: the listener's own address, loopback for a wildcard."""
        if self.address == "0.0.0.0":
            return "127.0.0.1"
        if self.address == "::":  # dual-stack: IPv4 clients are steered too
            return "::1" if self.listener.v6only else "127.0.0.1"
        return self.address

    def own_inodes(self) -> set[int]:
        return {observe.socket_inode(sock) for sock in self.sockets.values()}


class Steering:
    """Where each new connection lands, for every steered listener; one instance per run."""

    def __init__(self, listeners: list[Listener], first: int, log: Any) -> None:
        self.log = log
        self.lanes = [Lane(listener, first) for listener in listeners if listener.steered]
        self.shared = [listener for listener in listeners if not listener.steered]
        self.listeners = listeners
        self.active = first
        self.candidate: int | None = None
        self.probing = False
        self.percent = 0
        self.phase = "active"
        self.source: ProbeSource | None = None
        self._told_foreign: set[int] = set()
        for lane in self.lanes:
            self._find_foreign(lane, every_family=True)
            # Generation 1 alone needs no program (the kernel hashes over one socket), but
            # a foreign socket joining later would get its share: name generation 1 now.
            self._attach(lane)

    @property
    def enabled(self) -> bool:
        return bool(self.lanes)

    # ------------------------------------------------------------ the program

    def _plan(self, lane: Lane) -> bpf.Plan:
        active = lane.sockets[self.active]
        candidate = lane.sockets.get(self.candidate) if self.candidate is not None else None
        if candidate is None:
            return lane.group.plan(active)
        match = self.probe_source().match if self.probing else None
        return lane.group.plan(active, candidate, match, self.percent)

    def _attach(self, lane: Lane, plan: bpf.Plan | None = None) -> None:
        plan = plan or self._plan(lane)
        program = bpf.build(plan)
        # An index past the group's end makes the kernel hash: never let that happen.
        assert max(bpf.results(program)) < len(lane.group), (plan, lane.group)
        # Any member attaches the group's program; it must be one still in the group.
        through = next(m for m in lane.group.members if isinstance(m, _socket.socket))
        bpf.attach(through, program)
        lane.attached = True

    def _apply(self) -> None:
        for lane in self.lanes:
            self.resync(lane)
            self._attach(lane)

    # ------------------------------------------------------------ what the kernel says

    def _find_foreign(self, lane: Lane, every_family: bool = False) -> None:
        """Model foreign members of our group (same address and family); say each once.

        Later looks read only the group's own family (see observe.listening's cost);
        the one at start also finds a socket of the other family on the port.
        """
        ours = lane.own_inodes()
        seen = set()
        family = None if every_family else lane.family
        for entry in observe.foreign_members(lane.port, ours, family):
            if entry.inode not in self._told_foreign:
                self._told_foreign.add(entry.inode)
                self.log.warning(
                    "steering_foreign_member",
                    listener=lane.listener.name,
                    port=lane.port,
                    address=entry.address,
                    inode=entry.inode,
                    uid=entry.uid,
                    note="a socket hotswapd did not create listens on this port; it is never "
                    "steered to, but a same-address SO_REUSEPORT bind shares the group and a "
                    "more specific address takes its connections before the group is asked",
                )
            same = entry.family == lane.family and entry.address == lane.address
            if same:
                seen.add(entry.inode)
                if entry.inode not in lane.foreign:
                    lane.foreign[entry.inode] = Foreign(entry.inode, entry.uid)
                    lane.group.join(lane.foreign[entry.inode])
        for inode in [inode for inode in lane.foreign if inode not in seen]:
            lane.group.leave(lane.foreign.pop(inode))  # it left: the last took its slot

    def resync(self, lane: Lane, foreign: bool = False) -> list[int]:
        """Bring the model in line with the kernel; the generations whose socket left.

        `foreign` also reads the port's listeners from /proc/net/tcp: milliseconds on a
        host with many sockets, so only where slots are about to be named anew (a join,
        a leave), not at every phase change. A foreign socket joins *last*, which moves
        no member of ours; only its leave could, and that is checked at our leaves.
        """
        left = []
        for number, sock in list(lane.sockets.items()):
            if sock in lane.group and not observe.is_listening(sock):
                lane.group.leave(sock)  # a child shut it down: it left, the last moved
                left.append(number)
        if foreign:
            self._find_foreign(lane)
        return left

    def not_listening(self, number: int) -> list[str]:
        """The listeners whose socket of generation `number` has left its group."""
        names = []
        for lane in self.lanes:
            sock = lane.sockets.get(number)
            if sock is not None and (sock not in lane.group or not observe.is_listening(sock)):
                names.append(lane.listener.name)
        return names

    def queued(self, number: int) -> int:
        """Connections waiting in generation `number`'s accept queues."""
        total = 0
        for lane in self.lanes:
            sock = lane.sockets.get(number)
            if sock is not None and sock in lane.group:
                try:
                    total += observe.accept_queue_length(sock)
                except (OSError, ValueError):
                    continue
        return total

    def inodes(self, number: int) -> set[int]:
        return {
            observe.socket_inode(lane.sockets[number])
            for lane in self.lanes
            if number in lane.sockets
        }

    # ------------------------------------------------------------ phases

    def sockets_for(self, number: int) -> tuple[_socket.socket, ...]:
        """Generation `number`'s sockets, one per listener: new members where steered.

        Each new member joins under a program that names only the members already
        there, so it gets no connection until `probe`/`weigh`/`cutover` says so.
        """
        made: list[tuple[Lane, _socket.socket]] = []
        try:
            for lane in self.lanes:
                self.resync(lane, foreign=True)
                self._attach(lane)
                sock = lane.listener.new_member()
                made.append((lane, sock))
                sock.listen(BACKLOG)
                lane.group.join(sock)
                lane.sockets[number] = sock
        except BaseException:
            for lane, sock in made:
                if lane.sockets.get(number) is sock:
                    self._leave(lane, number)
                else:
                    sock.close()
            raise
        by_listener = {id(lane.listener): lane.sockets[number] for lane in self.lanes}
        return tuple(by_listener.get(id(each), each.sock) for each in self.listeners)

    def probe(self, candidate: int) -> None:
        """Probing: hotswapd's own probe connections reach the candidate, nothing else."""
        self.probe_source()  # reserved before the program that recognises it is built
        self.candidate, self.probing, self.percent, self.phase = candidate, True, 0, "probing"
        self._apply()

    def weigh(self, candidate: int, percent: int) -> None:
        """A canary step: `percent` of new connections to the candidate (0: none at once)."""
        self.candidate, self.probing, self.percent = candidate, True, percent
        self.phase = f"canary {percent}%" if percent else "probing"
        self._apply()

    def cutover(self, new: int) -> int:
        """Every new connection to `new`; returns the old active generation."""
        old, self.active = self.active, new
        self.candidate, self.probing, self.percent, self.phase = None, False, 0, "handover"
        self._apply()
        return old

    def withdraw(self, candidate: int) -> None:
        """A rollback: the candidate gets no new connection from now on (weight 0)."""
        if self.candidate == candidate:
            self.candidate, self.probing, self.percent, self.phase = None, False, 0, "active"
            self._apply()

    def handed_over(self) -> None:
        self.phase = "active"

    def release(self, number: int) -> bool:
        """Let generation `number`'s sockets leave (it gets no traffic); False if deferred."""
        done = True
        for lane in self.lanes:
            if number in lane.sockets:
                done = self._leave(lane, number) and done
        return done

    def _leave(self, lane: Lane, number: int) -> bool:
        sock = lane.sockets[number]
        self._say_queue_left(lane, number, sock)
        if sock in lane.group:
            self.resync(lane, foreign=True)
        if sock in lane.group and len(lane.group) == 1:
            _shutdown(sock)
            lane.group.leave(sock)
            lane.attached = False
        elif sock in lane.group:
            active = lane.sockets[self.active]
            candidate = lane.sockets.get(self.candidate) if self.candidate is not None else None
            match = self.source.match if self.probing and self.source is not None else None
            try:
                plans = lane.group.plan_leave(sock, active, candidate, match, self.percent)
            except UnsafeLeave as exc:
                self.log.warning(
                    "steering_leave_deferred",
                    listener=lane.listener.name,
                    generation=number,
                    reason=str(exc),
                )
                return False
            if len(lane.group) > 1:
                self._attach(lane, plans.bridge)
            _shutdown(sock)  # the exact moment it leaves, whoever else still holds it
            lane.group.leave(sock)
            if len(lane.group) > 0:
                self._attach(lane, plans.after)
            else:
                lane.attached = False
        del lane.sockets[number]
        sock.close()
        return True

    def _say_queue_left(self, lane: Lane, number: int, sock: _socket.socket) -> None:
        """Connections still queued when a socket leaves are reset, unless the kernel
        moves them (net.ipv4.tcp_migrate_req=1): the handover makes this the exception
        (a generation that exited without accepting what it had queued)."""
        try:
            left = observe.accept_queue_length(sock) if sock in lane.group else 0
        except (OSError, ValueError):
            return
        if left:
            migrate = observe.queue_migration()
            self.log.warning(
                "steering_queue_left",
                listener=lane.listener.name,
                generation=number,
                queued=left,
                migrated=migrate,
                fix=None
                if migrate
                else "sysctl net.ipv4.tcp_migrate_req=1 "
                "(per network namespace) makes the kernel hand them on",
            )

    def restore(self, number: int) -> list[str]:
        """listen() again on generation `number`'s sockets that a child shut down (restart)."""
        repaired = []
        for lane in self.lanes:
            sock = lane.sockets.get(number)
            if sock is None or (sock in lane.group and observe.is_listening(sock)):
                continue
            self.resync(lane)
            ours = [m for m in lane.group.members if isinstance(m, _socket.socket)]
            if ours:  # rejoining last: keep every connection on a member that is there
                self._attach(lane, bpf.Plan(lane.group.index_of(ours[0])))
            else:
                lane.attached = False  # an empty group is gone, and its program with it
            sock.listen(BACKLOG)
            lane.group.join(sock)
            if self.active in lane.sockets and lane.sockets[self.active] in lane.group:
                self._attach(lane)
            repaired.append(lane.listener.name)
        return repaired

    def adopt(self, old: int, new: int) -> None:
        """A restart: generation `new` takes over generation `old`'s sockets, queue and all."""
        for lane in self.lanes:
            if old in lane.sockets:
                lane.sockets[new] = lane.sockets.pop(old)
        if self.active == old:
            self.active = new

    # ------------------------------------------------------------ probes

    def probe_source(self) -> ProbeSource:
        if self.source is None:
            self.source = ProbeSource()
        return self.source

    def probe_target(self) -> tuple[str, int] | None:
        """The public address a health probe connects to (the first steered listener)."""
        if not self.lanes:
            return None
        lane = self.lanes[0]
        return lane.probe_host(), lane.port

    # ------------------------------------------------------------ status

    def status(self) -> list[dict[str, Any]]:
        """Per listener: its mode and why, the phase, the candidate's weight, the members."""
        out: list[dict[str, Any]] = []
        for lane in self.lanes:
            members = []
            for number, sock in sorted(lane.sockets.items()):
                inside = sock in lane.group
                members.append(
                    {
                        "generation": number,
                        "inode": observe.socket_inode(sock),
                        "slot": lane.group.index_of(sock) if inside else None,
                        "listening": inside and observe.is_listening(sock),
                        "queued": self.queued(number) if inside else 0,
                    }
                )
            out.append(
                {
                    "name": lane.listener.name,
                    "address": lane.listener.address(),
                    "mode": "steered",
                    "why": lane.listener.why,
                    "phase": self.phase,
                    "active_generation": self.active,
                    "candidate_generation": self.candidate,
                    "candidate_percent": self.percent if self.candidate is not None else 0,
                    "members": members,
                    "foreign_inodes": sorted(lane.foreign),
                }
            )
        for listener in self.shared:
            out.append(
                {
                    "name": listener.name,
                    "address": listener.address(),
                    "mode": "shared",
                    "why": listener.why,
                    "phase": "shared",
                }
            )
        return out

    def relisten_shared(self) -> list[str]:
        """listen() again on every shared socket a child shut down; their names."""
        from hotswapd.boot.listeners import relisten

        return [listener.name for listener in self.shared if relisten(listener.sock)]

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def _shutdown(sock: _socket.socket) -> None:
    with contextlib.suppress(OSError):  # already shut down: it has left either way
        sock.shutdown(_socket.SHUT_RD)


def holders(inodes: set[int]) -> set[int]:
    """Pids (other than hotswapd) that hold any of these sockets: a generation's tree,
    including a daemon that left its session but kept the socket."""
    if not inodes:
        return set()
    links = {f"socket:[{inode}]" for inode in inodes}
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in links:
                    found.add(int(entry))
                    break
            except OSError:
                continue
    return found


def children_of(parent: int) -> dict[int, str]:
    """The live (not zombie) children of `parent`, pid → command name, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        name, _, rest = stat.rpartition(b")")
        fields = rest.split()
        if len(fields) > 1 and fields[0] != b"Z" and int(fields[1]) == parent:
            found[int(entry)] = name.partition(b"(")[2].decode("utf-8", "replace")
    return found
