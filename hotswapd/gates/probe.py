"""Health gate: an HTTP GET that only the new generation can answer.

Probes go to the generation's private loopback probe listener (or an explicit
--health-url), always to IP literals: a host name would make aiohttp resolve it
in a thread, and the supervisor has no threads (fork is only safe without them).
The gate measures and answers; it never stops a process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

ATTEMPT_TIMEOUT_S = 2.0  # one probe request; --health-timeout bounds them all


@dataclass
class ProbeResult:
    """What the probing saw: healthy or not, and enough to explain a failure."""

    healthy: bool
    attempts: int
    last_status: int | None  # the last HTTP status seen, if any answer came
    last_error: str | None


def probe_url(health_path: str | None, health_url: str | None, probe_port: int | None) -> str:
    if health_url:
        return health_url
    return f"http://127.0.0.1:{probe_port}{health_path}"


async def check_once(session: aiohttp.ClientSession, url: str, within: float) -> int:
    """One GET; returns the HTTP status or raises on a connection failure or timeout."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=within)) as response:
        await response.read()
        return response.status


async def wait_healthy(session: aiohttp.ClientSession, url: str, deadline: float) -> ProbeResult:
    """Retry quickly (5 ms, backing off to 200 ms) until a 2xx or the loop-time deadline."""
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
            last_status = await check_once(session, url, within)
            if 200 <= last_status < 300:
                return ProbeResult(True, attempts, last_status, None)
            last_error = f"answered HTTP {last_status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # An attempt cut short by the overall deadline says nothing about the server:
            # keep what the previous attempt learned (say, "answered HTTP 503").
            if not (isinstance(exc, TimeoutError) and within < ATTEMPT_TIMEOUT_S and last_error):
                last_error = type(exc).__name__ if not str(exc) else str(exc)
        await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
        delay = min(delay * 2, 0.2)


def new_session() -> aiohttp.ClientSession:
    """A session that never pools: each probe is a fresh connection to one generation."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))
