"""Canary analysis: the rule syntax, the arithmetic over a window, and bounded scrapes.

The rules are pure functions over snapshots, tested in-process; the scrape is tested
against real local TCP servers (an honest one, one that sends too much, one that
stalls), and the whole chain against the flaky Go test server through real sockets:
error-ratio and latency rules, liveness of a build whose health hangs, and probation of
a build that grows after cutover.
"""

from __future__ import annotations

import asyncio
import http.client
import math
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from hotswapd.boot.units import BadValue
from hotswapd.boot.values import DEFAULT_MEMORY_GROWTH, LivenessRule
from hotswapd.core.probation import Liveness, Probation
from hotswapd.gates import analysis, scrape
from hotswapd.gates.analysis import Measure, Rule, parse_rule, series_key
from hotswapd.gates.memory import tree_rss
from tests.helpers import wait_until

ERROR_RULE = (
    'error-ratio=sum(http_requests_total{code=~"5.."}) / sum(http_requests_total) '
    "<= 0.1% or <= 1.5x"
)
LATENCY_RULE = (
    "latency-p99=histogram_quantile(0.99, http_request_duration_seconds) <= 250ms or <= 1.2x"
)


def requests(ok: float, errors: float = 0, method: str = "get") -> dict[analysis.SeriesKey, float]:
    """A snapshot of promhttp's request counter: `ok` 200s and `errors` 500s."""
    snapshot = {series_key("http_requests_total", {"code": "200", "method": method}): ok}
    if errors:
        snapshot[series_key("http_requests_total", {"code": "500", "method": method})] = errors
    return snapshot


def histogram(counts: dict[str, float], code: str = "200") -> dict[analysis.SeriesKey, float]:
    """A snapshot of one histogram series: cumulative counts by `le`."""
    name = "http_request_duration_seconds_bucket"
    return {series_key(name, {"code": code, "le": le}): n for le, n in counts.items()}


# --------------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    ("text", "kind", "limit", "factor"),
    [
        (ERROR_RULE, "ratio", 0.001, 1.5),
        (
            "e=sum(a_total{code=~'5..'})/sum(a_total) <= 0.001".replace("'", '"'),
            "ratio",
            0.001,
            None,
        ),
        ('e = sum( a{code!="200", method="get",} ) / sum(a) <= 2x or <= 1%', "ratio", 0.01, 2.0),
        ("e=sum(a)/sum(b) <= 1.5x", "ratio", None, 1.5),
        (LATENCY_RULE, "quantile", 0.25, 1.2),
        (
            'p50=histogram_quantile(0.5, d_seconds_bucket{path!~"/health.*"}) <= 1.5s',
            "quantile",
            1.5,
            None,
        ),
        ("size=histogram_quantile(0.9, response_size_bytes) <= 4096", "quantile", 4096.0, None),
    ],
)
def test_rules_parse_into_their_bounds(
    text: str, kind: str, limit: float | None, factor: float | None
) -> None:
    """Ratios and quantiles parse with percent, ms and factor bounds in either order."""
    rule = parse_rule(text)
    assert (rule.kind, rule.factor) == (kind, factor)
    assert rule.limit == pytest.approx(limit) if limit is not None else rule.limit is None
    assert rule.text == text.strip()


def test_a_parsed_rule_knows_its_selectors() -> None:
    """Matchers keep label, operator and value; a `_bucket` suffix names the histogram."""
    rule = parse_rule(ERROR_RULE)
    assert rule.numerator.metric == "http_requests_total"
    assert [(m.label, m.op, m.value) for m in rule.numerator.matchers] == [("code", "=~", "5..")]
    assert rule.denominator is not None
    assert rule.denominator.matchers == ()
    assert rule.metrics == {"http_requests_total"}
    latency = parse_rule('p=histogram_quantile(0.99, x_seconds_bucket{a="b"}) <= 1s')
    assert latency.metrics == {"x_seconds_bucket"}
    assert latency.quantile == 0.99


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("sum(a)/sum(b) <= 1%", "starts with its name"),
        ("e=avg(a) <= 1%", "expected sum(...)/sum(...) or histogram_quantile"),
        ("e=sum(a)/count(b) <= 1%", "a ratio divides two sums"),
        ("e=sum(a)/sum(b)", "expected '<='"),
        ("e=sum(a)/sum(b) <= 1% or <= 2%", "two absolute bounds"),
        ("e=sum(a)/sum(b) <= 2x or <= 3x", "two factors"),
        ("e=sum(a)/sum(b) <= 0.5x", "below 1x"),
        ("e=sum(a)/sum(b) <= 250ms", "a ratio's bound is a fraction"),
        ("e=sum(a)/sum(b) <= 1% and <= 2x", "unexpected text"),
        ('e=sum(a{code~"5"})/sum(b) <= 1%', "expected =, !=, =~ or !~"),
        ('e=sum(a{code="5)/sum(b) <= 1%', "never closed"),
        ('e=sum(a{code=~"5(.."})/sum(b) <= 1%', "not a regular expression"),
        ("e=sum(9a)/sum(b) <= 1%", "expected a metric name"),
        ("p=histogram_quantile(99, d) <= 1s", "between 0 and 1"),
        ("p=histogram_quantile(0.99, d) <= 5%", "not %"),
        ('p=histogram_quantile(0.99, d{le="1"}) <= 1s', "do not match on le"),
        ("e=sum(a)/sum(b) <= -1%", "expected a number"),
    ],
)
def test_bad_rules_say_what_is_wrong(text: str, says: str) -> None:
    """Each malformed rule is one BadValue naming the problem (and the syntax)."""
    with pytest.raises(BadValue, match=None) as caught:
        parse_rule(text)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("100", 100), (0, 0), (" 5 ", 5), ("-1", None), ("1.5", None), (True, None)],
)
def test_min_requests_is_a_whole_number(value: object, expected: int | None) -> None:
    """--analysis-min-requests takes a non-negative integer from a flag, env or TOML."""
    if expected is None:
        with pytest.raises(BadValue):
            analysis.parse_min_requests(value)
    else:
        assert analysis.parse_min_requests(value) == expected


@pytest.mark.parametrize(
    ("value", "ok"), [("/metrics", True), ("/debug/metrics?x=1", True), ("metrics", False),
                      ("/a b", False), ("/\x00", False), (3, False)],
)  # fmt: skip
def test_metrics_path_is_an_absolute_request_path(value: object, ok: bool) -> None:
    """--metrics-path must start with / and fit in a request line as is."""
    if ok:
        assert analysis.parse_metrics_path(value) == value
    else:
        with pytest.raises(BadValue):
            analysis.parse_metrics_path(value)


def test_the_rule_module_is_import_light() -> None:
    """Parsing a rule without regex loads no re, typing or dataclasses (fit for boot)."""
    code = (
        "import sys; before = set(sys.modules); from hotswapd.gates import analysis; "
        "analysis.parse_rule('e=sum(a{c=\"5\"})/sum(a) <= 1%'); "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "hotswapd.gates.analysis" in loaded
    assert not loaded & {"re", "typing", "dataclasses", "enum", "asyncio", "prometheus_client"}


# --------------------------------------------------------------------------- arithmetic


def test_increase_handles_resets_and_new_series() -> None:
    """A counter that went down restarted (its end value counts); a new series counts from 0."""
    a = series_key("c_total", {"code": "200"})
    b = series_key("c_total", {"code": "500"})
    delta = analysis.increase({a: 100.0}, {a: 30.0, b: 4.0})
    assert delta == {a: 30.0, b: 4.0}
    assert analysis.increase({a: 100.0}, {a: 130.0}) == {a: 30.0}


def test_ratio_sums_every_matching_series() -> None:
    """Matchers pick series across other labels; the denominator counts all of them."""
    rule = parse_rule(ERROR_RULE)
    delta = {**requests(90, 5), **requests(4, 1, method="post")}
    value = analysis.measure(rule, delta)
    assert (value.matched, value.requests) == (6, 100)
    assert value.value == pytest.approx(0.06)
    not_post = parse_rule(
        'e=sum(http_requests_total{method!="post",code=~"5.*"})/sum(http_requests_total) <= 1%'
    )
    assert analysis.measure(not_post, delta).matched == 5


@pytest.mark.parametrize(
    ("q", "counts", "expected"),
    [
        (0.5, {"0.1": 50, "0.2": 100, "+Inf": 100}, 0.1),
        (0.75, {"0.1": 50, "0.2": 100, "+Inf": 100}, 0.15),
        (0.99, {"0.1": 0, "0.25": 10, "0.5": 10, "+Inf": 20}, 0.5),  # in +Inf: largest bound
        (0.5, {"1": 0, "+Inf": 0}, None),  # no observations
        (0.5, {"1": 3}, None),  # no +Inf bucket: not a histogram
        (0.5, {"0.1": 60, "0.2": 50, "+Inf": 100}, 0.1 * 50 / 60),  # forced monotonic
    ],
)
def test_quantile_interpolates_as_prometheus_does(
    q: float, counts: dict[str, float], expected: float | None
) -> None:
    """histogram_quantile: linear inside the bucket, largest finite bound for +Inf."""
    buckets = [(math.inf if le == "+Inf" else float(le), n) for le, n in counts.items()]
    got = analysis.quantile_of(q, buckets)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_quantile_is_over_the_window_and_summed_across_codes() -> None:
    """The p99 comes from bucket increases over the window, summed over label sets."""
    rule = parse_rule(LATENCY_RULE)
    start = {**histogram({"0.1": 1000, "0.5": 1000, "+Inf": 1000})}
    end = {
        **histogram({"0.1": 1000, "0.5": 1100, "+Inf": 1100}),  # all 100 new ones were slow
        **histogram({"0.1": 0, "0.5": 0, "+Inf": 0}, code="500"),
    }
    value = analysis.measure(rule, analysis.increase(start, end))
    assert value.requests == 100
    assert value.value == pytest.approx(0.1 + 0.4 * 0.99)


# --------------------------------------------------------------------------- verdicts


def verdict(
    rule: Rule, candidate: tuple[float, float], serving: tuple[float, float], final: bool = False
) -> analysis.Verdict:
    """Judge a window where each generation answered (ok, errors) requests."""
    return analysis.evaluate(
        rule,
        (requests(0), requests(*candidate)),
        (requests(0), requests(*serving)),
        min_requests=100,
        final=final,
    )


def test_a_candidate_within_the_absolute_bound_passes() -> None:
    """0.05% errors is under 0.1%, whatever the serving generation did."""
    result = verdict(parse_rule(ERROR_RULE), (1999, 1), (5000, 0))
    assert result.status == "pass"
    assert "within 0.1% or 1.5x" in result.reason


def test_a_noisy_but_unchanged_error_rate_passes_by_the_factor() -> None:
    """2% errors passes when the serving generation has 2% too (within 1.5x)."""
    result = verdict(parse_rule(ERROR_RULE), (980, 20), (9800, 200))
    assert result.status == "pass"


def test_a_worse_candidate_fails_with_both_values_in_the_reason() -> None:
    """5% against 0% fails both bounds; the reason names both ratios and their counts."""
    result = verdict(parse_rule(ERROR_RULE), (950, 50), (10_000, 0))
    assert result.status == "fail"
    assert result.reason == (
        "error-ratio: candidate 5% (50 of 1000 requests), serving 0% (0 of 10000 requests): "
        "over 0.1% and over 1.5x the serving generation's"
    )


def test_too_little_traffic_extends_and_passes_at_the_last_step() -> None:
    """Under min_requests the window is inconclusive; at the final step it passes, saying so."""
    rule = parse_rule(ERROR_RULE)
    middle = verdict(rule, (40, 0), (5000, 0))
    assert middle.status == "inconclusive"
    assert "too little traffic" in middle.reason
    assert "the window extends" in middle.reason
    last = verdict(rule, (40, 0), (5000, 0), final=True)
    assert last.status == "pass"
    assert "not judged" in last.reason


def test_a_ratio_that_cannot_recover_fails_before_the_minimum() -> None:
    """3 errors in 10 requests is over 0.1% even if the next 90 succeed: fail at once."""
    result = verdict(parse_rule(ERROR_RULE), (7, 3), (5000, 0))
    assert result.status == "fail"
    assert "even if the next 90 requests succeed" in result.reason


def test_a_factor_needs_a_serving_generation_with_traffic() -> None:
    """A factor-only rule cannot compare with an idle serving generation: inconclusive."""
    rule = parse_rule('e=sum(http_requests_total{code="500"})/sum(http_requests_total) <= 2x')
    assert verdict(rule, (900, 100), (10, 0)).status == "inconclusive"
    assert verdict(rule, (900, 100), (1000, 0)).status == "fail"


def test_latency_reason_shows_milliseconds() -> None:
    """Quantile verdicts print both values in the histogram's unit."""
    rule = parse_rule(LATENCY_RULE)
    slow = Measure(0.312, 800)
    fast = Measure(0.120, 15000)
    result = analysis.judge(rule, slow, fast, 100)
    assert result.status == "fail"
    assert "candidate 312ms (800 requests), serving 120ms (15000 requests)" in result.reason
    assert analysis.judge(rule, Measure(0.14, 800), fast, 100).status == "pass"  # 1.2x


def test_step_analysis_keeps_an_inconclusive_window_open() -> None:
    """An extended window starts at the first step, so two thin steps are judged together."""
    steps = analysis.StepAnalysis([parse_rule(ERROR_RULE)], min_requests=100)
    steps.begin(requests(0), requests(0))
    first = steps.judge(requests(60), requests(6000))
    assert first.outcome == "extend"
    assert steps.extending
    steps.begin(requests(60), requests(6000))  # ignored: the window goes on
    second = steps.judge(requests(120), requests(12000))
    assert second.outcome == "pass", second.reason
    assert second.verdicts[0].candidate.requests == 120  # both steps' traffic
    assert not steps.extending


def test_fail_fast_answers_only_failures_and_keeps_the_window() -> None:
    """A mid-step look fails a bad candidate at once and leaves a good window open."""
    steps = analysis.StepAnalysis([parse_rule(ERROR_RULE)], min_requests=100)
    steps.begin(requests(0), requests(0))
    assert steps.fail_fast(requests(30), requests(3000)) is None  # too little, no error yet
    failed = steps.fail_fast(requests(30, 1), requests(3000))
    assert failed is not None
    assert failed.outcome == "fail"
    assert "even if the next 69 requests succeed" in failed.reason
    assert steps.judge(requests(200), requests(6000)).outcome == "pass"  # same window start


def test_an_unreadable_serving_generation_leaves_the_absolute_bound() -> None:
    """Serving scrapes that failed (None) drop the factor: the absolute bound decides."""
    rules = [parse_rule(ERROR_RULE)]
    noisy = analysis.StepAnalysis(rules, min_requests=100)
    noisy.begin(requests(0), None)
    result = noisy.judge(requests(980, 20), requests(9800, 200))  # 2%: the factor cannot help
    assert result.outcome == "fail"
    assert "serving no value (0 of 0 requests)" in result.reason
    clean = analysis.StepAnalysis(rules, min_requests=100)
    clean.begin(requests(0), requests(100))
    assert clean.judge(requests(1000), None).outcome == "pass"


def test_step_analysis_fails_when_any_rule_fails() -> None:
    """The step fails if one rule fails, and its reason is that rule's."""
    rules = [parse_rule(ERROR_RULE), parse_rule(LATENCY_RULE)]
    steps = analysis.StepAnalysis(rules, min_requests=10)
    steps.begin({}, {})
    result = steps.judge(requests(90, 10), requests(1000))
    assert result.outcome == "fail"
    assert result.reason.startswith("error-ratio: candidate 10%")
    with pytest.raises(RuntimeError):
        steps.judge({}, {})


# --------------------------------------------------------------------------- scraping

EXPOSITION = (
    "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n"
    'http_requests_total{code="200",method="get"} 41\n'
    'http_requests_total{code="500",method="get"} 2\n'
)


async def served(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    body: Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[dict[analysis.SeriesKey, float]]
    ],
) -> dict[analysis.SeriesKey, float]:
    """Run `handler` as a loopback server and `body` against one connection to it."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return await body(reader, writer)
    finally:
        server.close()


def answer(
    payload: bytes,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(payload)
        await writer.drain()
        writer.close()

    return handler


def go(payload: bytes, **options: float) -> dict[analysis.SeriesKey, float]:
    async def body(
        r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> dict[analysis.SeriesKey, float]:
        return await scrape.scrape(r, w, "/metrics", "127.0.0.1", **options)  # type: ignore[arg-type]

    return asyncio.run(served(answer(payload), body))


def chunked(text: str) -> bytes:
    data = text.encode()
    pieces = [data[i : i + 20] for i in range(0, len(data), 20)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    "payload",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(EXPOSITION), EXPOSITION.encode()),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked(EXPOSITION),
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + EXPOSITION.encode(),
    ],
    ids=["content-length", "chunked", "until-eof"],
)
def test_a_scrape_reads_every_body_framing(payload: bytes) -> None:
    """A body with Content-Length, chunked, or closed at EOF parses to the same snapshot."""
    snapshot = go(payload)
    assert snapshot == {
        series_key("http_requests_total", {"code": "200", "method": "get"}): 41.0,
        series_key("http_requests_total", {"code": "500", "method": "get"}): 2.0,
    }


def test_parse_keeps_only_the_metrics_the_rules_read() -> None:
    """With `keep`, other lines are dropped before the parser (even malformed ones)."""
    rule = parse_rule(LATENCY_RULE)
    text = (
        "# TYPE go_goroutines gauge\ngo_goroutines 12\nnot a valid line {{{\n"
        "# TYPE http_request_duration_seconds histogram\n"
        'http_request_duration_seconds_bucket{code="200",le="0.1"} 3\n'
        'http_request_duration_seconds_bucket{code="200",le="+Inf"} 4\n'
        'http_request_duration_seconds_sum{code="200"} 0.5\n'
        'http_request_duration_seconds_count{code="200"} 4\n'
    )
    snapshot = scrape.parse(text, rule.metrics)
    assert snapshot == {
        series_key("http_request_duration_seconds_bucket", {"code": "200", "le": "0.1"}): 3.0,
        series_key("http_request_duration_seconds_bucket", {"code": "200", "le": "+Inf"}): 4.0,
    }
    assert analysis.measure(rule, snapshot).requests == 4
    with pytest.raises(scrape.ScrapeError):
        scrape.parse(text)  # without `keep`, the malformed line is the parser's


def test_a_scrape_asks_for_the_text_format() -> None:
    """The request is a GET of the path with Accept: text/plain and Connection: close."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + EXPOSITION.encode())
        writer.close()

    async def body(
        r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> dict[analysis.SeriesKey, float]:
        return await scrape.scrape(r, w, "/m", "10.0.0.1:80", keep={"none"})

    assert asyncio.run(served(handler, body)) == {}  # `keep` filters every sample out
    assert seen[0].startswith(b"GET /m HTTP/1.1\r\nHost: 10.0.0.1:80\r\n")
    assert b"Accept: text/plain;version=0.0.4\r\n" in seen[0]
    assert b"Connection: close\r\n" in seen[0]


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (
            b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\n\r\n",
            "redirect to http://elsewhere/; not followed",
        ),
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", "answered HTTP 500"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.google.protobuf\r\n\r\nxx",
            "not the Prometheus text format",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\nxx", "Content-Encoding gzip"),
        (b"SSH-2.0-OpenSSH\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "ended after 5 of 100 bytes"),
        (
            b'HTTP/1.0 200 OK\r\n\r\nhttp_requests_total{code="200" 1\n',
            "not the Prometheus text format",
        ),
    ],
)
def test_bad_answers_are_one_line_errors(payload: bytes, says: str) -> None:
    """Redirects, errors, other formats, encodings, truncation and garbage are ScrapeErrors."""
    with pytest.raises(scrape.ScrapeError) as caught:
        go(payload)
    assert says in str(caught.value)


@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-eof"])
def test_an_oversized_body_is_refused(framing: str) -> None:
    """A body over max_bytes is refused without being read whole, whatever its framing."""
    big = ("# " + "x" * 1000 + "\n") * 200  # ~200 KB of comments
    headers = {
        "content-length": f"Content-Length: {len(big)}\r\n",
        "chunked": "Transfer-Encoding: chunked\r\n",
        "until-eof": "",
    }[framing]
    data = chunked(big) if framing == "chunked" else big.encode()
    payload = f"HTTP/1.1 200 OK\r\n{headers}\r\n".encode() + data
    with pytest.raises(scrape.ScrapeError, match="over 65536 bytes"):
        go(payload, max_bytes=65536)


def test_a_stalled_server_is_given_up_within_the_bound() -> None:
    """A server that sends half an answer and stalls fails the scrape at the deadline."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nhttp_")
        await writer.drain()
        await release.wait()
        writer.close()

    async def body(
        r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> dict[analysis.SeriesKey, float]:
        try:
            return await scrape.scrape(r, w, "/metrics", "127.0.0.1", within=0.3)
        finally:
            release.set()

    started = time.monotonic()
    with pytest.raises(scrape.ScrapeError, match=r"no complete answer within 0\.3s"):
        asyncio.run(served(handler, body))
    assert 0.25 < time.monotonic() - started < 2.0


def test_a_huge_header_is_refused() -> None:
    """Headers are bounded too: an endless header line is a ScrapeError, not a memory sink."""
    payload = b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * (200 << 10) + b"\r\n\r\n"
    with pytest.raises(scrape.ScrapeError, match="header"):
        go(payload)


# --------------------------------------------------------------------------- the flaky server


class Running(NamedTuple):
    """A flaky server this test started: where it listens and its pid (bash exec'd it)."""

    port: int
    pid: int


@pytest.fixture
def serve_flaky() -> Iterator[Callable[[Path], Running]]:
    """Run a flaky build on a socket this test bound, inherited as fd 3 (LISTEN_FDS=1)."""
    running: list[tuple[subprocess.Popen[bytes], socket.socket]] = []

    def start(binary: Path) -> Running:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)  # connections queue from here on: no need to wait for "ready"
        fd = listener.fileno()
        move = "" if fd == 3 else f"exec 3<&{fd} {fd}<&-; "  # fd 3 (bash: dash wants fds < 10)
        script = f'{move}LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec "$0"'
        child = subprocess.Popen(["bash", "-c", script, str(binary)], pass_fds=[fd],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        running.append((child, listener))
        return Running(int(listener.getsockname()[1]), child.pid)

    yield start
    for child, listener in running:
        if child.poll() is None:
            child.terminate()  # our own child, still unreaped: its pid is its own
        child.wait(timeout=30)
        listener.close()
        assert child.stderr is not None
        print(child.stderr.read().decode())


def load(port: int, count: int) -> dict[int, int]:
    """`count` GETs of / over one keep-alive connection; the answers' status counts."""
    statuses: dict[int, int] = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(count):
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
    finally:
        connection.close()
    return statuses


def scrape_port(port: int) -> dict[analysis.SeriesKey, float]:
    """Scrape /metrics over a socket connected first, as a steered probe connection is."""

    async def once() -> dict[analysis.SeriesKey, float]:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return await scrape.scrape_socket(sock, "/metrics", f"127.0.0.1:{port}")

    return asyncio.run(once())


def canary_step(candidate: int, serving: int) -> analysis.StepVerdict:
    """One step through real sockets: scrape both, 400 and 1200 requests, scrape, judge."""
    steps = analysis.StepAnalysis([parse_rule(ERROR_RULE), parse_rule(LATENCY_RULE)], 100)
    steps.begin(scrape_port(candidate), scrape_port(serving))
    load(candidate, 400)
    load(serving, 1200)
    return steps.judge(scrape_port(candidate), scrape_port(serving), final=True)


def test_a_five_percent_build_fails_the_error_rule_through_real_sockets(
    flaky: Callable[[str, str], Path], serve_flaky: Callable[[Path], Running]
) -> None:
    """A 5% error build fails error-ratio against a 0% build; the reason has both ratios."""
    serving = serve_flaky(flaky("v1", "")).port
    candidate = serve_flaky(flaky("v2", "-X main.errorPercent=5")).port
    load(serving, 50)  # counters that already ran before the step must not count
    result = canary_step(candidate, serving)
    assert result.outcome == "fail"
    assert result.reason == (
        "error-ratio: candidate 5% (20 of 400 requests), serving 0% (0 of 1200 requests): "
        "over 0.1% and over 1.5x the serving generation's"
    )
    latency = result.verdicts[1]
    assert latency.status == "pass"
    assert latency.candidate.requests == 400


def test_an_unchanged_build_passes_every_rule_through_real_sockets(
    flaky: Callable[[str, str], Path], serve_flaky: Callable[[Path], Running]
) -> None:
    """The same build as candidate passes error-ratio and latency-p99."""
    serving = serve_flaky(flaky("v1", "")).port
    candidate = serve_flaky(flaky("v1", "")).port
    result = canary_step(candidate, serving)
    assert result.outcome == "pass", result.reason
    assert [v.status for v in result.verdicts] == ["pass", "pass"]
    assert result.verdicts[0].candidate.requests == 400
    assert result.verdicts[0].serving.requests == 1200


def health(port: int) -> tuple[bool, str]:
    """One liveness probe of /healthz, bounded at 200 ms."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.2)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError as exc:
        return False, f"no answer ({type(exc).__name__})"
    finally:
        connection.close()
    return status == 200, f"answered HTTP {status}"


def test_liveness_asks_to_replace_a_build_whose_health_hangs(
    flaky: Callable[[str, str], Path], serve_flaky: Callable[[Path], Running]
) -> None:
    """A build whose /healthz hangs after 1 s is asked to be replaced after 3 failed probes."""
    server = serve_flaky(flaky("v1", "-X main.hangHealthAfter=1s"))
    assert load(server.port, 1) == {200: 1}  # up: its 1 s started before this answer
    live = Liveness(LivenessRule(0.1, 3))
    outcomes: list[str] = []

    def probe() -> bool:
        decision = live.on_probe(*health(server.port))
        outcomes.append(decision.outcome)
        return decision.outcome == "replace"

    wait_until(probe, timeout=15, what="liveness to ask for a replacement")
    assert outcomes[0] == "ok"
    assert outcomes[-3:] == ["failing", "failing", "replace"]
    assert load(server.port, 5) == {200: 5}  # hung health, but the app still answers


def test_probation_fails_a_build_that_grows_after_cutover(
    flaky: Callable[[str, str], Path], serve_flaky: Callable[[Path], Running]
) -> None:
    """A build that grows by 96 MiB after 300 ms fails probation on memory; its twin passes."""
    previous = serve_flaky(flaky("v1", ""))
    leaky = serve_flaky(flaky("v2", "-X main.growAfter=300ms -X main.growMiB=96"))
    steady = serve_flaky(flaky("v1", ""))
    for server in (previous, leaky, steady):
        assert load(server.port, 3) == {200: 3}  # all three up and serving
    baseline = tree_rss(previous.pid)
    assert baseline > 0

    def watch(pid: int, seconds: float) -> Probation:
        return Probation(seconds, time.monotonic(), baseline_rss=baseline,
                         rss_at_commit=tree_rss(pid), rule=DEFAULT_MEMORY_GROWTH)  # fmt: skip

    bad = watch(leaky.pid, 30.0)
    wait_until(lambda: bad.on_memory(time.monotonic(), tree_rss(leaky.pid)).outcome != "watching",
               timeout=15, what="probation to decide on the leaky build")  # fmt: skip
    assert bad.decision is not None
    assert bad.decision.outcome == "failed"
    assert "during probation, memory grew from" in bad.decision.reason
    assert bad.rss_delta > 32 << 20  # past the allowance of the default 1.5+32MiB rule
    good = watch(steady.pid, 1.0)
    wait_until(lambda: good.on_memory(time.monotonic(), tree_rss(steady.pid)).outcome != "watching",
               timeout=15, what="probation to decide on the steady build")  # fmt: skip
    assert good.decision is not None
    assert good.decision.outcome == "passed"
