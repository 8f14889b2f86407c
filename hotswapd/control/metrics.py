"""Prometheus metrics on `--metrics HOST:PORT` (`/metrics`), with prometheus-client.

Design notes:

- Most metrics are read from the supervisor at scrape time by one custom collector,
  through `status.build_status`, the same view `ctl status` prints: the counters,
  generations and watch mode cannot drift from what the status says. Only what happens
  between scrapes is recorded as it happens: each swap's phase durations go into
  histograms from a swap hook (`supervisor.listeners_swap_hooks`).
- A dedicated CollectorRegistry (not the global one) holds this collector, the
  histograms and the standard process/platform collectors for hotswapd itself.
- Requests are read by `control.http`: a deadline for each request, a cap on open
  connections, one rate-limited line for failed accepts, a 400 for an oversized head.
- The listening socket is bound here from an IP literal: asyncio would resolve a host
  name (or "all addresses") in an executor thread, and PID 1 runs no threads.
"""

from __future__ import annotations

import _socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hotswapd.boot.config import Config
from hotswapd.boot.sockets import bind_metrics
from hotswapd.control.http import (
    HTTPError,
    Limits,
    Reply,
    Request,
    Server,
    adopt,
)
from hotswapd.control.status import build_status

PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WATCH_MODES = ("auto", "inotify", "poll", "off")  # auto: inotify plus a periodic stat
BACKLOG = 64
# A scrape is one small GET: a request head takes at most a few seconds to arrive, and a
# handful of scrapers at once is plenty. The cap keeps an abuser of the port from
# spending PID 1's fds (the control socket and the swaps need them).
LIMITS = Limits(head_timeout_s=5.0, max_head=8192, max_body=1024, max_connections=16)


class SupervisorCollector(Collector):
    """Everything the status document knows, as metrics, read at scrape time."""

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        status = build_status(self.supervisor, hash_missing=False)  # metrics export no hash
        counters = status["counters"]
        yield _gauge(
            "hotswapd_active_generation",
            "Number of the generation serving traffic.",
            status["active"]["generation"],
        )
        swaps = CounterMetricFamily(
            "hotswapd_swaps",
            "Swaps by outcome and (for rollbacks) reason.",
            labels=["outcome", "reason"],
        )
        swaps.add_metric(["committed", "all_gates_passed"], counters["swaps_committed"])
        for reason, count in sorted(counters["rollback_reasons"].items()):
            swaps.add_metric(["rolled_back", reason], count)
        swaps.add_metric(["refused", "refused"], counters["swaps_refused"])
        yield swaps
        yield _counter(
            "hotswapd_swaps_coalesced",
            "Swap requests joined to a queued swap.",
            counters["swaps_coalesced"],
        )
        yield _counter(
            "hotswapd_restarts",
            "Restarts of an exited server (--on-exit restart).",
            counters["restarts"],
        )
        yield _counter(
            "hotswapd_signals_forwarded",
            "Signals forwarded to the active generation.",
            counters["signals_forwarded"],
        )
        yield _counter(
            "hotswapd_orphans_reaped",
            "Orphaned processes reaped by hotswapd.",
            status["orphans_reaped"],
        )
        rss = GaugeMetricFamily(
            "hotswapd_generation_rss_bytes",
            "Resident memory of each live generation's process tree.",
            labels=["generation", "state"],
        )
        for gen in status["generations"]:
            if gen["exit_status"] is None:
                rss.add_metric([str(gen["generation"]), gen["state"]], gen["rss_bytes"])
        yield rss
        watch = status["watch"]
        mode = GaugeMetricFamily(
            "hotswapd_watch_mode", "1 for the file-watch mode in use.", labels=["mode"]
        )
        for name in sorted({*WATCH_MODES, watch["mode"]}):
            mode.add_metric([name], 1.0 if name == watch["mode"] else 0.0)
        yield mode
        yield from _watch_events(watch)
        state = GaugeMetricFamily(
            "hotswapd_state", "1 for the supervisor's current state.", labels=["state"]
        )
        state.add_metric([status["hotswapd"]["state"]], 1.0)
        yield state
        yield from _canary_signals(self.supervisor, status)


def _canary_signals(supervisor: Any, status: dict[str, Any]) -> Iterator[Metric]:
    """Steering, canary analysis, probation and liveness: the golden signals of a swap."""
    mode = GaugeMetricFamily(
        "hotswapd_listener_mode",
        "1 for each listener's mode: steered or shared.",
        labels=["listener", "mode"],
    )
    weight = GaugeMetricFamily(
        "hotswapd_canary_weight_percent",
        "Percent of new connections a steered listener gives the "
        "candidate now (0 outside canary steps).",
        labels=["listener"],
    )
    steering = getattr(supervisor, "steering", None)
    for lane in steering.status() if steering is not None else ():
        mode.add_metric([lane["name"], lane["mode"]], 1.0)
        if lane["mode"] == "steered":
            weight.add_metric([lane["name"]], float(lane.get("candidate_percent") or 0))
    yield mode
    yield weight
    values = GaugeMetricFamily(
        "hotswapd_analysis_value",
        "Each --analysis rule's value over the last judged window of "
        "the last swap (ratio as a fraction, quantile in seconds).",
        labels=["rule", "role"],
    )
    last = status["last_swap"] or {}
    for rule, judged in sorted((last.get("analysis") or {}).items()):
        for role in ("candidate", "serving"):
            if judged.get(role) is not None:
                values.add_metric([rule, role], judged[role])
    yield values
    delta = GaugeMetricFamily(
        "hotswapd_generation_rss_delta_bytes",
        "RSS of the generation committed last minus the previous "
        "generation's at commit: at commit, and at the end of probation.",
        labels=["at"],
    )
    for at, attr in (
        ("commit", "rss_delta_at_commit"),
        ("probation_end", "rss_delta_probation_end"),
    ):
        figure = getattr(supervisor, attr, None)
        if isinstance(figure, int):
            delta.add_metric([at], figure)
    yield delta
    counters = status["counters"]
    probations = CounterMetricFamily(
        "hotswapd_probations", "Probations after a commit, by outcome.", labels=["outcome"]
    )
    for outcome in ("passed", "failed"):
        probations.add_metric([outcome], counters.get("probations", {}).get(outcome, 0))
    yield probations
    yield _counter(
        "hotswapd_liveness_replacements",
        "Active generations replaced after --liveness probes failed.",
        counters.get("liveness", {}).get("replacements", 0),
    )


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _watch_events(watch: dict[str, Any]) -> Iterator[Metric]:
    """The watcher's own counts, when it reports them (numbers only; mode "off" has none)."""
    for key, name, text in (
        ("events", "hotswapd_watch_events", "File-system events the watcher received."),
        ("rescans", "hotswapd_watch_rescans", "Full rescans (inotify queue overflow, re-arm)."),
        ("fired", "hotswapd_watch_triggers", "Changes the watcher acted on (swap or signal)."),
    ):
        value = watch.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield _counter(name, text, value)


class Metrics:
    """The registry, the histograms fed by the swap hook, and the scrape handler."""

    def __init__(self, supervisor: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(SupervisorCollector(supervisor))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.phases = Histogram(
            "hotswapd_swap_phase_seconds",
            "Duration of each swap phase.",
            ["phase"],
            registry=self.registry,
            buckets=PHASE_BUCKETS,
        )
        self.swaps = Histogram(
            "hotswapd_swap_duration_seconds",
            "Duration of whole swaps.",
            ["outcome"],
            registry=self.registry,
            buckets=PHASE_BUCKETS,
        )
        self.growth = Gauge(
            "hotswapd_generation_memory_growth_ratio",
            "A candidate's RSS over "
            "the serving generation's, at the last memory gate that measured both.",
            registry=self.registry,
        )

    def on_swap(self, outcome: Any) -> None:
        """The swap hook: called by the supervisor once per finished swap."""
        for phase, seconds in outcome.phases.items():
            self.phases.labels(phase=phase).observe(seconds)
        self.swaps.labels(outcome=outcome.outcome).observe(sum(outcome.phases.values()))
        if outcome.old_rss_bytes and outcome.new_rss_bytes:
            self.growth.set(outcome.new_rss_bytes / outcome.old_rss_bytes)

    async def handle(self, request: Request, reply: Reply) -> None:
        if request.path != "/metrics":
            raise HTTPError(404, "not found: metrics are at /metrics")
        if request.method != "GET":
            raise HTTPError(405, f"{request.method[:20]} is not allowed on /metrics")
        await reply.send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)


async def start_metrics(
    config: Config, supervisor: Any, log: Any, bound: _socket.socket | None = None
) -> Callable[[], Awaitable[None]]:
    """Serve /metrics on config.metrics; returns the function that stops serving.

    `bound`: the port, already bound and listening by the run mode before the first fork
    (boot/sockets.py); without it the port is bound here.
    """
    assert config.metrics is not None
    # One bind for both paths: the run mode's (boot/sockets.py), here only when not given one.
    sock = adopt(bind_metrics(config.metrics) if bound is None else bound)
    metrics = Metrics(supervisor)
    supervisor.listeners_swap_hooks.append(metrics.on_swap)
    limits = LIMITS.capped()
    events = ("metrics_accept_failed", "metrics_request_failed")
    server = Server(events, sock, metrics.handle, log, limits)
    server.start()
    host, port = sock.getsockname()[:2]
    log.info("metrics_listening", address=f"{host}:{port}", path="/metrics")

    async def close() -> None:
        supervisor.listeners_swap_hooks.remove(metrics.on_swap)
        await server.close(1.0)

    return close
