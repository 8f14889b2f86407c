"""A tiny HTTP/1.1 GET client for probes: everything a child sends is read within bounds.

Why not aiohttp here: a probe must leave from a reserved source (steer/probe.py) on a
socket hotswapd made, must never follow a redirect, and must never buffer a body the
child chose the size of (a 1.5 GB `/healthz` once took PID 1 to 2.6 GiB). So: the
status line and headers up to `MAX_HEAD` bytes, at most `MAX_BODY` bytes of body, and
the connection is closed rather than drained when the body is longer. A connection
whose answer was read in full (Content-Length or chunked, keep-alive) stays usable
for the next request to the same generation (`Connection.get`), e.g. its /metrics.
"""

from __future__ import annotations

import asyncio
import socket

MAX_HEAD = 16 * 1024  # status line + headers
MAX_BODY = 4 * 1024  # what a verdict needs; the rest is cut, never buffered
MAX_HEADERS = 100


class ProtocolError(Exception):
    """The peer's answer is not HTTP/1.x within the bounds; the message says how."""


class Response:
    """Status, headers (lower-case names, first value wins) and the first MAX_BODY bytes."""

    __slots__ = ("status", "reason", "headers", "body", "truncated")

    def __init__(
        self, status: int, reason: str, headers: dict[str, str], body: bytes, truncated: bool
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.truncated = truncated

    @property
    def redirect(self) -> bool:
        return 300 <= self.status < 400


class Connection:
    """One connected stream to one generation; reusable while answers are complete."""

    def __init__(self, sock: socket.socket, host_header: str) -> None:
        self.sock = sock
        self.host_header = host_header
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.reusable = True

    async def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                sock=self.sock, limit=MAX_HEAD
            )
        return self._reader, self._writer

    async def get(self, path: str) -> Response:
        """GET `path`; raises ProtocolError, OSError or asyncio.IncompleteReadError."""
        if not self.reusable:
            raise ProtocolError("the connection was closed after the previous answer")
        reader, writer = await self._streams()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            "User-Agent: hotswapd-probe\r\nAccept: */*\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        self.reusable = False  # until the answer has been read to its end
        status, reason, headers = await _read_head(reader)
        body, complete = await _read_body(reader, headers)
        keep = headers.get("connection", "").lower() != "close"
        self.reusable = complete and keep
        if complete and not keep:
            # The server said it closes: wait for that (bounded, nothing kept), so the
            # answer is judged once the peer is done with it, as a browser would.
            await reader.read(MAX_BODY)
        if not self.reusable:
            self.close()
        return Response(status, reason, headers, body, not complete)

    def close(self) -> None:
        self.reusable = False
        if self._writer is not None:
            self._writer.close()
        else:
            self.sock.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"status line and headers longer than {MAX_HEAD} bytes") from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ProtocolError("the connection closed before any answer") from None
        raise ProtocolError("the connection closed in the middle of the headers") from None
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        if len(headers) >= MAX_HEADERS:
            raise ProtocolError(f"more than {MAX_HEADERS} headers")
        headers.setdefault(name.strip().lower(), value.strip())
    return int(code), reason, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> tuple[bytes, bool]:
    """Up to MAX_BODY bytes; complete=False when the rest was left unread (then: close)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await _read_chunked(reader)
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise ProtocolError(f"bad Content-Length {length_text[:40]!r}")
        length = int(length_text)
        body = await reader.readexactly(min(length, MAX_BODY))
        return body, length <= MAX_BODY
    body = await reader.read(MAX_BODY)  # until close: never reusable
    return body, False


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    body = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return body, True
        if len(body) + size > MAX_BODY:
            body += await reader.readexactly(MAX_BODY - len(body))
            return body, False
        body += await reader.readexactly(size)
        await reader.readexactly(2)
