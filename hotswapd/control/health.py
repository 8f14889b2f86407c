"""`GET /health` on the control socket: is the active generation serving right now?

What `hotswapd health` (a Docker HEALTHCHECK, a Kubernetes exec probe) asks. The answer
follows the configuration the swap gate uses, so it survives `--listen` changes that a
HEALTHCHECK hard-wired to a port would not:

- with `--health` / `--health-url`: one probe of the active generation, the same request
  the swap's health gate makes (through its private probe listener, `gates.probe`);
- without: healthy means the active generation is running (not exited, hotswapd not
  stopping).

A verdict younger than FRESH_S is reused and concurrent requests share one probe, so a
storm of health checks costs the server at most one probe per FRESH_S.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hotswapd.boot.config import Config
from hotswapd.core.reaper import describe_status
from hotswapd.core.view import SupervisorView

FRESH_S = 1.0
PROBE_TIMEOUT_S = 2.0  # at most; --health-timeout if shorter
_NOT_SERVING = ("starting", "stopping", "stopped")


class HealthCheck:
    """Probes the active generation on demand; reads the supervisor, never changes it."""

    def __init__(self, supervisor: SupervisorView, config: Config) -> None:
        self.supervisor = supervisor
        self.config = config
        self._last: tuple[float, int, dict[str, Any]] | None = None  # (when, generation, verdict)
        self._running: asyncio.Task[dict[str, Any]] | None = None
        self._session: Any = None

    async def verdict(self) -> dict[str, Any]:
        sup = self.supervisor
        active = sup.active
        base = {"generation": active.number, "pid": active.pid, "state": sup.state.value}
        if sup.state.value in _NOT_SERVING:
            return {**base, "healthy": False, "reason": f"hotswapd is {sup.state.value}"}
        if not active.alive:
            status = describe_status(active.status if active.status is not None else 0)
            return {
                **base,
                "healthy": False,
                "reason": f"generation {active.number} exited ({status})",
            }
        if not (self.config.health or self.config.health_url):
            return {**base, "healthy": True, "check": "running"}
        now = time.monotonic()
        if self._last is not None:
            when, number, cached = self._last
            if number == active.number and now - when < FRESH_S:
                return {**cached, "age_s": round(now - when, 3)}
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._probe(base))
            self._running.add_done_callback(self._done)
        result = await asyncio.shield(self._running)
        return {**result, "age_s": 0.0}

    def _done(self, task: asyncio.Task[dict[str, Any]]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is None:
            self._last = (time.monotonic(), task.result()["generation"], task.result())

    async def _probe(self, base: dict[str, Any]) -> dict[str, Any]:
        from hotswapd.gates import probe  # aiohttp: loaded at the first health request only

        active = self.supervisor.active
        port = active.probe_port()
        if port is None and not self.config.health_url:
            return {
                **base,
                "healthy": False,
                "reason": "the active generation has no probe listener",
            }
        url = probe.probe_url(self.config.health, self.config.health_url, port)
        if self._session is None:
            self._session = probe.new_session()
        within = min(PROBE_TIMEOUT_S, self.config.health_timeout)
        verdict = {**base, "check": url}
        try:
            status = await probe.check_once(self._session, url, within)
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer is the verdict
            reason = str(exc) or type(exc).__name__
            return {**verdict, "healthy": False, "reason": f"{url}: {reason}"[:300]}
        if 200 <= status < 300:
            return {**verdict, "healthy": True, "http_status": status}
        return {
            **verdict,
            "healthy": False,
            "http_status": status,
            "reason": f"{url} answered HTTP {status}",
        }

    async def close(self) -> None:
        if self._running is not None:
            self._running.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
