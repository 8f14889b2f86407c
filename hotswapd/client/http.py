"""HTTP/1.1 over the control socket, with the stdlib only: the client side of `ctl`,
`deploy` and `health`.

Design notes:

- Not aiohttp, not even http.client: `hotswapd ctl status` and `hotswapd health` (run by
  a Docker HEALTHCHECK every few seconds) should cost a few milliseconds of imports.
  The server is ours and always answers `Connection: close` with either a
  Content-Length or a body that ends at EOF, so this reader needs nothing more.
- The server is believed only after its credentials are checked: SO_PEERCRED must name
  root or this user. Anyone who could replace the socket file (a writable directory)
  would otherwise be trusted with a status that names the file `deploy` overwrites.
- Everything read is bounded: the header block, the body, each line of a stream.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

from hotswapd.errors import HotswapdError

MAX_HEAD = 64 * 1024  # status line and headers
MAX_BODY = 16 * 1024 * 1024  # one JSON answer (the status document is a few KiB)
MAX_LINE = 1024 * 1024  # one line of a reload --wait stream
CONNECT_TIMEOUT_S = 5.0
_CHUNK = 65536


class Answer:
    """One response: its status, its headers, then its body read on demand."""

    def __init__(self, sock: socket.socket, status: int, headers: dict[str, str], rest: bytes):
        self.sock = sock
        self.status = status
        self.headers = headers
        self._buffer = rest

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def _more(self) -> bool:
        try:
            data = self.sock.recv(_CHUNK)
        except TimeoutError:
            raise HotswapdError("the control socket stopped answering") from None
        except OSError as exc:
            raise HotswapdError(f"the control socket failed: {exc.strerror or exc}") from None
        self._buffer += data
        return bool(data)

    def json(self) -> dict[str, Any]:
        """The whole body as one JSON object (bounded by MAX_BODY)."""
        length = self.headers.get("content-length")
        want = int(length) if length is not None and length.isdigit() else None
        if want is not None and want > MAX_BODY:
            raise HotswapdError(f"the control socket sent a {want}-byte answer (limit {MAX_BODY})")
        while (want is None or len(self._buffer) < want) and len(self._buffer) <= MAX_BODY:
            if not self._more():
                break
        if len(self._buffer) > MAX_BODY:
            raise HotswapdError(f"the control socket sent more than {MAX_BODY} bytes")
        return _object(self._buffer[:want] if want is not None else self._buffer)

    def lines(self) -> Iterator[dict[str, Any]]:
        """Each line of a newline-delimited JSON stream, as it arrives, until EOF."""
        while True:
            while b"\n" not in self._buffer:
                if len(self._buffer) > MAX_LINE:
                    raise HotswapdError(f"the control socket sent a line over {MAX_LINE} bytes")
                if not self._more():
                    if self._buffer.strip():
                        yield _object(self._buffer)
                    return
            line, _, self._buffer = self._buffer.partition(b"\n")
            if line.strip():
                yield _object(line)


def _object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise HotswapdError("the control socket answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise HotswapdError("the control socket answered JSON that is not an object")
    return data


class Connection:
    """One request on one connection to the control socket at `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def not_listening(self) -> HotswapdError:
        return HotswapdError(
            f"no hotswapd is listening on {self.path} "
            "(is it running? is --control-socket the same?)"
        )

    def denied(self) -> HotswapdError:
        return HotswapdError(
            f"permission denied on {self.path} (run as the user hotswapd runs as, usually root)"
        )

    def failed(self, exc: OSError) -> HotswapdError:
        """The one-line message for a transport error."""
        if exc.errno in (errno.EACCES, errno.EPERM):
            return self.denied()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            return self.not_listening()
        if isinstance(exc, TimeoutError):
            return HotswapdError(f"control socket {self.path}: no answer in time")
        return HotswapdError(f"control socket {self.path}: {exc.strerror or exc}")

    def request(
        self,
        method: str,
        route: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = 30.0,
    ) -> Answer:
        """Send one request and read the status line and headers (not the body yet).

        `timeout` bounds each read; None waits as long as the server takes (a swap).
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(self.path)
            check_peer(sock, self.path)
            sock.settimeout(timeout)
            payload = b"" if body is None else json.dumps(body).encode()
            head = (
                f"{method} {route} HTTP/1.1\r\nHost: hotswapd\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            )
            sock.sendall(head.encode() + payload)
            return _read_head(sock)
        except OSError as exc:
            sock.close()
            raise self.failed(exc) from None
        except BaseException:
            sock.close()
            raise


def check_peer(sock: socket.socket, path: str) -> None:
    """Refuse a server that is neither root nor this user (it could have replaced the file)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    if uid not in (0, os.geteuid()):
        raise HotswapdError(
            f"control socket {path} is served by uid {uid} (pid {pid}), not by root or this "
            f"user (uid {os.geteuid()}): refusing to trust it (who can write to "
            f"{os.path.dirname(path) or '.'}?)"
        )


def _read_head(sock: socket.socket) -> Answer:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise HotswapdError(f"the control socket sent a header over {MAX_HEAD} bytes")
        data = sock.recv(_CHUNK)
        if not data:
            raise HotswapdError("the control socket closed the connection without an answer")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HotswapdError(f"the control socket answered {status_line[:80]!r}, not HTTP")
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise HotswapdError("the control socket answered with a chunked body (not hotswapd's)")
    return Answer(sock, int(parts[1]), headers, rest)
