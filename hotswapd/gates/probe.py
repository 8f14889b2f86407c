"""Health gate: an HTTP GET that only the generation being probed can answer.

Steered mode: the probe connects to the listener's own public address (loopback for
a wildcard) from the source hotswapd reserved (steer/probe.py), so the selector
sends it to the candidate and no other client's connection goes there. Shared mode:
to the candidate's private probe listener. `--health-url`: to that address.

Every answer is untrusted (gates/http.py reads it within bounds) and a redirect is
never followed: a 3xx fails the gate and says so, because following one would make
PID 1 request whatever the child names and believe an answer the candidate never
gave. Probes go to IP literals only: a host name would start a resolver thread.
The gate measures and answers; it never stops a process.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hotswapd.gates.http import MAX_BODY, Connection

ATTEMPT_TIMEOUT_S = 2.0  # one probe request; --health-timeout bounds them all

Connector = Callable[[], Awaitable[Connection]]
Fetch = Callable[[float], Awaitable[int]]  # one attempt within N seconds: the HTTP status
Believe = Callable[[], "str | None"]


@dataclass
class ProbeResult:
    """What the probing saw: healthy or not, and enough to explain a failure."""

    healthy: bool
    attempts: int
    last_status: int | None  # the last HTTP status seen, if any answer came
    last_error: str | None
    disbelieved: str | None = None  # an answer came, but not from the candidate


class Redirected(Exception):
    """A 3xx: never followed, the gate fails with where it pointed."""


def plain_connector(host: str, port: int) -> Connector:
    """Connect to host:port from any source (a private probe listener, --health-url)."""

    async def connect() -> Connection:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return Connection(sock, _host_header(host, port))

    return connect


def steered_connector(source: Any, host: str, port: int) -> Connector:
    """Connect to the public address from hotswapd's reserved source (a ProbeSource)."""

    async def connect() -> Connection:
        sock = await source.connect(asyncio.get_running_loop(), host, port)
        return Connection(sock, _host_header(host, port))

    return connect


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_url(url: str) -> tuple[str, str, int, str]:
    """scheme, host (IP literal, validated by the option), port, path of a --health-url."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    host, _, port = authority.rpartition(":")
    return scheme, host.strip("[]"), int(port), slash + path or "/"


def fetcher(connect: Connector, path: str) -> Fetch:
    """One attempt = a GET of `path` on a fresh connection from `connect`."""

    async def fetch(within: float) -> int:
        return await attempt(connect, path, within)

    return fetch


async def attempt(connect: Connector, path: str, within: float) -> int:
    """One GET on a fresh connection; the HTTP status, or raises (3xx: Redirected)."""
    async with asyncio.timeout(within):
        connection = await connect()
        try:
            response = await connection.get(path)
        finally:
            connection.close()
    if response.redirect:
        where = response.headers.get("location", "no Location")[:200]
        raise Redirected(
            f"answered HTTP {response.status} redirect to {where} (redirects are never followed)"
        )
    return response.status


async def wait_healthy(
    fetch: Fetch, deadline: float, believe: Believe | None = None
) -> ProbeResult:
    """Retry quickly (5 ms, backing off to 200 ms) until a 2xx or the loop-time deadline.

    `believe()` runs after every answer: a reason means the answer cannot have come
    from the candidate (its socket left the group, so the kernel's hash sent the probe
    elsewhere), and the gate fails at once with that reason.
    """
    loop = asyncio.get_running_loop()
    delay = 0.005
    attempts = 0
    last_status: int | None = None
    last_error: str | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return ProbeResult(False, attempts, last_status, last_error)
        attempts += 1
        within = min(remaining, ATTEMPT_TIMEOUT_S)
        try:
            last_status = await fetch(within)
            doubt = believe() if believe is not None else None
            if doubt:
                return ProbeResult(False, attempts, last_status, doubt, disbelieved=doubt)
            if 200 <= last_status < 300:
                return ProbeResult(True, attempts, last_status, None)
            last_error = f"answered HTTP {last_status}"
        except Redirected as exc:
            return ProbeResult(False, attempts, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer is the verdict
            # An attempt cut short by the overall deadline says nothing about the server:
            # keep what the previous attempt learned (say, "answered HTTP 503").
            if not (isinstance(exc, TimeoutError) and within < ATTEMPT_TIMEOUT_S and last_error):
                last_error = _describe(exc)
        await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
        delay = min(delay * 2, 0.2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection closed in the middle of the answer"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- --health-url over https
# and control/health.py (the `/healthz` of hotswapd itself): aiohttp, without redirects
# and with the body cut at MAX_BODY, like the gate's own client.


def probe_url(health_path: str | None, health_url: str | None, probe_port: int | None) -> str:
    if health_url:
        return health_url
    return f"http://127.0.0.1:{probe_port}{health_path}"


async def check_once(session: Any, url: str, within: float) -> int:
    """One GET through aiohttp (https): no redirect followed, the body read to MAX_BODY."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=within)
    async with session.get(url, timeout=timeout, allow_redirects=False) as response:
        await response.content.read(MAX_BODY)
        if 300 <= response.status < 400:
            where = response.headers.get("Location", "no Location")[:200]
            raise Redirected(
                f"answered HTTP {response.status} redirect to {where} "
                "(redirects are never followed)"
            )
        return int(response.status)


def url_fetcher(session: Any, url: str) -> Fetch:
    async def fetch(within: float) -> int:
        return await check_once(session, url, within)

    return fetch


def new_session() -> Any:
    """A session that never pools: each probe is a fresh connection to one generation."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))
