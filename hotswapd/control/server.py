"""The control socket: HTTP over a unix socket, for `hotswapd ctl`, `deploy` and `health`.

Design notes:

- It is an event source like the signal handlers and the watcher: a request becomes a
  `SwapRequested` (through `Supervisor.request_swap`) or `SignalRequested` on the
  supervisor's queue, and the answer comes back through the event's reply future and
  phase callback. This server never changes supervisor state; it reads it for
  `GET /status` through `status.build_status`.
- Access control is the file mode: the socket is created 0600 (its inode mode is set with
  fchmod and a umask before bind, so there is no window where it is wider, and no chmod
  by path that a symlink could redirect) in a directory created 0700, and every
  connection's SO_PEERCRED is checked as well, so only root and hotswapd's own user get in.
- Requests are read by `control.http` within bounds of size, time and number; their
  fields are data, checked one by one (a `wait` that is not a JSON boolean is a 400, a
  `reason` is cut to REASON_MAX characters), never keyword arguments.
- The socket is bound here, not by a library: a listening socket made by `socket()` is
  close-on-exec from creation, so no generation ever inherits it.
- One path per container: a dead hotswapd's socket (connect refused) is replaced, a live
  one is never stolen. An unusable default path (a read-only /run, a root-owned
  /run/hotswapd under an arbitrary uid) falls back to the next default with one log line.

Protocol (documented in docs/operations.md): GET /status; GET /health; POST /reload and
POST /rollback with {"wait": bool, "reason": str} (with wait: newline-delimited JSON, one
{"phase": ...} object per swap phase as it happens, then one {"outcome": {...}}); POST
/signal with {"signal": "HUP"}.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from hotswapd.boot.config import Config
from hotswapd.boot.control_paths import default_choice, dir_problem, server_path, server_problem
from hotswapd.boot.units import BadValue, signal_for, signal_name
from hotswapd.control.health import HealthCheck
from hotswapd.control.http import (
    HTTPError,
    Limits,
    Reply,
    Request,
    Server,
    adopt,
)
from hotswapd.control.status import build_status, hash_executables
from hotswapd.core.events import SignalRequested
from hotswapd.core.view import SupervisorView
from hotswapd.errors import HotswapdError, UsageError
from hotswapd.host.unixsock import socket_state

SHUTDOWN_TIMEOUT_S = 2.0  # open `reload --wait` streams are told "stopping", then cut
REASON_MAX = 200  # characters of a client's `reason` kept in logs and the status
LIMITS = Limits(head_timeout_s=5.0, max_head=8192, max_body=16 * 1024, max_connections=32)


def bind(path: str, explicit: bool = True) -> socket.socket:
    """Bind a 0600 listening socket at `path`, replacing a stale one (never a live one)."""
    problem = server_problem(path, explicit)
    if problem:
        raise UsageError(problem) if explicit else HotswapdError(problem)
    state = socket_state(path)
    if state == "live":
        raise HotswapdError(
            f"--control-socket {path}: another hotswapd is listening there "
            "(stop it, or give this one another --control-socket)"
        )
    if state == "not-a-socket":
        raise HotswapdError(
            f"--control-socket {path}: a file that is not a socket is in the way "
            "(remove it or choose another path)"
        )
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        problem = dir_problem(directory, explicit)  # made by someone else in between?
        if problem:
            raise HotswapdError(f"--control-socket {path}: {problem}")
        if state == "stale":
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # The new file's mode is the socket inode's mode less the umask: both say 0600,
            # so the file is never wider, and nothing is changed by path after bind.
            os.fchmod(sock.fileno(), 0o600)
            old_umask = os.umask(0o177)  # no threads in hotswapd: the umask is ours alone
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise HotswapdError(
            f"--control-socket {path}: cannot create it: "
            f"{exc.strerror or exc} (choose a writable directory)"
        ) from None
    return sock


def bounded_reason(value: object, default: str) -> str:
    """A client's free text, safe to log: a string, printable, at most REASON_MAX chars."""
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise HTTPError(400, "reason: must be a string")
    text = "".join(ch if ch.isprintable() else "?" for ch in value[: REASON_MAX + 1])
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"


def wait_flag(body: dict[str, Any]) -> bool:
    value = body.get("wait", False)
    if not isinstance(value, bool):
        raise HTTPError(400, "wait: must be true or false (a JSON boolean)")
    return value


class ControlServer:
    """The request handlers; each one reads status or posts one event."""

    def __init__(self, supervisor: SupervisorView, log: Any, path: str, config: Config) -> None:
        self.supervisor = supervisor
        self.log = log
        self.path = path
        self.health_check = HealthCheck(supervisor, config)
        self._streams: set[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = set()
        self._routes: dict[tuple[str, str], Callable[[Request, Reply], Awaitable[None]]] = {
            ("GET", "/status"): self.status,
            ("GET", "/health"): self.health,
            ("POST", "/reload"): self.reload,
            ("POST", "/rollback"): self.rollback,
            ("POST", "/signal"): self.signal,
        }

    async def handle(self, request: Request, reply: Reply) -> None:
        # Defence in depth behind the 0600 mode: refuse any uid but root and our own.
        if request.peer_uid not in (0, os.geteuid()):
            raise HTTPError(403, "permission denied")
        route = self._routes.get((request.method, request.path))
        if route is None:
            known = {path for _, path in self._routes}
            if request.path in known:
                raise HTTPError(405, f"{request.method} is not allowed on {request.path}")
            raise HTTPError(404, f"no such route: {request.path[:100]}")
        await route(request, reply)

    def stop_streams(self) -> None:
        for queue in self._streams:
            queue.put_nowait(None)

    async def status(self, request: Request, reply: Reply) -> None:
        await hash_executables(self.supervisor)  # chunked, yielding to the loop
        await reply.json(200, build_status(self.supervisor, self.path))

    async def health(self, request: Request, reply: Reply) -> None:
        verdict = await self.health_check.verdict()
        await reply.json(200 if verdict["healthy"] else 503, verdict)

    async def reload(self, request: Request, reply: Reply) -> None:
        await self._swap(request, reply, rollback=False)

    async def rollback(self, request: Request, reply: Reply) -> None:
        await self._swap(request, reply, rollback=True)

    async def signal(self, request: Request, reply: Reply) -> None:
        given = request.json().get("signal", "")
        if not isinstance(given, str | int) or isinstance(given, bool):
            raise HTTPError(400, "signal: must be a name or a number")
        try:
            # The rule of --watch PATH=signal:NAME: never a job-control or child-state signal.
            signum = signal_for("watch")(str(given))
        except BadValue as exc:
            raise HTTPError(400, f"signal {str(given)[:40]!r}: {exc}") from None
        self.supervisor.post(SignalRequested(signum, source="ctl"))
        active = self.supervisor.active
        await reply.json(
            202, {"signal": signal_name(signum), "generation": active.number, "pid": active.pid}
        )

    async def _swap(self, request: Request, reply: Reply, rollback: bool) -> None:
        body = request.json()
        kind = "rollback" if rollback else "reload"
        wait = wait_flag(body)
        reason = bounded_reason(body.get("reason"), f"ctl {kind}")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        answer.add_done_callback(lambda _: queue.put_nowait(None))
        self.log.info(
            "control_request",
            request=kind,
            wait=wait,
            reason=reason,
            peer_uid=request.peer_uid,
            peer_pid=request.peer_pid,
        )

        def on_phase(name: str, fields: dict[str, Any]) -> None:
            queue.put_nowait((name, fields))

        self.supervisor.request_swap(
            "ctl", reason, rollback=rollback, reply=answer, on_phase=on_phase if wait else None
        )
        if not wait:
            await reply.json(202, {"accepted": kind})
            return
        await reply.start_stream("application/x-ndjson")
        self._streams.add(queue)
        try:
            while (item := await queue.get()) is not None:
                await reply.line(_phase(item))
            while not queue.empty():  # phases reported just before the outcome
                if (item := queue.get_nowait()) is not None:
                    await reply.line(_phase(item))
            if answer.done():
                await reply.line({"outcome": answer.result().as_dict()})
            else:
                await reply.line({"error": "hotswapd is stopping; the outcome is unknown"})
        except (ConnectionError, TimeoutError):
            self.log.info("control_client_gone", request=kind)  # the swap goes on regardless
        finally:
            self._streams.discard(queue)


def _phase(item: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    name, fields = item
    return {"phase": name, **fields}


async def start_control(
    config: Config, supervisor: SupervisorView, log: Any, bound: _socket.socket | None = None
) -> Callable[[], Awaitable[None]]:
    """Serve the control socket; returns the function that closes and removes it.

    `bound`: the explicit --control-socket, already bound and listening at its path by the
    run mode before the first fork (boot/sockets.py); without it the socket is bound here.
    """
    path, explicit = server_path(config, os.environ)
    if bound is not None and path is not None:
        return await _serve_control(config, supervisor, log, path, adopt(bound))

    async def nothing() -> None:
        return None

    if not explicit:
        chosen, skipped = default_choice(os.environ)
        if skipped and chosen is not None:
            log.info("control_path_fallback", path=chosen, skipped=skipped)
    if path is None:
        log.warning(
            "control_disabled",
            reason="--control-socket off"
            if explicit
            else "no writable runtime directory (/run, $XDG_RUNTIME_DIR, /tmp)",
            fix="give --control-socket PATH in a writable directory",
        )
        return nothing
    try:
        sock = bind(path, explicit)
    except HotswapdError as exc:
        if explicit:
            raise
        log.warning(
            "control_disabled",
            reason=str(exc),
            fix="give this hotswapd its own --control-socket PATH",
        )
        return nothing
    return await _serve_control(config, supervisor, log, path, sock)


async def _serve_control(
    config: Config, supervisor: SupervisorView, log: Any, path: str, sock: socket.socket
) -> Callable[[], Awaitable[None]]:
    identity = os.stat(path)
    control = ControlServer(supervisor, log, path, config)
    limits = LIMITS.capped()
    events = ("control_accept_failed", "control_request_failed")
    server = Server(events, sock, control.handle, log, limits)
    server.start()
    log.info("control_listening", path=path, mode="0600")

    async def close() -> None:
        control.stop_streams()
        await server.close(SHUTDOWN_TIMEOUT_S)
        await control.health_check.close()
        with contextlib.suppress(OSError):  # remove it only if it is still ours
            current = os.stat(path)
            if (current.st_dev, current.st_ino) == (identity.st_dev, identity.st_ino):
                os.unlink(path)

    return close
