"""What the kernel says about a group's sockets: queues, listening state, who else joined.

Positions in a group change behind hotswapd's back in two ways, and both show here:
a process holding a member calls shutdown(SHUT_RD) on it (it leaves: `is_listening`
turns False, and listen() again makes it rejoin *last*), or a process of the same uid
binds the port with SO_REUSEPORT (it joins last: `foreign_members`). `join_order`
reads the kernel's join order of the sockets on a port, to check the group model.
"""

from __future__ import annotations

import _socket
import os
import sys

TYPE_CHECKING = False  # see bpf.py
if TYPE_CHECKING:
    from collections.abc import Collection

TCP_LISTEN = 10  # include/net/tcp_states.h
_TCP_INFO_UNACKED = 24  # struct tcp_info: 8 bytes of u8 fields, then rto, ato, snd_mss, rcv_mss
_TCP_INFO_SACKED = 28


def is_listening(sock: _socket.socket) -> bool:
    """False once anyone holding this socket shut it down: it has left its group."""
    return bool(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN))


def _listener_info(sock: _socket.socket) -> bytes:
    info = sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_INFO, _TCP_INFO_SACKED + 4)
    if info[0] != TCP_LISTEN:
        raise ValueError("not a listening socket: its accept queue has no length")
    return info


def accept_queue_length(sock: _socket.socket) -> int:
    """Connections that completed the handshake and wait for accept() on this listener.

    For a listening socket the kernel reports its accept queue in tcpi_unacked (and
    the backlog limit in tcpi_sacked); hotswapd's own fd of a generation's socket
    reads it without touching the queue.
    """
    info = _listener_info(sock)
    return int.from_bytes(info[_TCP_INFO_UNACKED : _TCP_INFO_UNACKED + 4], sys.byteorder)


def accept_backlog(sock: _socket.socket) -> int:
    """The accept queue's limit: listen()'s backlog capped by net.core.somaxconn."""
    info = _listener_info(sock)
    return int.from_bytes(info[_TCP_INFO_SACKED : _TCP_INFO_SACKED + 4], sys.byteorder)


def queue_migration() -> bool:
    """Whether this network namespace hands a closed listener's queue to another member.

    With net.ipv4.tcp_migrate_req=1 (Linux 5.14+, per network namespace) closing a
    group member moves its queued and half-open connections to another member instead
    of resetting them. A classic BPF program is not asked where: the kernel's hash
    picks, so only a group of two is sure to hand them to the right socket.
    """
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as setting:
            return setting.read().strip() == "1"
    except OSError:
        return False


def socket_inode(sock: _socket.socket) -> int:
    """The inode /proc/net/tcp lists for this socket."""
    return os.fstat(sock.fileno()).st_ino


class Listening:
    """One listening TCP socket as /proc/net/tcp{,6} shows it."""

    __slots__ = ("inode", "family", "address", "port", "uid", "queued")

    def __init__(
        self, inode: int, family: int, address: str, port: int, uid: int, queued: int
    ) -> None:
        self.inode = inode
        self.family = family
        self.address = address
        self.port = port
        self.uid = uid
        self.queued = queued  # the accept queue (rx_queue of a listener)

    def __repr__(self) -> str:
        host = f"[{self.address}]" if self.family == _socket.AF_INET6 else self.address
        return f"Listening({host}:{self.port}, inode={self.inode}, uid={self.uid})"


def _address(hex_address: str, family: int) -> str:
    # /proc prints the address as 32-bit words in host byte order
    raw = bytes.fromhex(hex_address)
    words = b"".join(
        int.from_bytes(raw[i : i + 4], "big").to_bytes(4, sys.byteorder)
        for i in range(0, len(raw), 4)
    )
    return _socket.inet_ntop(family, words)


def listening(port: int, family: int | None = None) -> list[Listening]:
    """The listening TCP sockets on `port` in this network namespace, in kernel list order.

    Within one address and port the list is the group's lookup chain: IPv4 sockets are
    added at its head and IPv6 ones at its tail, so it shows join order (reversed for
    IPv4). The kernel lists listeners before any other socket, so reading stops there.
    """
    found: list[Listening] = []
    files = (("/proc/net/tcp", _socket.AF_INET), ("/proc/net/tcp6", _socket.AF_INET6))
    # `family` reads one file only: the kernel walks its whole connection table to say a
    # file holds no more sockets of that family (milliseconds with 100k in TIME_WAIT).
    for name, family_ in files:
        if family is not None and family_ != family:
            continue
        try:
            stream = open(name)  # noqa: SIM115 -- closed below; a with-block would nest the loop deeper
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        with stream:
            stream.readline()
            for line in stream:
                fields = line.split()
                if int(fields[3], 16) != TCP_LISTEN:
                    break
                address, _, hex_port = fields[1].partition(":")
                if int(hex_port, 16) != port:
                    continue
                queued = int(fields[4].partition(":")[2], 16)
                found.append(
                    Listening(
                        int(fields[9]),
                        family_,
                        _address(address, family_),
                        port,
                        int(fields[7]),
                        queued,
                    )
                )
    return found


def foreign_members(
    port: int, own_inodes: Collection[int], family: int | None = None
) -> list[Listening]:
    """Listening sockets on `port` that are not ours: they may sit in our group's slots.

    A same-uid SO_REUSEPORT socket on the same address joins our group (last), and one
    on a more specific address or of the IPv4 family takes connections before a group
    on `::` is even asked. Either way hotswapd does not steer all of the port.
    """
    return [entry for entry in listening(port, family) if entry.inode not in own_inodes]


def join_order(port: int, family: int, address: str) -> list[int]:
    """Inodes of the sockets listening on address:port, oldest join first."""
    entries = [e for e in listening(port, family) if e.address == address]
    inodes = [e.inode for e in entries]
    return inodes[::-1] if family == _socket.AF_INET else inodes
