"""A small bounded HTTP/1.1 server for the control socket and `/metrics`.

Design notes (why not aiohttp's web server here):

- Everything a client sends is untrusted and must be read within bounds of size, time and
  number. aiohttp's server has no deadline for a request that never arrives: 300
  connections that send nothing held 300 fds of PID 1 for ever, its accept errors were
  logged with one traceback each (27 MB in 20 s at `ulimit -n 256`), and the swaps that
  followed failed with EMFILE. Here every connection has a deadline for its request head
  and body, the number of open connections is capped (beyond the cap the kernel's
  backlog holds the rest and no fd is spent on them), and a failed accept pauses
  accepting for a moment with one rate-limited log line.
- One request per connection, always answered `Connection: close`: there is no idle
  keep-alive to bound, and a streamed answer (`reload --wait`) simply ends at EOF, so
  the client needs no chunked decoding. Prometheus and curl are fine with that.
- Requests are dispatched to one handler; a handler that fails gets a 500 and one log
  line, never a traceback per request.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import json
import resource
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

ACCEPT_RETRY_S = 1.0  # after EMFILE and friends: let fds free up before trying again
WRITE_TIMEOUT_S = 10.0  # a client that stops reading is dropped
LOG_EVERY_S = 10.0
LINGER_S = 1.0  # after an error answer, how long unread input is drained ...
LINGER_BYTES = (
    1024 * 1024
)  # ... and how much of it  # one line per kind of trouble per this many seconds

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Limits:
    """How much one client may send, how long it may take, how many may be connected."""

    head_timeout_s: float = 5.0  # request line, headers and body, from accept
    max_head: int = 8192
    max_body: int = 64 * 1024
    max_connections: int = 32

    def capped(self) -> Limits:
        """These limits with `max_connections` held under the fd limit (connection_cap)."""
        return replace(self, max_connections=connection_cap(self.max_connections))


def adopt(bound: _socket.socket) -> socket.socket:
    """A socket bound by the import-light run mode (`_socket`), as a full, non-blocking one."""
    sock = socket.socket(fileno=bound.detach())
    sock.setblocking(False)
    return sock


def connection_cap(wanted: int) -> int:
    """At most `wanted`, and never more than an eighth of RLIMIT_NOFILE: the server's own
    fds (listeners, generations, probes) must survive a full house of clients."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(2, min(wanted, soft // 8))


@dataclass
class Request:
    """One parsed request; `body` is at most Limits.max_body bytes."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer_pid: int | None
    peer_uid: int | None

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); HTTPError 400 otherwise."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise HTTPError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return data


class HTTPError(Exception):
    """Answer with this status and a one-line JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Reply:
    """The way back to one client: a whole answer, or a stream that ends at EOF."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.started = False

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT_S)

    def _head(self, status: int, content_type: str, length: int | None) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"Content-Type: {content_type}",
            "Connection: close",
        ]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def send(self, status: int, body: bytes, content_type: str) -> None:
        self.started = True
        await self._write(self._head(status, content_type, len(body)) + body)

    async def json(self, status: int, data: dict[str, Any]) -> None:
        await self.send(status, json.dumps(data, default=str).encode(), "application/json")

    async def start_stream(self, content_type: str) -> None:
        self.started = True
        await self._write(self._head(200, content_type, None))

    async def line(self, data: dict[str, Any]) -> None:
        await self._write((json.dumps(data, default=str) + "\n").encode())


Handler = Callable[[Request, Reply], Awaitable[None]]


@dataclass
class RateLimitedLog:
    """One warning per kind per LOG_EVERY_S, saying how many were not logged in between."""

    log: Any
    last: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def warning(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self.last.get(event, -LOG_EVERY_S) < LOG_EVERY_S:
            self.dropped[event] = self.dropped.get(event, 0) + 1
            return
        self.last[event] = now
        self.log.warning(event, **fields, not_logged_since_last=self.dropped.pop(event, 0))


class Server:
    """Accepts on `sock` (already bound and listening), within `limits`, for `handler`."""

    def __init__(
        self,
        events: tuple[str, str],
        sock: socket.socket,
        handler: Handler,
        log: Any,
        limits: Limits,
    ) -> None:
        """`events`: the log events for a failed accept and a failed request handler."""
        self.accept_failed, self.request_failed = events
        self.sock = sock
        self.handler = handler
        self.limits = limits
        self.trouble = RateLimitedLog(log)
        self.tasks: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self._unix = sock.family == socket.AF_UNIX

    def start(self) -> None:
        self.sock.setblocking(False)
        self._resume()

    def _resume(self) -> None:
        self._retry = None
        if not self._accepting and not self._closed:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)
            self._accepting = True

    def _pause(self) -> None:
        if self._accepting:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._accepting = False

    def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self.tasks) < self.limits.max_connections:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource. Stop accepting for a
                # moment (the backlog keeps the clients waiting) instead of spinning.
                self.trouble.warning(
                    self.accept_failed,
                    error=exc.strerror or str(exc),
                    errno=errno.errorcode.get(exc.errno or 0, exc.errno),
                    retry_in_s=ACCEPT_RETRY_S,
                )
                self._pause()
                self._retry = loop.call_later(ACCEPT_RETRY_S, self._resume)
                return
            task = loop.create_task(self._serve(conn))
            self.tasks.add(task)
            task.add_done_callback(self._finished)
        self._pause()  # a full house: the kernel's backlog holds the rest, costing no fd

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self._retry is None and len(self.tasks) < self.limits.max_connections:
            self._resume()

    async def _serve(self, conn: socket.socket) -> None:
        peer_pid, peer_uid = _peer(conn) if self._unix else (None, None)
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=self.limits.max_head)
        except OSError:
            conn.close()
            return
        reply = Reply(writer)
        try:
            request = await asyncio.wait_for(
                self._read(reader, peer_pid, peer_uid), self.limits.head_timeout_s
            )
            await self.handler(request, reply)
        except HTTPError as exc:
            await self._error(reply, exc.status, exc.message)
            await _linger(reader, writer)
        except TimeoutError:
            await self._error(reply, 408, "the request took too long")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback per request
            self.trouble.warning(self.request_failed, error=f"{type(exc).__name__}: {exc}"[:300])
            await self._error(reply, 500, "internal error (see hotswapd's log)")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _error(self, reply: Reply, status: int, message: str) -> None:
        if reply.started:
            return
        with contextlib.suppress(Exception):
            await reply.json(status, {"error": message})

    async def _read(
        self, reader: asyncio.StreamReader, peer_pid: int | None, peer_uid: int | None
    ) -> Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HTTPError(400, f"request head over {self.limits.max_head} bytes") from None
        except asyncio.IncompleteReadError as exc:
            if len(exc.partial) >= self.limits.max_head:
                raise HTTPError(400, f"request head over {self.limits.max_head} bytes") from None
            raise
        request_line, *fields = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HTTPError(400, "not an HTTP/1.x request line")
        headers: dict[str, str] = {}
        for line in fields:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise HTTPError(400, "malformed header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise HTTPError(501, "Transfer-Encoding is not supported; send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise HTTPError(400, "Content-Length is not a number")
        length = int(length_text)
        if length > self.limits.max_body:
            raise HTTPError(413, f"body over {self.limits.max_body} bytes")
        body = await reader.readexactly(length) if length else b""
        path = parts[1].split("?", 1)[0]
        return Request(parts[0], path, headers, body, peer_pid, peer_uid)

    async def close(self, grace_s: float) -> None:
        """Stop accepting, give open requests `grace_s`, then cut them."""
        self._closed = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
        self.sock.close()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read (and drop) a little of what the client still sends before closing: closing a
    TCP socket with unread data resets it, and the client would never see the error."""
    with contextlib.suppress(Exception):
        writer.write_eof()
        deadline = asyncio.get_running_loop().time() + LINGER_S
        dropped = 0
        while dropped < LINGER_BYTES:
            data = await asyncio.wait_for(
                reader.read(65536), deadline - asyncio.get_running_loop().time()
            )
            if not data:
                return
            dropped += len(data)


def _peer(conn: socket.socket) -> tuple[int | None, int | None]:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None, None
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid
