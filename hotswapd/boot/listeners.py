"""Listening sockets: bound once, kept for hotswapd's life, inherited by every generation.

Design note: one listening socket has one accept queue. Old and new generations
accept from the same queue, so a connection that arrives while generations change
waits in the queue until one of them takes it; nothing is reset. Two SO_REUSEPORT
sockets would each have their own queue, and closing one drops what it holds.

Each generation also gets a private loopback *probe* listener after the public ones
(named `probe`), so the health check reaches that generation and no other.
"""

from __future__ import annotations

# _socket, not socket: the socket module builds enums at import (~10 ms) and this runs
# before generation 1 is spawned. socket.socket is a subclass of _socket.socket.
import _socket
import errno
import os
import stat

from hotswapd.errors import ListenError
from hotswapd.host.unixsock import socket_state

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from hotswapd.boot.values import ListenSpec

SD_LISTEN_FDS_START = 3
INHERITED_ENV = ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "LISTEN_PIDFDID", "NOTIFY_SOCKET")
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


class Listener:
    """A bound listening socket and what hotswapd must clean up for it."""

    __slots__ = ("name", "sock", "unix_path", "adopted")

    def __init__(self, name: str, sock: _socket.socket, unix_path: str | None = None,
                 adopted: bool = False) -> None:  # fmt: skip
        self.name = name
        self.sock = sock
        self.unix_path = unix_path  # unlinked by hotswapd at exit, never by a child
        self.adopted = adopted

    def address(self) -> str:
        addr = self.sock.getsockname()
        if self.sock.family == _socket.AF_UNIX:
            return f"unix://{addr}"
        if self.sock.family == _socket.AF_INET6:
            return f"tcp://[{addr[0]}]:{addr[1]}"
        return f"tcp://{addr[0]}:{addr[1]}"

    def port(self) -> int:
        if self.sock.family in (_socket.AF_INET, _socket.AF_INET6):
            return int(self.sock.getsockname()[1])
        return 0


def clean_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """Drop the socket-activation variables hotswapd itself inherited.

    They describe *our* fds and pid; passed on blindly they would make a child adopt
    fds that are not what the names say.
    """
    return {key: value for key, value in environ.items() if key not in INHERITED_ENV}


def adopt_inherited(environ: Mapping[str, str]) -> list[Listener] | None:
    """Adopt sockets passed to hotswapd itself (systemd, another supervisor), or None."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count <= 0:
        return None
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    adopted = []
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        try:
            sock = _socket.socket(fileno=fd)
        except OSError as exc:
            raise ListenError(f"LISTEN_FDS: fd {fd} is not a socket ({exc.strerror})") from None
        os.set_inheritable(fd, False)
        name = names[index] if index < len(names) and names[index] else f"listen{index}"
        adopted.append(Listener(name=name, sock=sock, adopted=True))
    return adopted


def bind_all(specs: Sequence[ListenSpec]) -> list[Listener]:
    """Bind every --listen spec; on any failure close what was bound and raise one error."""
    bound: list[Listener] = []
    try:
        for spec in specs:
            bound.append(_bind_unix(spec) if spec.kind == "unix" else _bind_tcp(spec))
    except BaseException:
        close_all(bound)
        raise
    return bound


def _bind_tcp(spec: ListenSpec) -> Listener:
    where = f"--listen {spec.name}={spec.url}"
    addr: tuple[Any, ...]
    if spec.host == "":
        # Every address: one dual-stack socket where IPv6 exists, else IPv4.
        if _socket.has_ipv6 and os.path.exists("/proc/net/if_inet6"):
            family, addr = _socket.AF_INET6, (b"::", spec.port)
        else:
            family, addr = _socket.AF_INET, (b"0.0.0.0", spec.port)
    else:
        try:
            # bytes, not str: a str host loads the idna codec (~1.5 ms) before the spawn
            infos = _socket.getaddrinfo(
                spec.host.encode("ascii", "replace"),
                spec.port,
                type=_socket.SOCK_STREAM,
                flags=_socket.AI_PASSIVE,
            )
        except _socket.gaierror as exc:
            raise ListenError(
                f"{where}: cannot resolve host '{spec.host}' ({exc.strerror})"
            ) from None
        family, addr = infos[0][0], (str(infos[0][4][0]).encode("ascii"), infos[0][4][1])
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if family == _socket.AF_INET6 and spec.host == "":
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"{where}: {_bind_reason(exc, spec.port)}") from None
    return Listener(name=spec.name, sock=sock)


def _bind_reason(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} is already in use (another server or an old hotswapd holds it; "
                "stop it or choose another port)")  # fmt: skip
    if exc.errno == errno.EACCES:
        return (
            f"permission denied for port {port} (ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE; hotswapd can bind as root and run the server with --user)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return "that address is not on any interface of this machine (or container)"
    return exc.strerror or str(exc)


def _bind_unix(spec: ListenSpec) -> Listener:
    where = f"--listen {spec.name}={spec.url}"
    path = spec.path
    directory = os.path.dirname(path) or "/"
    if not os.path.isdir(directory):
        raise ListenError(f"{where}: directory {directory} does not exist "
                          "(create it, or mount a volume there)")  # fmt: skip
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(f"{where}: {path} exists and is not a socket (remove it or "
                              "choose another path)")  # fmt: skip
        if socket_state(path) == "live":
            raise ListenError(f"{where}: a live server is already listening on {path}")
        os.unlink(path)  # stale socket left by a dead process
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"{where}: {exc.strerror}") from None
    return Listener(name=spec.name, sock=sock, unix_path=path)


def close_all(listeners: Sequence[Listener]) -> None:
    """Close every listener and unlink the unix socket paths hotswapd created."""
    for listener in listeners:
        if listener.unix_path:
            try:
                st = os.lstat(listener.unix_path)
                if stat.S_ISSOCK(st.st_mode):
                    os.unlink(listener.unix_path)
            except OSError:
                pass  # already gone: nothing to clean
        listener.sock.close()


def make_probe_listener() -> _socket.socket:
    """A private loopback listener for one generation's health probe (close-on-exec)."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    sock.bind((b"127.0.0.1", 0))
    sock.listen(64)
    return sock


def accept_queue_length(sock: _socket.socket) -> int:
    """Connections waiting in a TCP listener's accept queue (tcpi_unacked of TCP_INFO).

    A probe listener whose queue is non-empty after the health timeout was never
    accepted on: the server ignores some of its inherited listeners.
    """
    try:
        info = sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_INFO, 104)
    except OSError:
        return 0
    import struct

    # struct tcp_info: 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, ...
    return int(struct.unpack_from("I", info, 8 + 4 * 4)[0])


def listen_env(names: Sequence[str]) -> dict[str, str]:
    """LISTEN_FDS and LISTEN_FDNAMES for a child; LISTEN_PID is set in the child itself."""
    return {"LISTEN_FDS": str(len(names)), "LISTEN_FDNAMES": ":".join(names)}
