"""Reading a generation's own /metrics: one bounded HTTP exchange, then the text parser.

What a child sends is untrusted (DESIGN rule 11): the whole answer is read within a
byte limit and a deadline, a redirect is a failure (never followed), and only the
Prometheus text format is asked for and accepted — `Accept: text/plain;version=0.0.4`
keeps promhttp from answering in protobuf or OpenMetrics, and no `Accept-Encoding`
keeps the body uncompressed. The request says `Connection: close`; the body may still
come with a Content-Length, chunked, or until EOF, and all three are read.

The connection is the caller's: hotswapd opens it through the public address, steered
to the generation it means (steer/probe.py), and hands over the stream pair.
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from hotswapd.gates.analysis import series_key

TYPE_CHECKING = False  # see boot/config.py
if TYPE_CHECKING:
    import socket
    from collections.abc import Collection

    from hotswapd.gates.analysis import SeriesKey

DEFAULT_MAX_BYTES = 4 << 20  # a Go server's /metrics is ~10 KiB; thousands of series fit
DEFAULT_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 16 << 10


class ScrapeError(Exception):
    """A scrape that could not be used; the message is one line for the log and reason."""


def request(path: str, host: str) -> bytes:
    """The GET for `path`; `host` is the Host header (the listener's address)."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hotswapd\r\n"
        "Accept: text/plain;version=0.0.4\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


async def _line(reader: asyncio.StreamReader, budget: int) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise ScrapeError("a header line longer than the reader's limit") from None
    except asyncio.IncompleteReadError as exc:
        raise ScrapeError(
            f"the connection closed mid-header after {len(exc.partial)} bytes"
        ) from None
    if len(line) > budget:
        raise ScrapeError(f"headers over {MAX_HEADER_BYTES} bytes")
    return line


async def _body(reader: asyncio.StreamReader, headers: dict[str, str], max_bytes: int) -> bytes:
    def too_big(size: int) -> ScrapeError:
        return ScrapeError(f"the body is over {max_bytes} bytes ({size} or more)")

    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        size = 0
        while True:
            header = await _line(reader, MAX_HEADER_BYTES)
            try:
                length = int(header.split(b";")[0].strip(), 16)
            except ValueError:
                raise ScrapeError("a malformed chunk size") from None
            if length == 0:
                return b"".join(chunks)  # trailers, if any, are left unread
            size += length
            if size > max_bytes:
                raise too_big(size)
            try:
                chunks.append(await reader.readexactly(length))
                await reader.readexactly(2)  # the CRLF after each chunk
            except asyncio.IncompleteReadError:
                raise ScrapeError("the connection closed mid-chunk") from None
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ScrapeError("a malformed Content-Length") from None
        if length > max_bytes:
            raise too_big(length)
        try:
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise ScrapeError(
                f"the body ended after {len(exc.partial)} of {length} bytes"
            ) from None
    body = bytearray()  # until EOF, reading one byte past the limit to see it
    while len(body) <= max_bytes:
        more = await reader.read(max_bytes + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > max_bytes:
        raise too_big(len(body))
    return bytes(body)


async def read_response(reader: asyncio.StreamReader, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The body of a 200 answer, or ScrapeError (status, redirect, size); no time bound here."""
    budget = MAX_HEADER_BYTES
    status_line = await _line(reader, budget)
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ScrapeError(f"not an HTTP answer: {status_line[:60]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        budget -= len(status_line)
        status_line = await _line(reader, budget)
        if status_line in (b"\r\n", b"\n"):
            break
        name, _, value = status_line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if 300 <= status < 400:
        where = headers.get("location", "nowhere")
        raise ScrapeError(f"answered HTTP {status} (a redirect to {where[:100]}; not followed)")
    if status != 200:
        raise ScrapeError(f"answered HTTP {status}")
    content_type = headers.get("content-type", "text/plain")
    if not content_type.startswith("text/plain"):
        raise ScrapeError(f"answered {content_type[:60]}, not the Prometheus text format")
    if headers.get("content-encoding", "identity").lower() != "identity":
        raise ScrapeError(f"answered with Content-Encoding {headers['content-encoding'][:30]}")
    return await _body(reader, headers, max_bytes)


def _kept_lines(text: str, keep: Collection[str]) -> str:
    """The exposition with only the samples named in `keep` (and every comment line).

    prometheus_client's parser costs ~40-60 µs per sample line, on the event loop; a
    line's sample name is everything before its `{` or first blank, so dropping the
    lines no rule reads is a str scan, and a large /metrics costs only what is used.
    """
    kept: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            kept.append(line)  # HELP and TYPE: a few per family, and they type the samples
            continue
        end = len(line)
        for stop in ("{", " ", "\t"):
            at = line.find(stop)
            if 0 <= at < end:
                end = at
        if line[:end] in keep:
            kept.append(line)
    return "\n".join(kept) + "\n"


def parse(body: bytes | str, keep: Collection[str] | None = None) -> dict[SeriesKey, float]:
    """A Snapshot of the exposition: every sample (or those named in `keep`) by series.

    A sample name appearing twice with one label set keeps its last value; a body that
    is not the text format raises ScrapeError with the parser's complaint (only about
    the kept lines, when `keep` is given).
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if keep is not None:
        text = _kept_lines(text, keep)
    snapshot: dict[SeriesKey, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if keep is None or sample.name in keep:
                    snapshot[series_key(sample.name, sample.labels)] = float(sample.value)
    except (ValueError, TypeError, IndexError) as exc:  # the parser's ways of saying "malformed"
        raise ScrapeError(f"not the Prometheus text format: {str(exc)[:120]}") from None
    return snapshot


async def scrape(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    path: str,
    host: str,
    *,
    keep: Collection[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    within: float = DEFAULT_TIMEOUT_S,
) -> dict[SeriesKey, float]:
    """GET `path` on an open connection and parse the answer, all within `within` seconds.

    Always closes the writer: one scrape per connection, as `Connection: close` says.
    """
    try:
        async with asyncio.timeout(within):
            writer.write(request(path, host))
            await writer.drain()
            body = await read_response(reader, max_bytes)
    except TimeoutError:
        raise ScrapeError(f"no complete answer within {within:g}s") from None
    except OSError as exc:
        raise ScrapeError(f"the connection failed: {exc.strerror or exc}") from None
    finally:
        writer.close()
    return parse(body, keep)


async def scrape_socket(
    sock: socket.socket,
    path: str,
    host: str,
    *,
    keep: Collection[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    within: float = DEFAULT_TIMEOUT_S,
) -> dict[SeriesKey, float]:
    """`scrape` over a connected socket (what `ProbeSource.connect` gives); closes it."""
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except OSError as exc:
        sock.close()
        raise ScrapeError(f"the connection failed: {exc.strerror or exc}") from None
    return await scrape(reader, writer, path, host, keep=keep, max_bytes=max_bytes, within=within)
