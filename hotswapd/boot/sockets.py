"""Every socket hotswapd serves itself, tried before the first fork.

The control socket and the metrics port are served only once the event loop runs,
after generation 1 has started. A bad `--control-socket` or a taken `--metrics` port
found then kills a server that had just started, without a drain. So the run mode
binds each one here first, before anything is spawned: a failure is one line and
exit 2, and whatever this module created (socket file, directories) is removed.

For now the sockets are released right after the spawn and `control/server.py` and
`control/metrics.py` bind their own (the window in between is milliseconds; see
`Prebound`). Import-light: `_socket`, not `socket` (see boot/listeners.py).
"""

from __future__ import annotations

import _socket
import os

from hotswapd.boot import control_paths
from hotswapd.errors import UsageError
from hotswapd.host.unixsock import socket_state

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    from collections.abc import Mapping

    from hotswapd.boot.config import Config

BACKLOG = 64


class Prebound:
    """The control socket and metrics port, bound before the first fork and held across it.

    Binding them here finds a bad socket while nothing runs yet; after the spawn the
    control server and the metrics endpoint take them over (`take_control`,
    `take_metrics`), so nothing is bound twice. `release()` is for a start that failed.
    """

    __slots__ = ("control", "control_path", "made", "metrics")

    def __init__(self) -> None:
        self.control: _socket.socket | None = None
        self.control_path = ""
        self.made: list[str] = []  # directories created for the control socket, deepest first
        self.metrics: _socket.socket | None = None

    def take_control(self) -> _socket.socket | None:
        """Hand the bound control socket over (its path and directories go with it)."""
        sock, self.control = self.control, None
        return sock

    def take_metrics(self) -> _socket.socket | None:
        sock, self.metrics = self.metrics, None
        return sock

    def release(self) -> None:
        """Close both and remove what binding created: the socket file, directories made."""
        if self.control is not None:
            self.control.close()
            self.control = None
            try:  # noqa: SIM105 - contextlib.suppress would load contextlib before the spawn
                os.unlink(self.control_path)
            except OSError:
                pass  # already gone: nothing to clean
            _remove_dirs(self.made)
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def check_all(config: Config, environ: Mapping[str, str]) -> Prebound:
    """Bind the explicit control socket and the metrics port, or raise UsageError (nothing kept).

    A default control path is not tried: an unusable one falls back to the next default
    when the control server starts (see boot/control_paths.py).
    """
    problem = control_paths.validate(config, environ)
    if problem:
        raise UsageError(problem)
    bound = Prebound()
    path, explicit = control_paths.server_path(config, environ)
    try:
        if explicit and path is not None:
            bound.control, bound.control_path, bound.made = try_control(path)
        if config.metrics is not None:
            bound.metrics = bind_metrics(config.metrics)
    except BaseException:
        bound.release()
        raise
    return bound


def try_control(path: str) -> tuple[_socket.socket, str, list[str]]:
    """Bind a 0600 unix socket at `path` as the control server will; (sock, path, dirs made)."""
    made = _make_dirs(os.path.dirname(path), path)
    if socket_state(path) == "stale":  # a dead hotswapd's: the control server replaces it too
        os.unlink(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), 0o600)  # as the control server does: never wider, even briefly
        old_umask = os.umask(0o177)  # no threads before the spawn: the umask is ours alone
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        _remove_dirs(made)
        raise UsageError(
            f"--control-socket {path}: cannot create it: {exc.strerror or exc} "
            "(choose a directory this user can write, or --control-socket off)"
        ) from None
    return sock, path, made


def _make_dirs(directory: str, path: str) -> list[str]:
    """Create the missing directories (0700) up to `directory`; the ones made, deepest first."""
    missing: list[str] = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    made: list[str] = []
    for each in reversed(missing):
        try:
            os.mkdir(each, 0o700)
        except OSError as exc:
            _remove_dirs(made)
            raise UsageError(
                f"--control-socket {path}: cannot create {each}: {exc.strerror} "
                "(choose a directory this user can write, or --control-socket off)"
            ) from None
        made.insert(0, each)
    return made


def _remove_dirs(made: list[str]) -> None:
    for directory in made:  # deepest first
        try:
            os.rmdir(directory)
        except OSError:
            return


def bind_metrics(address: str) -> _socket.socket:
    """Bind HOST:PORT as control/metrics.py does (":9100" every address, localhost 127.0.0.1).

    `address` has been checked by values.host_port: an IP literal, localhost or empty
    host, and a port 0-65535.
    """
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    host = "127.0.0.1" if host == "localhost" else host
    if host == "":
        dual = _socket.has_ipv6 and os.path.exists("/proc/net/if_inet6")
        family, host = (_socket.AF_INET6, "::") if dual else (_socket.AF_INET, "0.0.0.0")
    else:
        family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if family == _socket.AF_INET6 and host == "::":
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0)
        # bytes, not str: a str host loads the idna codec before the spawn
        sock.bind((host.encode("ascii"), int(port_text)))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"--metrics {address}: cannot listen: {exc.strerror or exc} "
            "(choose a free port on an address of this machine, e.g. --metrics :9100)"
        ) from None
    return sock
