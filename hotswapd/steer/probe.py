"""The source hotswapd's own probe connections come from, reserved so nobody else matches.

IPv4: a random loopback address outside 127.0.0.0/16 (Debian maps the host name to
127.0.1.1, systemd-resolved sits on 127.0.0.53), chosen at start. Every local client
connects from 127.0.0.1 unless it binds on purpose, and the kernel drops packets from
outside that claim a loopback source, so only hotswapd matches. The port is the
kernel's ephemeral one, so probes never collide with each other.

IPv6 has one loopback address, shared by every local client, so a probe is `::1`
*and* one of a few source ports hotswapd holds: each is bound (not listening) by a
socket kept for hotswapd's life, and the kernel never hands a port bound that way to
another socket's connect(), nor to a bind() of port 0. Probes bind the same port with
SO_REUSEADDR (both sides set it, so the kernel lets them share it) and close with an
RST (SO_LINGER 0): the next probe from that port to the same listener must not find
the previous connection in TIME_WAIT, where connect() fails with EADDRNOTAVAIL.
Concurrent probes to one listener take the next port of the pool.

All sockets here are close-on-exec: children never see the reservation.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys

from hotswapd.steer.bpf import ProbeMatch

TYPE_CHECKING = False  # see bpf.py
if TYPE_CHECKING:
    import socket
    from asyncio import AbstractEventLoop

LOOPBACK6 = "::1"
DEFAULT_IPV6_PORTS = 4
_LINGER_RESET = (1).to_bytes(4, sys.byteorder) + bytes(4)  # struct linger {l_onoff 1, l_linger 0}


def random_loopback4() -> str:
    """A random address in 127.1.0.1 .. 127.254.255.254 (not 127.0/16, no .0 or .255)."""
    raw = os.urandom(3)
    second = 1 + raw[0] % 254
    fourth = 1 + raw[2] % 254
    return f"127.{second}.{raw[1]}.{fourth}"


def _reserve_port() -> _socket.socket:
    """A bound, never-listening dual-stack socket on a kernel-chosen port."""
    holder = _socket.socket(_socket.AF_INET6, _socket.SOCK_STREAM)
    try:
        holder.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        holder.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0)  # the IPv4 side too
        holder.bind(("::", 0))
    except OSError:
        holder.close()
        raise
    return holder


class ProbeSource:
    """hotswapd's reserved probe source: `match` tells the selector, `connect` uses it."""

    __slots__ = ("address4", "address6", "ports", "_holders", "_turn")

    def __init__(self, address4: str | None = None, ipv6_ports: int = DEFAULT_IPV6_PORTS) -> None:
        """Reserve the source; `ipv6_ports=0` (or a kernel without IPv6) means IPv4 only."""
        self.address4 = address4 or random_loopback4()
        self._holders: list[_socket.socket] = []
        try:
            for _ in range(ipv6_ports):
                self._holders.append(_reserve_port())
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                self.close()
                raise
            self.close()  # IPv6 is disabled: no [::1] listener can exist either
        self.ports = tuple(int(holder.getsockname()[1]) for holder in self._holders)
        self.address6 = LOOPBACK6 if self.ports else None
        self._turn = 0

    @property
    def match(self) -> ProbeMatch:
        """What the selector's program must recognise as a probe."""
        return ProbeMatch(self.address4, self.address6, self.ports)

    def bound_socket(self, host: str) -> socket.socket:
        """A non-blocking TCP socket bound to the reserved source for connecting to `host`.

        `host` is an IP literal (probes never resolve names: no resolver thread). Each
        IPv6 socket takes the next reserved port in turn. It is a `socket.socket`, what
        asyncio takes; the socket module is loaded by then (probes run after asyncio).
        """
        import socket

        if ":" not in host:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            source: tuple[str, int] = (self.address4, 0)
        elif self.address6 is None:
            raise OSError(errno.EADDRNOTAVAIL, "no IPv6 probe source is reserved")
        else:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            source = (self.address6, self.ports[self._turn % len(self.ports)])
            self._turn += 1
        try:
            if source[1]:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_RESET)
            sock.bind(source)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def connect(self, loop: AbstractEventLoop, host: str, port: int) -> socket.socket:
        """A connected non-blocking socket to host:port from the reserved source.

        Hand it to asyncio as `loop.create_connection(factory, sock=...)` or
        `asyncio.open_connection(sock=...)`. An IPv6 port still busy with a probe to
        the same listener (EADDRNOTAVAIL) makes it try the next one.
        """
        tries = 1 if ":" not in host else max(len(self.ports), 1)
        for attempt in range(tries):
            sock = self.bound_socket(host)
            try:
                await loop.sock_connect(sock, (host, port))
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRNOTAVAIL or attempt == tries - 1:
                    raise
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        """Give the reserved ports back (at hotswapd's exit)."""
        for holder in self._holders:
            holder.close()
        self._holders = []
