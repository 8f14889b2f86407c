"""Classic BPF programs that pick, per new connection, the socket of a SO_REUSEPORT group.

A program attached with SO_ATTACH_REUSEPORT_CBPF runs once per SYN and returns the
*index* of the group member that gets the connection. What the kernel hands it, found
by experiment on Linux 6.18 (tests/test_steer.py keeps proving it):

- The skb data starts *after* the TCP header (the kernel pulls the header before it
  runs the program), so for a SYN `len` is 0 and `ld [0]` fails. A failed load ends the
  program with 0: index 0, silently. Everything here is therefore read relative to the
  network header (SKF_NET_OFF), which the kernel has already pulled into the linear
  area together with the TCP header, so none of these loads can fail.
- The network header is IPv4 for IPv4 clients of an IPv6 dual-stack (`::`) socket, so
  the version nibble, not the socket's family, decides how to read it.
- An index at or beyond the group size makes the kernel fall back to its hash, i.e. a
  random member. `build` only emits indices the plan names, and `results` lists every
  index a program can produce, so a caller can check them against the group size.

This module runs before the first fork: no ctypes, typing, enum or dataclasses at
import; `attach` needs only struct, so the kernel can be asked before the spawn.
"""

from __future__ import annotations

import _socket
import errno

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms (mypy: always_true)
if TYPE_CHECKING:
    from collections.abc import Sequence

    Instruction = tuple[int, int, int, int]  # struct sock_filter: code, jt, jf, k
    Program = tuple[Instruction, ...]

# include/uapi/asm-generic/socket.h
SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68

# include/uapi/linux/bpf_common.h: instruction classes, sizes, modes, operations, sources
BPF_LD, BPF_LDX, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x01, 0x04, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x80, 0xA0
BPF_ADD, BPF_SUB, BPF_AND, BPF_RSH, BPF_MOD = 0x00, 0x10, 0x50, 0x70, 0x90
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE = 0x00, 0x10, 0x20, 0x30
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10

# include/uapi/linux/filter.h: negative offsets reach ancillary data and the headers
SKF_AD_OFF = -0x1000
SKF_AD_RANDOM = 56
SKF_NET_OFF = -0x100000

MAX_INDEX = 0xFFFF  # the kernel counts a group's sockets in a u16
IPPROTO_TCP = 6
_V4_SOURCE = 12  # offsets in the IPv4 header
_V6_NEXT_HEADER, _V6_SOURCE, _V6_HEADER = 6, 8, 40  # and in the IPv6 one


def _u32(k: int) -> int:
    return k & 0xFFFFFFFF  # negative offsets travel as their two's complement


class ProbeMatch:
    """Source addresses and ports that mark hotswapd's own probe connections.

    Only loopback sources are accepted: the kernel drops packets from outside that
    claim one, so a match can only come from this host. IPv4 probes come from a
    loopback address nobody else uses (any port); IPv6 has one loopback address, so
    there a probe is `::1` *and* one of the source ports hotswapd holds reserved.
    """

    __slots__ = ("address4", "address6", "ports")

    def __init__(
        self, address4: str | None = None, address6: str | None = None, ports: Sequence[int] = ()
    ) -> None:
        if address4 is not None and not _socket.inet_aton(address4).startswith(b"\x7f"):
            raise ValueError(f"probe address {address4} is not in 127.0.0.0/8")
        if address6 is not None:
            if _socket.inet_pton(_socket.AF_INET6, address6) != bytes(15) + b"\x01":
                raise ValueError(f"probe address {address6} is not ::1")
            if not ports:
                raise ValueError("an IPv6 probe match needs reserved source ports: ::1 is shared")
        for port in ports:
            if not 0 < port <= 0xFFFF:
                raise ValueError(f"probe source port {port} is not in 1..65535")
        self.address4 = address4
        self.address6 = address6
        self.ports = tuple(ports)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProbeMatch) and (self.address4, self.address6, self.ports) == (
            other.address4,
            other.address6,
            other.ports,
        )

    def __hash__(self) -> int:
        return hash((self.address4, self.address6, self.ports))

    def __repr__(self) -> str:
        return f"ProbeMatch({self.address4!r}, {self.address6!r}, {self.ports!r})"


class Plan:
    """Where new connections go, as group indices: what one program encodes.

    Probe connections go to `candidate`; of the others, `candidate_percent` percent
    (chosen at random per connection) go to `candidate` and the rest to `active`.
    """

    __slots__ = ("active", "candidate", "probe", "candidate_percent")

    def __init__(
        self,
        active: int,
        candidate: int | None = None,
        probe: ProbeMatch | None = None,
        candidate_percent: int = 0,
    ) -> None:
        for index in (active, candidate):
            if index is not None and not 0 <= index <= MAX_INDEX:
                raise ValueError(f"group index {index} is not in 0..{MAX_INDEX}")
        if not 0 <= candidate_percent <= 100:
            raise ValueError(f"candidate share {candidate_percent}% is not in 0..100")
        if candidate is None and (probe is not None or candidate_percent):
            raise ValueError("probe connections or a share need a candidate index")
        self.active = active
        self.candidate = candidate
        self.probe = probe
        self.candidate_percent = candidate_percent

    def _key(self) -> tuple[object, ...]:
        return (self.active, self.candidate, self.probe, self.candidate_percent)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Plan(active={self.active}, candidate={self.candidate}, probe={self.probe!r}, "
            f"candidate_percent={self.candidate_percent})"
        )

    def indices(self) -> frozenset[int]:
        """The group indices this plan sends connections to."""
        if self.candidate is None or self.candidate_percent == 100:
            return frozenset({self.active if self.candidate is None else self.candidate})
        return frozenset({self.active, self.candidate})


class _Assembler:
    """Instructions with forward jumps to named labels, resolved into cBPF's relative offsets."""

    __slots__ = ("_code", "_labels")

    def __init__(self) -> None:
        self._code: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0) -> None:
        self._code.append((code, None, None, _u32(k)))

    def jump(self, code: int, k: int, true: str | None, false: str | None) -> None:
        """A conditional jump; None means the next instruction."""
        self._code.append((code, true, false, _u32(k)))

    def mark(self, label: str) -> None:
        self._labels[label] = len(self._code)

    def program(self) -> Program:
        out: list[Instruction] = []
        for at, (code, true, false, k) in enumerate(self._code):
            jt, jf = (self._offset(at, label) for label in (true, false))
            out.append((code, jt, jf, k))
        return tuple(out)

    def _offset(self, at: int, label: str | None) -> int:
        if label is None:
            return 0
        offset = self._labels[label] - at - 1
        if not 0 <= offset <= 0xFF:  # cBPF jumps forward only, by at most 255
            raise ValueError(f"jump to {label} out of range ({offset})")
        return offset


def build(plan: Plan) -> Program:
    """The program for `plan`: probes to the candidate, then the random share, then active."""
    if plan.candidate is None:
        return ((BPF_RET | BPF_K, 0, 0, plan.active),)
    if plan.candidate_percent == 100:
        return ((BPF_RET | BPF_K, 0, 0, plan.candidate),)
    asm = _Assembler()
    if plan.probe is not None and (plan.probe.address4 or plan.probe.address6):
        _match_probe(asm, plan.probe)
    asm.mark("share")
    if plan.candidate_percent:
        asm.op(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_RANDOM)
        asm.op(BPF_ALU | BPF_MOD | BPF_K, 100)  # 2**32 % 100 biases it by 1e-8: fine
        asm.jump(BPF_JMP | BPF_JGE | BPF_K, plan.candidate_percent, "active", "candidate")
    asm.mark("active")
    asm.op(BPF_RET | BPF_K, plan.active)
    asm.mark("candidate")
    asm.op(BPF_RET | BPF_K, plan.candidate)
    return asm.program()


def _match_probe(asm: _Assembler, probe: ProbeMatch) -> None:
    """Jump to `candidate` for a probe's SYN, to `share` for every other one."""
    asm.op(BPF_LD | BPF_B | BPF_ABS, SKF_NET_OFF)
    asm.op(BPF_ALU | BPF_RSH | BPF_K, 4)  # the IP version nibble
    if probe.address4 is not None:
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, 4, "v4", None if probe.address6 else "share")
    if probe.address6 is not None:
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, 6, "v6", "share")
    if probe.address4 is not None:
        asm.mark("v4")
        asm.op(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + _V4_SOURCE)
        address = int.from_bytes(_socket.inet_aton(probe.address4), "big")  # loads are big-endian
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, address, "candidate", "share")
    if probe.address6 is not None:
        asm.mark("v6")
        # The TCP header is right after the fixed header only when no extension header
        # sits between them; a SYN with one is not a probe (hotswapd sends none).
        asm.op(BPF_LD | BPF_B | BPF_ABS, SKF_NET_OFF + _V6_NEXT_HEADER)
        asm.jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, None, "share")
        packed = _socket.inet_pton(_socket.AF_INET6, probe.address6)
        for word in range(4):
            asm.op(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + _V6_SOURCE + 4 * word)
            value = int.from_bytes(packed[4 * word : 4 * word + 4], "big")
            asm.jump(BPF_JMP | BPF_JEQ | BPF_K, value, None, "share")
        asm.op(BPF_LD | BPF_H | BPF_ABS, SKF_NET_OFF + _V6_HEADER)  # the TCP source port
        for n, port in enumerate(probe.ports):
            last = n == len(probe.ports) - 1
            asm.jump(BPF_JMP | BPF_JEQ | BPF_K, port, "candidate", "share" if last else None)


def results(program: Sequence[Instruction]) -> frozenset[int]:
    """Every index `program` can return, including the 0 a failed packet load would give."""
    found: set[int] = set()
    for code, _jt, _jf, k in program:
        cls = code & 0x07
        if cls == BPF_RET:
            if code & 0x18 != BPF_K:
                raise ValueError("program returns a register; its results are not static")
            found.add(k)
        elif cls in (BPF_LD, BPF_LDX) and code & 0xE0 in (BPF_ABS, BPF_IND, BPF_MSH):
            ancillary = code & 0xE0 == BPF_ABS and SKF_AD_OFF <= k - (1 << 32) < 0
            if not ancillary:
                found.add(0)
    return frozenset(found)


class SteerError(Exception):
    """The kernel refused to steer this socket; `str()` is one line for the user."""

    def __init__(self, reason: str, errno_: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno_


_REASONS = {
    errno.ENOPROTOOPT: "this kernel has no SO_ATTACH_REUSEPORT_CBPF (Linux 4.6 or later steers)",
    errno.EINVAL: "the kernel refused the program or the socket (not a SO_REUSEPORT socket?)",
    errno.EPERM: "a security policy (seccomp or an LSM) forbids attaching socket programs",
    errno.EACCES: "a security policy (seccomp or an LSM) forbids attaching socket programs",
    errno.ENOMEM: "the program does not fit in net.core.optmem_max",
    errno.EOPNOTSUPP: "this socket type cannot be steered",
}


def explain(exc: OSError) -> SteerError:
    """The one-line reason for a refused attach, for `--steering on` to print."""
    reason = _REASONS.get(exc.errno or 0, f"attaching the program failed: {exc.strerror or exc}")
    return SteerError(reason, exc.errno)


def attach(sock: _socket.socket, program: Sequence[Instruction]) -> None:
    """Make `program` the selector of the group `sock` is a listening member of.

    Attach through a socket that has already joined (is listening): a socket that has
    not gets a group of its own, which it leaves when it joins the real one.
    """
    # struct sock_fprog holds a *pointer* to the instructions. ctypes would give one, but
    # costs ~1.6 ms and libffi before the first fork, and `array` pulls in collections.
    # A bytes object's data sits right after its fixed header in CPython (the header is
    # what an empty one measures, minus its terminating NUL), and `code` stays alive
    # until the kernel has copied it, inside setsockopt.
    import struct
    import sys

    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    if sys.implementation.name == "cpython":
        address = id(code) + sys.getsizeof(b"") - 1
    else:  # pragma: no cover - hotswapd ships for CPython; elsewhere ask ctypes
        import ctypes

        buffer = ctypes.create_string_buffer(code, len(code))
        address = ctypes.addressof(buffer)
    fprog = struct.pack("HP", len(program), address)  # native: u16 len, padding, pointer
    try:
        # The kernel copies the instructions during the call, so `code` may go after it.
        sock.setsockopt(_socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        raise explain(exc) from exc


def detach(sock: _socket.socket) -> bool:
    """Remove the group's program (the kernel hashes again); False if it had none."""
    try:
        sock.setsockopt(_socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise explain(exc) from exc
    return True


def kernel_accepts(sock: _socket.socket | None = None) -> str | None:
    """None if the kernel steers; else the reason, for `--steering auto` to say once.

    Without `sock`, a throwaway unbound SO_REUSEPORT socket takes a program that sends
    everything to index 0, so no real group is touched. With `sock`, that program is
    attached to its group: use it on a group's first socket, before anything is steered.
    """
    own = sock is None
    target = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM) if sock is None else sock
    try:
        if own:
            target.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        attach(target, build(Plan(active=0)))
    except SteerError as exc:
        return exc.reason
    except OSError as exc:
        return explain(exc).reason
    finally:
        if own:
            target.close()
    return None
