"""hotswapd.steer: where the kernel lands each new connection under hotswapd's programs.

Real sockets on loopback: a group's members are SO_REUSEPORT listeners on one port
(the first binds port 0, the others that port), and every test accepts on the members
and asserts which one got each connection.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from hotswapd.steer import bpf, observe
from hotswapd.steer.bpf import Plan, ProbeMatch, SteerError, attach, build
from hotswapd.steer.group import Group, UnsafeLeave
from hotswapd.steer.probe import ProbeSource
from tests.helpers import REPO, wait_until

DEADLINE = 5.0  # for one connection to be accepted somewhere
BACKLOG = 1024


class Listeners:
    """SO_REUSEPORT listeners on one address and port, in the order they joined."""

    def __init__(self, family: int, host: str) -> None:
        self.family, self.host, self.port = family, host, 0
        self.socks: list[socket.socket] = []

    def add(self) -> socket.socket:
        """A new member: bound to the group's port (port 0 for the first) and listening."""
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if self.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(self.host != "::"))
        sock.bind((self.host, self.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.socks.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@pytest.fixture
def listeners() -> Iterator[Callable[..., Listeners]]:
    """Make groups of n listeners on a loopback address; all are closed at teardown."""
    made: list[Listeners] = []

    def make(n: int, family: int = socket.AF_INET, host: str = "127.0.0.1") -> Listeners:
        group = Listeners(family, host)
        made.append(group)
        for _ in range(n):
            group.add()
        return group

    yield make
    for group in made:
        group.close()


@pytest.fixture
def source() -> Iterator[ProbeSource]:
    """A reserved probe source, released at teardown."""
    reserved = ProbeSource()
    yield reserved
    reserved.close()


def connect(host: str, port: int, source: tuple[str, int] | None = None) -> socket.socket:
    """A blocking client connection, optionally from a given source address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(DEADLINE)
    if source is not None:
        client.bind(source)
    client.connect((host, port))
    return client


def probe(source: ProbeSource, host: str, port: int) -> socket.socket:
    """A blocking client connection from the reserved probe source."""
    client = source.bound_socket(host)
    client.settimeout(DEADLINE)
    client.connect((host, port))
    return client


def _plain(address: tuple[str, int]) -> tuple[str, int]:
    host = address[0].removeprefix("::ffff:")  # an IPv4 client of a dual-stack socket
    return host, address[1]


def landing(members: Sequence[socket.socket], client: socket.socket) -> int:
    """The index in `members` of the socket that accepted `client` (closed both)."""
    want = _plain(client.getsockname())
    deadline = time.monotonic() + DEADLINE
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(members, [], [], remaining)
            for sock in readable:
                conn, peer = sock.accept()
                conn.close()
                assert _plain(peer) == want, f"{sock} accepted {peer}, not the client {want}"
                return list(members).index(sock)
        raise AssertionError(f"no member accepted the connection from {want} in {DEADLINE}s")
    finally:
        client.close()


def tally(members: Sequence[socket.socket], make: Callable[[], socket.socket], n: int) -> list[int]:
    """How many of n connections each member accepted."""
    counts = [0] * len(members)
    for _ in range(n):
        counts[landing(members, make())] += 1
    return counts


def slot_map(group: Listeners, attach_via: socket.socket) -> list[int]:
    """The kernel's slot order: for each index i, which of group.socks a `ret #i` reaches."""
    listening = [s for s in group.socks if observe.is_listening(s)]
    order = []
    for index in range(len(listening)):
        attach(attach_via, build(Plan(active=index)))
        client = connect("::1" if group.host == "::1" else "127.0.0.1", group.port)
        order.append(group.socks.index(listening[landing(listening, client)]))
    return order


# --------------------------------------------------------------------------- the programs


def test_active_only_plan_sends_every_connection_to_the_active_socket(
    listeners: Callable[..., Listeners],
) -> None:
    """With no candidate, all connections land on the active index, none elsewhere."""
    group = listeners(3)
    attach(group.socks[0], build(Plan(active=1)))
    counts = tally(group.socks, lambda: connect("127.0.0.1", group.port), 50)
    assert counts == [0, 50, 0]


@pytest.mark.parametrize(
    ("family", "bind_host", "client_host"),
    [
        (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
        (socket.AF_INET6, "::1", "::1"),
        (socket.AF_INET6, "::", "127.0.0.1"),  # IPv4 client, dual-stack socket: IPv4 header
        (socket.AF_INET6, "::", "::1"),
    ],
    ids=["ipv4", "ipv6-loopback", "dual-stack-ipv4-client", "dual-stack-ipv6-client"],
)
def test_probe_connections_land_on_the_candidate_and_nothing_else_does(
    listeners: Callable[..., Listeners],
    source: ProbeSource,
    family: int,
    bind_host: str,
    client_host: str,
) -> None:
    """Probes from the reserved source reach the candidate; ordinary clients the active."""
    group = listeners(2, family, bind_host)
    attach(group.socks[0], build(Plan(active=0, candidate=1, probe=source.match)))
    probes = tally(group.socks, lambda: probe(source, client_host, group.port), 20)
    ordinary = tally(group.socks, lambda: connect(client_host, group.port), 40)
    assert probes == [0, 20]
    assert ordinary == [40, 0]
    if ":" not in client_host:  # another loopback source is still not a probe
        other = tally(group.socks, lambda: connect(client_host, group.port, ("127.0.0.2", 0)), 10)
        assert other == [10, 0]


def test_ipv6_port_alone_is_not_a_probe(
    listeners: Callable[..., Listeners], source: ProbeSource
) -> None:
    """A ::1 client on any port but the reserved ones goes to the active socket."""
    group = listeners(2, socket.AF_INET6, "::1")
    only = ProbeMatch(None, "::1", source.ports[:1])  # the first reserved port only
    attach(group.socks[0], build(Plan(active=0, candidate=1, probe=only)))
    first_port = tally(group.socks, lambda: probe(source, "::1", group.port), 8)
    assert first_port == [6, 2]  # 8 probes take the 4 reserved ports in turn


def test_random_share_sends_about_its_percent_to_the_candidate(
    listeners: Callable[..., Listeners],
) -> None:
    """candidate_percent=20 gives the candidate 20% ± 5 of 1000 connections."""
    group = listeners(2)
    attach(group.socks[0], build(Plan(active=0, candidate=1, candidate_percent=20)))
    counts = tally(group.socks, lambda: connect("127.0.0.1", group.port), 1000)
    assert sum(counts) == 1000
    assert 150 <= counts[1] <= 250, counts


@pytest.mark.parametrize(("percent", "expected"), [(0, [200, 0]), (100, [0, 200])])
def test_no_share_and_cutover_are_exact(
    listeners: Callable[..., Listeners], source: ProbeSource, percent: int, expected: list[int]
) -> None:
    """0% sends nothing but probes to the candidate; 100% (cutover) sends everything."""
    group = listeners(2)
    plan = Plan(active=0, candidate=1, probe=source.match, candidate_percent=percent)
    attach(group.socks[0], build(plan))
    assert tally(group.socks, lambda: connect("127.0.0.1", group.port), 200) == expected
    assert tally(group.socks, lambda: probe(source, "127.0.0.1", group.port), 5) == [0, 5]


def test_the_skb_data_of_a_syn_starts_after_the_tcp_header(
    listeners: Callable[..., Listeners],
) -> None:
    """The kernel pulls the TCP header first: len is 0, and a failed load returns index 0."""
    group = listeners(3)
    length_plus_one = [(bpf.BPF_LD | bpf.BPF_W | bpf.BPF_LEN, 0, 0, 0),
                       (bpf.BPF_ALU | bpf.BPF_ADD | bpf.BPF_K, 0, 0, 1),
                       (bpf.BPF_RET | bpf.BPF_A, 0, 0, 0)]  # fmt: skip
    attach(group.socks[0], length_plus_one)
    assert tally(group.socks, lambda: connect("127.0.0.1", group.port), 10) == [0, 10, 0]
    port_at_zero_plus_two = [(bpf.BPF_LD | bpf.BPF_H | bpf.BPF_ABS, 0, 0, 0),
                             (bpf.BPF_ALU | bpf.BPF_ADD | bpf.BPF_K, 0, 0, 2),
                             (bpf.BPF_RET | bpf.BPF_A, 0, 0, 0)]  # fmt: skip
    attach(group.socks[0], port_at_zero_plus_two)
    assert tally(group.socks, lambda: connect("127.0.0.1", group.port), 10) == [10, 0, 0]


def test_source_ports_read_through_the_network_header(
    listeners: Callable[..., Listeners], source: ProbeSource
) -> None:
    """`sport % 2` read at SKF_NET_OFF + 40 sends even and odd reserved ports apart."""
    group = listeners(2, socket.AF_INET6, "::1")
    sport_mod_2 = [(bpf.BPF_LD | bpf.BPF_H | bpf.BPF_ABS, 0, 0, bpf.SKF_NET_OFF + 40 & 0xFFFFFFFF),
                   (bpf.BPF_ALU | bpf.BPF_MOD | bpf.BPF_K, 0, 0, 2),
                   (bpf.BPF_RET | bpf.BPF_A, 0, 0, 0)]  # fmt: skip
    attach(group.socks[0], sport_mod_2)
    for _ in range(len(source.ports)):
        client = probe(source, "::1", group.port)
        port = client.getsockname()[1]
        assert landing(group.socks, client) == port % 2


def test_an_index_past_the_group_falls_back_to_the_kernel_hash(
    listeners: Callable[..., Listeners],
) -> None:
    """`ret #3` in a group of 2 still lands every connection somewhere: the hash decides."""
    group = listeners(2)
    attach(group.socks[0], [(bpf.BPF_RET | bpf.BPF_K, 0, 0, 3)])
    counts = tally(group.socks, lambda: connect("127.0.0.1", group.port), 60)
    assert sum(counts) == 60
    assert min(counts) > 0, counts


def test_built_programs_only_return_indices_of_the_plan() -> None:
    """Every index a built program can return is one its plan names (all < group size)."""
    match = ProbeMatch("127.9.9.9", "::1", (40001, 40002, 40003))
    for size in range(1, 5):
        for active, candidate, probe_match, percent in itertools.product(
            range(size), [None, *range(size)], [None, match], [0, 1, 20, 99, 100]
        ):
            if candidate is None and (probe_match or percent):
                continue
            plan = Plan(active, candidate, probe_match, percent)
            produced = bpf.results(build(plan))
            assert produced <= plan.indices() | {0}
            assert max(produced) < size


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Plan(active=-1), "not in 0..65535"),
        (lambda: Plan(active=0x10000), "not in 0..65535"),
        (lambda: Plan(active=0, candidate=1, candidate_percent=101), "not in 0..100"),
        (lambda: Plan(active=0, candidate_percent=5), "need a candidate"),
        (lambda: ProbeMatch("10.0.0.1"), "not in 127.0.0.0/8"),
        (lambda: ProbeMatch(None, "fd00::1", (4000,)), "is not ::1"),
        (lambda: ProbeMatch(None, "::1"), "needs reserved source ports"),
    ],
)
def test_plans_refuse_what_no_program_should_say(make: Callable[[], object], match: str) -> None:
    """Out-of-range indices and shares, a share without a candidate, a non-loopback probe."""
    with pytest.raises(ValueError, match=match):
        make()


def test_kernel_accepts_the_program_and_refusals_are_one_line(
    listeners: Callable[..., Listeners],
) -> None:
    """This kernel steers; a socket without SO_REUSEPORT or a unix socket gets a reason."""
    assert bpf.kernel_accepts() is None
    assert bpf.kernel_accepts(listeners(1).socks[0]) is None
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    with plain, pytest.raises(SteerError) as refused:
        attach(plain, build(Plan(active=0)))
    assert refused.value.errno == errno.EINVAL
    assert "SO_REUSEPORT" in str(refused.value)
    with socket.socket(socket.AF_UNIX) as unix:
        reason = bpf.kernel_accepts(unix)
    assert reason
    assert "\n" not in reason


def test_detach_returns_the_group_to_hashing(listeners: Callable[..., Listeners]) -> None:
    """After detach the kernel spreads connections again; a second detach says there was none."""
    group = listeners(2)
    attach(group.socks[0], build(Plan(active=0)))
    assert bpf.detach(group.socks[1]) is True
    assert bpf.detach(group.socks[1]) is False
    counts = tally(group.socks, lambda: connect("127.0.0.1", group.port), 60)
    assert min(counts) > 0, counts


# --------------------------------------------------------------------------- the group model


def test_group_model_moves_the_last_member_into_a_leavers_slot() -> None:
    """join appends; leave puts the last member in the leaver's slot; join order is kept."""
    a, b, c, d = "a", "b", "c", "d"
    group = Group()
    assert [group.join(m) for m in (a, b, c, d)] == [0, 1, 2, 3]
    assert group.leave(b) == 1
    assert group.members == (a, d, c)
    assert group.joined == (a, c, d)
    assert group.leave(c) == 2  # the last one: nothing moves
    assert list(group.members) == [a, d]
    group.join(b)
    assert group.index_of(b) == 2
    assert len(group) == 3
    assert b in group
    with pytest.raises(ValueError, match="already"):
        group.join(b)
    with pytest.raises(ValueError, match="not a member"):
        group.index_of(c)


def _means(slots: Sequence[object], index: int, member: object) -> bool:
    """Does the kernel send index `index` of a group in `slots` order to `member`?"""
    if index < len(slots):
        return slots[index] is member
    return len(slots) == 1 and slots[0] is member  # the hash over one socket


def test_leave_bridges_keep_every_served_member_on_its_index_or_are_refused() -> None:
    """For every small group and route, the bridge is valid before and after, or UnsafeLeave."""
    for size in range(2, 6):
        members = [f"m{i}" for i in range(size)]
        for leaving, active, candidate in itertools.product(members, members, [None, *members]):
            if leaving in (active, candidate):
                continue
            group = Group()
            for member in members:
                group.join(member)
            served = [m for m in (active, candidate) if m is not None]
            after = Group()
            for member in members:
                after.join(member)
            after.leave(leaving)
            try:
                steps = group.plan_leave(leaving, active, candidate)
            except UnsafeLeave:
                last = members[-1]
                assert leaving is not last
                assert last in served
                assert size > 2
                continue
            bridge_indices = [steps.bridge.active, steps.bridge.candidate][: len(served)]
            for member, index in zip(served, bridge_indices, strict=True):
                assert index is not None
                assert _means(members, index, member), (members, leaving, member, index)
                assert _means(after.members, index, member), (members, leaving, member, index)
            assert steps.after == after.plan(active, candidate)


def test_group_model_matches_the_kernels_slots(listeners: Callable[..., Listeners]) -> None:
    """Join order, a middle leave, a last leave and a shutdown+listen rejoin, on a real group."""
    group = listeners(4)
    a, b, c, d = group.socks
    model = Group()
    for sock in group.socks:
        model.join(sock)

    def kernel_slots() -> list[socket.socket]:
        return [group.socks[i] for i in slot_map(group, a)]  # `a` never leaves

    def kernel_joins() -> list[int]:
        return observe.join_order(group.port, socket.AF_INET, "127.0.0.1")

    def inodes(members: Sequence[object]) -> list[int]:
        return [observe.socket_inode(s) for m in members for s in group.socks if s is m]

    assert kernel_slots() == list(model.members) == [a, b, c, d]
    assert kernel_joins() == inodes(model.joined)
    b.shutdown(socket.SHUT_RD)  # how any holder makes it leave, queue and all
    assert not observe.is_listening(b)
    model.leave(b)
    assert kernel_slots() == list(model.members) == [a, d, c]
    d.shutdown(socket.SHUT_RD)
    model.leave(d)
    assert kernel_slots() == list(model.members) == [a, c]
    b.listen(BACKLOG)  # bound to an explicit port, it keeps it and rejoins last
    model.join(b)
    assert kernel_slots() == list(model.members) == [a, c, b]
    assert kernel_joins() == inodes(model.joined) == inodes([a, c, b])


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")]
)
def test_join_order_reads_the_kernels_order_for_both_families(
    listeners: Callable[..., Listeners], family: int, host: str
) -> None:
    """/proc lists IPv4 members newest first and IPv6 ones oldest first; join_order undoes it."""
    group = listeners(3, family, host)
    group.socks[1].shutdown(socket.SHUT_RD)
    group.socks[1].listen(BACKLOG)  # rejoins as the newest
    expected = [observe.socket_inode(group.socks[i]) for i in (0, 2, 1)]
    assert observe.join_order(group.port, family, host) == expected


def test_naive_order_sends_connections_to_the_leaving_socket(
    listeners: Callable[..., Listeners],
) -> None:
    """The after-leave program attached before the leave routes to the leaver: why bridges exist."""
    group = listeners(2)
    old, new = group.socks
    model = Group()
    model.join(old)
    model.join(new)
    attach(old, build(model.plan(active=new)))
    steps = model.plan_leave(old, active=new)
    assert steps.bridge == Plan(active=1)
    assert steps.after == Plan(active=0)
    attach(old, build(steps.after))  # too early: slot 0 is still `old`
    caught = connect("127.0.0.1", group.port)
    wait_until(lambda: observe.accept_queue_length(old) == 1, DEADLINE, "the connection on old")
    old.shutdown(socket.SHUT_RD)
    with pytest.raises(ConnectionResetError):
        caught.recv(1)
    caught.close()


def test_leaves_under_load_never_lose_a_connection(listeners: Callable[..., Listeners]) -> None:
    """20 cutovers and bridged leaves under client load: each lands on the active, none reset."""
    group = listeners(1)
    model = Group()
    model.join(group.socks[0])
    attach(group.socks[0], build(model.plan(active=group.socks[0])))
    lock = threading.Lock()
    members = [group.socks[0]]  # what the acceptor accepts on; members[-1] is the active one
    accepted: list[tuple[socket.socket, socket.socket]] = []  # (accepted on, active then)
    clients: list[socket.socket] = []
    go, paused, stop = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def accept_loop() -> None:
        while not stop.is_set():
            with lock:
                watched = list(members)
            readable, _, _ = select.select(watched, [], [], 0.05)
            for sock in readable:
                with lock:
                    if sock not in members:
                        continue  # it left while select ran
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        continue
                    accepted.append((sock, members[-1]))
                conn.close()

    def load() -> None:
        try:
            while not stop.is_set():
                if not go.is_set():
                    paused.set()
                    go.wait()
                    paused.clear()
                    continue
                client = connect("127.0.0.1", group.port)
                with lock:
                    clients.append(client)
        except BaseException as exc:  # noqa: BLE001 -- the main thread reports it
            errors.append(exc)
            paused.set()

    def settle() -> None:
        """Pause the clients, see each one accepted and closed by us (never reset)."""
        go.clear()
        wait_until(lambda: paused.is_set() and len(accepted) == len(clients), DEADLINE,
                   lambda: f"{len(accepted)} of {len(clients)} connections accepted")  # fmt: skip
        for client in clients:
            assert client.recv(1) == b""  # our close; a reset raises here
            client.close()
        total[0] += len(clients)
        clients.clear()
        assert all(member is active for member, active in accepted)
        accepted.clear()

    def running(more: int) -> None:
        with lock:
            target = len(clients) + more
        wait_until(lambda: len(clients) >= target or errors, DEADLINE, "the clients connecting")

    total = [0]
    threads = [threading.Thread(target=accept_loop), threading.Thread(target=load)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(20):
            settle()  # a cutover is safe once the old queue is empty (the handover's job)
            old, new = members[-1], group.add()
            model.join(new)
            with lock:
                members.append(new)
            attach(old, build(model.plan(active=new)))  # cutover
            go.set()
            running(20)
            steps = model.plan_leave(old, active=new)
            attach(new, build(steps.bridge))
            with lock:
                members.remove(old)
            old.shutdown(socket.SHUT_RD)  # the leave, while clients keep connecting
            model.leave(old)
            attach(new, build(steps.after))
            running(20)
        settle()
    finally:
        stop.set()
        go.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert total[0] >= 800


# --------------------------------------------------------------------------- foreign members

FOREIGN = """
import os, socket, sys
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(64)
print("ready", os.fstat(sock.fileno()).st_ino, flush=True)
while True:
    conn, peer = sock.accept()
    print("accepted", peer[1], flush=True)
    conn.close()
"""


def read_line(child: subprocess.Popen[bytes], timeout: float = DEADLINE) -> str:
    """One line of the child's unbuffered stdout, within a deadline."""
    assert child.stdout is not None
    fd, line = child.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"no line from the foreign process in {timeout}s (got {line!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"the foreign process closed its output (got {line!r})")
        line += chunk
    return line.decode()


@pytest.fixture
def foreign() -> Iterator[Callable[[int], tuple[subprocess.Popen[bytes], int]]]:
    """Start another process of our uid that joins a port's group; killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> tuple[subprocess.Popen[bytes], int]:
        child = subprocess.Popen([sys.executable, "-c", FOREIGN, str(port)], cwd=REPO,
                                 stdout=subprocess.PIPE, bufsize=0)  # fmt: skip
        started.append(child)
        word, inode = read_line(child).split()
        assert word == "ready"
        return child, int(inode)

    yield start
    for child in started:
        child.kill()  # our own Popen child: its pid is verified by construction
        child.wait()


def test_a_foreign_member_shifts_slots_and_is_detected(
    listeners: Callable[..., Listeners],
    foreign: Callable[[int], tuple[subprocess.Popen[bytes], int]],
) -> None:
    """A same-uid SO_REUSEPORT bind joins last; foreign_members finds it; modelled, it gets none."""
    group = listeners(2)
    old, new = group.socks
    own = {observe.socket_inode(s) for s in group.socks}
    assert observe.foreign_members(group.port, own) == []
    child, inode = foreign(group.port)
    found = observe.foreign_members(group.port, own)
    assert [(f.inode, f.address, f.uid) for f in found] == [(inode, "127.0.0.1", os.getuid())]

    # What happens when the stranger is not in the model: after `old` leaves, the
    # stranger holds slot 0, and the "clean" program sends everything to it.
    naive = Group()
    naive.join(old)
    naive.join(new)
    attach(new, build(naive.plan(active=new)))
    assert tally([old, new], lambda: connect("127.0.0.1", group.port), 10) == [0, 10]
    model = Group()  # the model with the stranger where the kernel put it: last
    for member in (old, new, inode):
        model.join(member)
    steps, wrong = model.plan_leave(old, active=new), naive.plan_leave(old, active=new)
    attach(new, build(steps.bridge))
    old.shutdown(socket.SHUT_RD)
    model.leave(old)
    naive.leave(old)
    assert model.index_of(inode) == 0
    assert model.index_of(new) == 1
    attach(new, build(steps.after))
    assert tally([new], lambda: connect("127.0.0.1", group.port), 20) == [20]

    attach(new, build(wrong.after))  # the naive model's idea of slot 0
    client = connect("127.0.0.1", group.port)
    assert read_line(child).split() == ["accepted", str(client.getsockname()[1])]
    client.close()


def test_listeners_are_listed_before_other_sockets(listeners: Callable[..., Listeners]) -> None:
    """observe.listening stops at the first non-listener: /proc must list listeners first."""
    group = listeners(1)
    client = connect("127.0.0.1", group.port)
    conn, _ = group.socks[0].accept()
    with client, conn, open("/proc/net/tcp") as table:
        states = [int(line.split()[3], 16) for line in list(table)[1:]]
    first_other = next(i for i, s in enumerate(states) if s != observe.TCP_LISTEN)
    assert observe.TCP_LISTEN not in states[first_other:]
    assert [e.inode for e in observe.listening(group.port)] == [
        observe.socket_inode(group.socks[0])
    ]


# --------------------------------------------------------------------------- queues and probes


def test_accept_queue_length_counts_connections_waiting_for_accept(
    listeners: Callable[..., Listeners],
) -> None:
    """TCP_INFO of a listener gives its accept queue; a non-listener is refused."""
    sock = listeners(1).socks[0]
    assert observe.accept_queue_length(sock) == 0
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert observe.accept_backlog(sock) == min(BACKLOG, somaxconn)
    clients = [connect("127.0.0.1", sock.getsockname()[1]) for _ in range(3)]
    wait_until(lambda: observe.accept_queue_length(sock) == 3, DEADLINE, "3 queued")
    conn, _ = sock.accept()
    assert observe.accept_queue_length(sock) == 2
    with pytest.raises(ValueError, match="not a listening socket"):
        observe.accept_queue_length(conn)
    conn.close()
    for client in clients:
        client.close()


MIGRATION = """
import json, socket, subprocess, sys, time
from hotswapd.steer import observe
from hotswapd.steer.bpf import Plan, attach, build

def wait(predicate):
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as setting:
    setting.write(sys.argv[1])
members = []
for port in (0, None):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port if port is not None else members[0].getsockname()[1]))
    sock.listen(64)
    members.append(sock)
old, new = members
attach(old, build(Plan(active=0)))
clients = [socket.create_connection(old.getsockname(), timeout=5) for _ in range(5)]
wait(lambda: observe.accept_queue_length(old) == 5)
attach(new, build(Plan(active=1)))
old.close()
moved = observe.accept_queue_length(new)
for _ in range(moved):
    new.accept()[0].close()
outcomes = []
for client in clients:
    try:
        outcomes.append("closed" if client.recv(1) == b"" else "data")
    except ConnectionResetError:
        outcomes.append("reset")
print(json.dumps({"enabled": observe.queue_migration(), "moved": moved, "outcomes": outcomes}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace of its own needs root")
@pytest.mark.parametrize(("setting", "moved", "outcome"), [("0", 0, "reset"), ("1", 5, "closed")])
def test_closing_a_member_resets_its_queue_unless_migration_is_on(
    setting: str, moved: int, outcome: str
) -> None:
    """5 queued on a closed member: reset by default, handed to the other with tcp_migrate_req."""
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", MIGRATION, setting], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=30).stdout  # fmt: skip
    result = json.loads(out)
    assert result == {"enabled": setting == "1", "moved": moved, "outcomes": [outcome] * 5}


def test_reserved_ports_are_not_for_anyone_else(source: ProbeSource) -> None:
    """A plain bind of a reserved port fails; the IPv4 source is outside 127.0/16."""
    assert len(source.ports) == 4
    assert source.address4.startswith("127.")
    assert not source.address4.startswith("127.0.")
    for port in source.ports:
        with (
            socket.socket(socket.AF_INET6) as other,
            pytest.raises(OSError, match="in use") as taken,
        ):
            other.bind(("::1", port))
        assert taken.value.errno == errno.EADDRINUSE
        with socket.socket() as other4, pytest.raises(OSError, match="in use"):
            other4.bind(("127.0.0.1", port))  # the holder is dual-stack


def test_ipv6_probes_repeat_from_the_same_ports_without_time_wait(
    listeners: Callable[..., Listeners], source: ProbeSource
) -> None:
    """40 probes (10 per reserved port), each closed by the client first, all connect."""
    group = listeners(1, socket.AF_INET6, "::1")
    for _ in range(40):
        client = probe(source, "::1", group.port)
        client.close()  # the client closes first: without SO_LINGER 0 this is TIME_WAIT
        conn, _ = wait_until(lambda: _accept(group.socks[0]), DEADLINE, "the probe accepted")
        conn.close()


def _accept(sock: socket.socket) -> tuple[socket.socket, object] | None:
    try:
        return sock.accept()
    except BlockingIOError:
        return None


def test_async_probe_connects_and_speaks_through_asyncio_streams(
    listeners: Callable[..., Listeners], source: ProbeSource
) -> None:
    """ProbeSource.connect gives a socket asyncio streams take; concurrency uses the pool."""
    group = listeners(2, socket.AF_INET6, "::")
    attach(group.socks[0], build(Plan(active=0, candidate=1, probe=source.match)))
    candidate = group.socks[1]

    async def exchange(host: str) -> bytes:
        loop = asyncio.get_running_loop()
        sock = await source.connect(loop, host, group.port)
        conn = await asyncio.wait_for(loop.sock_accept(candidate), DEADLINE)
        conn[0].sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        conn[0].close()
        reader, writer = await asyncio.open_connection(sock=sock)
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return line

    async def pool_exhaustion() -> int:
        loop = asyncio.get_running_loop()
        held = [await source.connect(loop, "::1", group.port) for _ in source.ports]
        try:
            await source.connect(loop, "::1", group.port)
        except OSError as exc:
            return exc.errno or 0
        finally:
            for sock in held:
                sock.close()
        return 0

    assert asyncio.run(exchange("127.0.0.1")) == b"HTTP/1.1 204 No Content\r\n"
    assert asyncio.run(exchange("::1")) == b"HTTP/1.1 204 No Content\r\n"
    assert asyncio.run(pool_exhaustion()) == errno.EADDRNOTAVAIL


def test_importing_steer_loads_nothing_heavy() -> None:
    """hotswapd.steer loads before the first fork: no ctypes, typing, asyncio, socket, enum, re."""
    code = (
        "import sys; before = set(sys.modules)\n"
        "import hotswapd.steer.bpf, hotswapd.steer.group, hotswapd.steer.probe, "
        "hotswapd.steer.observe\n"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    assert {m for m in out if not m.startswith("hotswapd")} <= {"__future__", "_socket", "errno"}, (
        out
    )
