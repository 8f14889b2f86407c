"""Listening sockets: bound by hotswapd, never by a server, and inherited the systemd way.

Two modes per listener (`Listener.mode`), decided before the first fork:

- *steered* (TCP, the kernel accepts a reuseport program): every generation gets a
  socket of its own, all bound to the one address with SO_REUSEPORT in a group that
  only hotswapd creates and holds; a classic BPF program picks the socket of each new
  connection (core/steering.py). Whatever a generation does to its socket touches no
  other, and a candidate sees no live connection before its verdict.
- *shared* (`--steering off`, unix://, sockets adopted from a parent, a kernel that
  refuses the program): one socket, one accept queue for all generations, as before.
  A child can shut it down for everyone, so hotswapd checks SO_ACCEPTCONN after any
  candidate exits and listens again (`relisten`).

A generation's health probe goes through the public address in steered mode; only a
shared-mode `--health PATH` needs a private loopback *probe* listener (named `probe`).
"""

from __future__ import annotations

# _socket, not socket: the socket module builds enums at import (~10 ms) and this runs
# before generation 1 is spawned. socket.socket is a subclass of _socket.socket.
import _socket
import errno
import os
import stat

from hotswapd.errors import ListenError, UsageError
from hotswapd.host.unixsock import socket_state

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from hotswapd.boot.values import ListenSpec

SD_LISTEN_FDS_START = 3
INHERITED_ENV = ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "LISTEN_PIDFDID", "NOTIFY_SOCKET")
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


STEERED, SHARED = "steered", "shared"
STEERED_WHY = "one socket per generation, steered by a reuseport program"


class Listener:
    """A listening address and what hotswapd must clean up for it.

    `sock` is the socket generation 1 gets (in shared mode: every generation's);
    in steered mode core/steering.py makes one more per generation (`new_member`).
    """

    __slots__ = (
        "name",
        "sock",
        "unix_path",
        "adopted",
        "mode",
        "why",
        "family",
        "sockname",
        "v6only",
    )

    def __init__(
        self,
        name: str,
        sock: _socket.socket,
        unix_path: str | None = None,
        adopted: bool = False,
        mode: str = SHARED,
        why: str = "",
    ) -> None:
        self.name = name
        self.sock = sock
        self.unix_path = unix_path  # unlinked by hotswapd at exit, never by a child
        self.adopted = adopted
        self.mode = mode
        self.why = why  # one line: why this listener is in its mode
        # Kept from the first socket: in steered mode that one is closed once generation 1
        # has gone, and every later member binds the same address.
        self.family = sock.family
        self.sockname = sock.getsockname()
        self.v6only = (
            bool(sock.getsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY))
            if sock.family == _socket.AF_INET6
            else False
        )

    @property
    def steered(self) -> bool:
        return self.mode == STEERED

    def new_member(self) -> _socket.socket:
        """A new socket bound to this listener's address in its group, not yet listening.

        The caller attaches the program that names only the current members first and
        then calls listen(): that is the moment the socket joins the group.
        """
        sock = _socket.socket(self.family, _socket.SOCK_STREAM)
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
            if self.family == _socket.AF_INET6:
                sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, int(self.v6only))
            sock.bind(self.sockname)
        except OSError:
            sock.close()
            raise
        return sock

    def address(self) -> str:
        addr = self.sockname
        if self.family == _socket.AF_UNIX:
            return f"unix://{addr}"
        if self.family == _socket.AF_INET6:
            return f"tcp://[{addr[0]}]:{addr[1]}"
        return f"tcp://{addr[0]}:{addr[1]}"

    def port(self) -> int:
        if self.family in (_socket.AF_INET, _socket.AF_INET6):
            return int(self.sockname[1])
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
        why = "adopted from the parent: hotswapd did not create its group"
        adopted.append(Listener(name=name, sock=sock, adopted=True, why=why))
    return adopted


def steering_modes(
    specs: Sequence[ListenSpec], steering: str = "auto", adopted: bool = False
) -> list[tuple[str, str, str]]:
    """(name, mode, why) per listener, as `bind_all` would decide: for `hotswapd doctor`.

    Asks the kernel the same question (a throwaway socket takes the program), binds
    nothing. Adopted sockets (LISTEN_FDS given to hotswapd) are always shared.
    """
    refused: str | None = None
    if steering != "off" and not adopted and any(spec.kind != "unix" for spec in specs):
        from hotswapd.steer.bpf import kernel_accepts

        refused = kernel_accepts()
    out = []
    for spec in specs:
        if adopted:
            out.append(
                (spec.name, SHARED, "adopted from the parent: hotswapd did not create its group")
            )
        elif spec.kind == "unix":
            out.append((spec.name, SHARED, "unix sockets cannot be steered"))
        elif steering == "off":
            out.append((spec.name, SHARED, "--steering off"))
        elif refused is not None:
            out.append((spec.name, SHARED, f"the kernel refuses the steering program: {refused}"))
        else:
            out.append((spec.name, STEERED, STEERED_WHY))
    return out


def bind_all(specs: Sequence[ListenSpec], steering: str = "auto") -> list[Listener]:
    """Bind every --listen spec; on any failure close what was bound and raise one error.

    `steering` is the --steering value: TCP listeners are steered unless it is `off` or
    the kernel refuses the program (`on` then fails here: exit 2, no child started).
    """
    refused: str | None = None
    if steering != "off" and any(spec.kind != "unix" for spec in specs):
        from hotswapd.steer.bpf import kernel_accepts

        refused = kernel_accepts()
        if refused is not None and steering == "on":
            raise UsageError(
                f"--steering on: {refused} (use --steering auto or off to "
                "share one socket between generations)"
            )
    bound: list[Listener] = []
    try:
        for spec in specs:
            if spec.kind == "unix":
                listener = _bind_unix(spec)
                listener.why = "unix sockets cannot be steered"
            elif steering == "off":
                listener = _bind_tcp(spec, reuseport=False)
                listener.why = "--steering off"
            elif refused is not None:
                listener = _bind_tcp(spec, reuseport=False)
                listener.why = f"the kernel refuses the steering program: {refused}"
            else:
                listener = _bind_tcp(spec, reuseport=True)
                listener.mode = STEERED
                listener.why = STEERED_WHY
            bound.append(listener)
    except BaseException:
        close_all(bound)
        raise
    return bound


def _bind_tcp(spec: ListenSpec, reuseport: bool = False) -> Listener:
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
        if reuseport:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
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
        return (
            f"port {port} is already in use (another server or an old hotswapd holds it; "
            "stop it or choose another port)"
        )
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
        raise ListenError(
            f"{where}: directory {directory} does not exist (create it, or mount a volume there)"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(
                f"{where}: {path} exists and is not a socket (remove it or choose another path)"
            )
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


def relisten(sock: _socket.socket) -> bool:
    """listen() again on a socket a child shut down (SO_ACCEPTCONN 0); True if it had to.

    A shared socket is one for all generations: a candidate's shutdown(SHUT_RD) stops
    it for everyone, and the next generation would inherit a dead listener.
    """
    try:
        if sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN):
            return False
    except OSError:
        return False  # closed: nothing to repair
    sock.listen(BACKLOG)
    return True


def needs_probe_listener(
    health: str | None, health_url: str | None, listeners: Sequence[Listener]
) -> bool:
    """Only a shared `--health PATH` needs one: steered, probes use the public address.

    With no --listen at all the child gets no socket and no LISTEN_* variable, as
    under tini or systemd without sockets; a health check then needs --health-url.
    """
    if health is None or health_url is not None or not listeners:
        return False
    return not any(each.steered for each in listeners)


def make_probe_listener() -> _socket.socket:
    """A private loopback listener for one generation's health probe (close-on-exec)."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    sock.bind((b"127.0.0.1", 0))
    sock.listen(64)
    return sock


def accept_queue_length(sock: _socket.socket) -> int:
    """Connections waiting in a TCP listener's accept queue (tcpi_unacked of TCP_INFO).

    A listener whose queue is non-empty after the health timeout was never accepted
    on: the server ignores some of its inherited listeners.
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
