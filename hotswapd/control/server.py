"""The control socket: HTTP over a unix socket, for `hotswapd ctl` and `hotswapd deploy`.

Design notes:

- It is an event source like the signal handlers and the watcher: a request becomes a
  `SwapRequested` (through `Supervisor.request_swap`) or `SignalRequested` on the
  supervisor's queue, and the answer comes back through the event's reply future and
  phase callback. This server never changes
  supervisor state; it reads it for `GET /status` through `status.build_status`.
- Access control is the file mode: the socket is created 0600 (under a umask, so there
  is no window where it is wider) in a directory created 0700, and every connection's
  SO_PEERCRED is checked as well, so only root and hotswapd's own user get in.
- The socket is bound here, not by aiohttp: a listening socket made by `socket()` is
  close-on-exec from creation, so no generation ever inherits it.
- One path per container: a dead hotswapd's socket (connect refused) is replaced, a live
  one is never stolen. The default path falls back to a per-user runtime directory when
  /run is not writable (a non-root or read-only-root container).

Protocol (documented in docs/operations.md): GET /status; POST /reload and POST /rollback
with {"wait": bool} (with wait: newline-delimited JSON, one {"phase": ...} object per swap
phase as it happens, then one {"outcome": {...}}); POST /signal with {"signal": "HUP"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hotswapd.boot.config import Config
from hotswapd.boot.control_paths import server_path
from hotswapd.boot.signals import name as signal_name
from hotswapd.boot.units import BadValue, parse_signal
from hotswapd.control.status import build_status
from hotswapd.core.events import SignalRequested
from hotswapd.errors import HotswapdError
from hotswapd.host.unixsock import socket_state

SHUTDOWN_TIMEOUT_S = 2.0  # open `reload --wait` streams are told "stopping", then cut


def bind(path: str) -> socket.socket:
    """Bind a 0600 listening socket at `path`, replacing a stale one (never a live one)."""
    state = socket_state(path)
    if state == "live":
        raise HotswapdError(f"--control-socket {path}: another hotswapd is listening there "
                            "(stop it, or give this one another --control-socket)")  # fmt: skip
    if state == "not-a-socket":
        raise HotswapdError(f"--control-socket {path}: a file that is not a socket is in the "
                            "way (remove it or choose another path)")  # fmt: skip
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if state == "stale":
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)  # no threads in hotswapd: the umask is ours alone
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
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


def _peer_uid(request: web.Request) -> int | None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


@web.middleware
async def _only_owner(request: web.Request, handler: Any) -> web.StreamResponse:
    """Defence in depth behind the 0600 mode: refuse any uid but root and our own."""
    if _peer_uid(request) not in (0, os.geteuid()):
        return web.json_response({"error": "permission denied"}, status=403)
    response: web.StreamResponse = await handler(request)
    return response


class ControlServer:
    """The request handlers; each one reads status or posts one event."""

    def __init__(self, supervisor: Any, log: Any, path: str) -> None:
        self.supervisor = supervisor
        self.log = log
        self.path = path
        self._streams: set[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_only_owner])
        app.router.add_get("/status", self.status)
        app.router.add_post("/reload", self.reload)
        app.router.add_post("/rollback", self.rollback)
        app.router.add_post("/signal", self.signal)
        return app

    def stop_streams(self) -> None:
        for queue in self._streams:
            queue.put_nowait(None)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(build_status(self.supervisor, self.path))

    async def reload(self, request: web.Request) -> web.StreamResponse:
        return await self._swap(request, rollback=False)

    async def rollback(self, request: web.Request) -> web.StreamResponse:
        return await self._swap(request, rollback=True)

    async def signal(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            signum = parse_signal(str(body.get("signal", "")))
        except BadValue as exc:
            return web.json_response({"error": f"signal {body.get('signal')!r}: {exc}"},
                                     status=400)  # fmt: skip
        self.supervisor.post(SignalRequested(signum, source="ctl"))
        active = self.supervisor.active
        return web.json_response({"signal": signal_name(signum), "generation": active.number,
                                  "pid": active.pid}, status=202)  # fmt: skip

    async def _swap(self, request: web.Request, rollback: bool) -> web.StreamResponse:
        body = await _body(request)
        kind = "rollback" if rollback else "reload"
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        reply.add_done_callback(lambda _: queue.put_nowait(None))
        wait = bool(body.get("wait", False))
        self.log.info("control_request", request=kind, wait=wait, peer_uid=_peer_uid(request))

        def on_phase(name: str, fields: dict[str, Any]) -> None:
            queue.put_nowait((name, fields))

        self.supervisor.request_swap(
            "ctl", str(body.get("reason") or f"ctl {kind}"), rollback=rollback, reply=reply,
            on_phase=on_phase if wait else None,
        )  # fmt: skip
        if not wait:
            return web.json_response({"accepted": kind}, status=202)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        self._streams.add(queue)
        try:
            while (item := await queue.get()) is not None:
                await _line(response, {"phase": item[0], **item[1]})
            while not queue.empty():  # phases reported just before the outcome
                if (item := queue.get_nowait()) is not None:
                    await _line(response, {"phase": item[0], **item[1]})
            if reply.done():
                await _line(response, {"outcome": reply.result().as_dict()})
            else:
                await _line(response, {"error": "hotswapd is stopping; the outcome is unknown"})
            await response.write_eof()
        except ConnectionResetError:
            self.log.info("control_client_gone", request=kind)  # the swap goes on regardless
        finally:
            self._streams.discard(queue)
        return response


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "the body is not JSON"}') from None
    return data if isinstance(data, dict) else {}


async def _line(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write((json.dumps(data, default=str) + "\n").encode())


async def start_control(config: Config, supervisor: Any, log: Any) -> Callable[[], Awaitable[None]]:
    """Serve the control socket; returns the function that closes and removes it."""
    path, explicit = server_path(config, os.environ)

    async def nothing() -> None:
        return None

    if path is None:
        log.warning("control_disabled", reason="--control-socket off" if explicit else
                    "no writable runtime directory (/run, $XDG_RUNTIME_DIR, /tmp)",
                    fix="give --control-socket PATH in a writable directory")  # fmt: skip
        return nothing
    try:
        sock = bind(path)
    except HotswapdError as exc:
        if explicit:
            raise
        log.warning("control_disabled", reason=str(exc),
                    fix="give this hotswapd its own --control-socket PATH")  # fmt: skip
        return nothing
    identity = os.stat(path)
    server = ControlServer(supervisor, log, path)
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    log.info("control_listening", path=path, mode="0600")

    async def close() -> None:
        server.stop_streams()
        await runner.cleanup()
        with contextlib.suppress(OSError):  # remove it only if it is still ours
            current = os.stat(path)
            if (current.st_dev, current.st_ino) == (identity.st_dev, identity.st_ino):
                os.unlink(path)

    return close
