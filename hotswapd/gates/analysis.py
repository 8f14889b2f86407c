"""Canary analysis: judge a candidate by its own metrics against the serving generation.

A rule (`--analysis`) names one signal and its bound, in a small PromQL-shaped syntax
that reads like the query a Go team already has for its promhttp metrics:

    error-ratio=sum(http_requests_total{code=~"5.."}) / sum(http_requests_total) <= 0.1% or <= 1.5x
    latency-p99=histogram_quantile(0.99, http_request_duration_seconds) <= 250ms or <= 1.2x

Both generations are scraped at the start and at the end of a canary step and each
value is computed from the *increase* over that window (counters, and histogram
buckets for quantiles), so the candidate and the serving generation are compared over
the same seconds of the same traffic mix. A rule passes when the candidate is within
the absolute bound OR within the factor of the serving generation's value: a noisy
error rate that the serving build has too does not roll a good build back.

Too little traffic is not evidence. A window in which the candidate answered fewer
than `min_requests` requests is inconclusive and *extends* into the next step (the
window keeps its start; see `StepAnalysis`), and at the last step it passes and says
so. One exception makes bad builds fail fast: a ratio that would fail even if every
request still missing to the minimum succeeded fails at once.

The gate measures and answers; it never stops a process. It is import-light (str
methods, no `re`, no dataclasses) so that boot/config.py may parse `--analysis` before
generation 1 is spawned; `re` is loaded only for a rule that uses `=~` or `!~`.
"""

from __future__ import annotations

from hotswapd.boot.units import BadValue, need_str, plain_number
from hotswapd.boot.values import Record

TYPE_CHECKING = False  # see boot/config.py
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Literal

    SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # name, sorted labels
    Snapshot = Mapping[SeriesKey, float]

DEFAULT_MIN_REQUESTS = 100
DEFAULT_METRICS_PATH = "/metrics"
_INF = float("inf")
_HINT = (
    'use NAME=sum(METRIC{LABEL="VALUE"})/sum(METRIC) <= LIMIT [or <= FACTORx] or '
    "NAME=histogram_quantile(Q, METRIC) <= LIMIT [or <= FACTORx], "
    'e.g. error-ratio=sum(http_requests_total{code=~"5.."})/sum(http_requests_total) '
    "<= 0.1% or <= 1.5x"
)
_OPS = ("!=", "=~", "!~", "=")  # longest first: `=` is a prefix of `=~`


def series_key(name: str, labels: Mapping[str, str]) -> SeriesKey:
    """The key of one sample in a Snapshot: its name and its labels, sorted."""
    return name, tuple(sorted(labels.items()))


class Matcher(Record):
    """One label matcher; an absent label matches as "" (as in PromQL)."""

    __slots__ = ("label", "op", "value", "pattern")
    label: str
    op: str
    value: str
    pattern: object  # the compiled re.Pattern for =~ and !~ (anchored), else None

    def __init__(self, label: str, op: str, value: str) -> None:
        pattern = None
        if op in ("=~", "!~"):
            import re  # only rules with regex matchers pay for re (see the module docstring)

            try:
                pattern = re.compile(f"(?:{value})\\Z")
            except re.error as exc:
                raise BadValue(f'{label}{op}"{value}": not a regular expression ({exc})') from None
        self._set(label=label, op=op, value=value, pattern=pattern)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = self.pattern.match(actual) is not None  # type: ignore[attr-defined]
        return found if self.op == "=~" else not found


class Selector(Record):
    """A metric name with label matchers: `http_requests_total{code=~"5.."}`."""

    __slots__ = ("metric", "matchers")
    metric: str
    matchers: tuple[Matcher, ...]

    def __init__(self, metric: str, matchers: tuple[Matcher, ...] = ()) -> None:
        self._set(metric=metric, matchers=matchers)

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        return name == self.metric and all(m.matches(labels) for m in self.matchers)


class Rule(Record):
    """One `--analysis` rule, parsed: a ratio of two counters or a histogram quantile."""

    __slots__ = (
        "name",
        "kind",
        "numerator",
        "denominator",
        "quantile",
        "limit",
        "factor",
        "unit",
        "text",
    )
    name: str
    kind: Literal["ratio", "quantile"]
    numerator: Selector  # the histogram for a quantile rule
    denominator: Selector | None
    quantile: float
    limit: float | None  # the absolute bound, as a fraction or in seconds
    factor: float | None  # the bound relative to the serving generation's value
    unit: str  # how values are shown: "%", "s" or "" (a plain number)
    text: str  # the rule as written, for messages

    def __init__(
        self,
        name: str,
        kind: Literal["ratio", "quantile"],
        numerator: Selector,
        denominator: Selector | None,
        quantile: float,
        limit: float | None,
        factor: float | None,
        unit: str,
        text: str,
    ) -> None:
        self._set(
            name=name,
            kind=kind,
            numerator=numerator,
            denominator=denominator,
            quantile=quantile,
            limit=limit,
            factor=factor,
            unit=unit,
            text=text,
        )

    @property
    def metrics(self) -> frozenset[str]:
        """The sample names this rule reads (a scrape may keep only these)."""
        if self.kind == "quantile":
            return frozenset({self.numerator.metric + "_bucket"})
        assert self.denominator is not None
        return frozenset({self.numerator.metric, self.denominator.metric})

    def show(self, value: float | None) -> str:
        """A value in the rule's unit: 0.512%, 312ms, 1.5e+06."""
        if value is None:
            return "no value"
        if self.unit == "%":
            return f"{value * 100:.3g}%"
        if self.unit == "s":
            return f"{value * 1000:.4g}ms" if value < 1 else f"{value:.4g}s"
        return f"{value:.4g}"


# --------------------------------------------------------------------------- parsing


class _Cursor:
    """A position in the rule text; every method skips leading blanks."""

    __slots__ = ("text", "at")

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def blanks(self) -> None:
        while self.at < len(self.text) and self.text[self.at] in " \t":
            self.at += 1

    def take(self, literal: str) -> bool:
        self.blanks()
        if self.text.startswith(literal, self.at):
            self.at += len(literal)
            return True
        return False

    def expect(self, literal: str, what: str) -> None:
        if not self.take(literal):
            raise BadValue(f"expected {literal!r} {what} at column {self.at + 1}; {_HINT}")

    def word(self, extra: str = "") -> str:
        """An identifier: letters, digits, `_` and the `extra` characters."""
        self.blanks()
        start = self.at
        while self.at < len(self.text) and (
            (self.text[self.at].isascii() and self.text[self.at].isalnum())
            or self.text[self.at] in "_" + extra
        ):
            self.at += 1
        return self.text[start : self.at]

    def quoted(self) -> str:
        self.expect('"', "to open a label value")
        out: list[str] = []
        while self.at < len(self.text):
            char = self.text[self.at]
            self.at += 1
            if char == '"':
                return "".join(out)
            if char == "\\" and self.at < len(self.text):
                char = {"n": "\n", "t": "\t"}.get(self.text[self.at], self.text[self.at])
                self.at += 1
            out.append(char)
        raise BadValue(f"a label value is never closed with '\"'; {_HINT}")

    def number(self, what: str) -> tuple[float, str]:
        """A plain number and the unit after it (%, ms, s, x or nothing)."""
        self.blanks()
        start = self.at
        while self.at < len(self.text) and (
            self.text[self.at].isdigit() or self.text[self.at] == "."
        ):
            self.at += 1
        value = plain_number(self.text[start : self.at])
        if value is None:
            raise BadValue(f"expected a number for {what} at column {start + 1}; {_HINT}")
        for unit in ("%", "ms", "s", "x", "X"):
            if self.text.startswith(unit, self.at):
                self.at += len(unit)
                return value, unit.lower()
        return value, ""

    def end(self) -> bool:
        self.blanks()
        return self.at == len(self.text)


def _metric_name(cursor: _Cursor) -> str:
    name = cursor.word(":")
    if not name or name[0].isdigit():
        raise BadValue(f"expected a metric name at column {cursor.at + 1}; {_HINT}")
    return name


def _selector(cursor: _Cursor) -> Selector:
    metric = _metric_name(cursor)
    matchers: list[Matcher] = []
    if cursor.take("{"):
        while not cursor.take("}"):
            if matchers:
                cursor.expect(",", "between label matchers")
                if cursor.take("}"):
                    break  # PromQL allows a trailing comma
            label = cursor.word()
            if not label or label[0].isdigit():
                raise BadValue(f"expected a label name at column {cursor.at + 1}; {_HINT}")
            op = next((op for op in _OPS if cursor.take(op)), None)
            if op is None:
                raise BadValue(f"{label}: expected =, !=, =~ or !~ after the label; {_HINT}")
            matchers.append(Matcher(label, op, cursor.quoted()))
    return Selector(metric, tuple(matchers))


def _bounds(cursor: _Cursor, kind: str, histogram: str) -> tuple[float | None, float | None, str]:
    """`<= LIMIT [or <= FACTORx]` (either order, at most one of each)."""
    limit: float | None = None
    factor: float | None = None
    unit = "%" if kind == "ratio" else ("s" if histogram.endswith("_seconds") else "")
    while True:
        cursor.expect("<=", "before a bound")
        value, suffix = cursor.number("a bound")
        if suffix == "x":
            if factor is not None:
                raise BadValue(f"two factors in one rule; {_HINT}")
            if value < 1:
                raise BadValue(
                    "a factor below 1x would fail a candidate as good as the serving one"
                )
            factor = value
        else:
            if limit is not None:
                raise BadValue(f"two absolute bounds in one rule; {_HINT}")
            if kind == "ratio" and suffix not in ("%", ""):
                raise BadValue(
                    f"a ratio's bound is a fraction (0.001) or a percentage (0.1%), "
                    f"not {value:g}{suffix}"
                )
            if kind == "quantile" and suffix == "%":
                raise BadValue(
                    "a quantile's bound is a value of the histogram (250ms, 0.25), not %"
                )
            limit = value / {"%": 100.0, "ms": 1000.0}.get(suffix, 1.0)
            if suffix in ("ms", "s"):
                unit = "s"
        if cursor.end():
            return limit, factor, unit
        if not cursor.take("or"):
            raise BadValue(f"unexpected text at column {cursor.at + 1}; {_HINT}")


def parse_rule(value: object) -> Rule:
    """One `--analysis NAME=EXPR <= LIMIT [or <= FACTORx]`, or BadValue with the syntax."""
    text = need_str(value, _HINT).strip()
    name, equals, expression = text.partition("=")
    name = name.strip()
    if not equals or not name or not all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        raise BadValue(f"a rule starts with its name (letters, digits, - and _) and '='; {_HINT}")
    cursor = _Cursor(expression)
    function = cursor.word()
    quantile = 0.0
    denominator: Selector | None = None
    if function == "sum":
        cursor.expect("(", "after sum")
        numerator = _selector(cursor)
        cursor.expect(")", "to close sum(")
        cursor.expect("/", "between the two sums of a ratio")
        if cursor.word() != "sum":
            raise BadValue(f"a ratio divides two sums: sum(A) / sum(B); {_HINT}")
        cursor.expect("(", "after sum")
        denominator = _selector(cursor)
        cursor.expect(")", "to close sum(")
        kind: Literal["ratio", "quantile"] = "ratio"
    elif function == "histogram_quantile":
        cursor.expect("(", "after histogram_quantile")
        quantile, suffix = cursor.number("the quantile")
        if suffix or not 0 < quantile < 1:
            raise BadValue(
                f"the quantile is a number between 0 and 1 (0.99), not {quantile:g}{suffix}"
            )
        cursor.expect(",", "after the quantile")
        numerator = _selector(cursor)
        if numerator.metric.endswith("_bucket"):  # the series name, as PromQL users write it
            numerator = Selector(numerator.metric.removesuffix("_bucket"), numerator.matchers)
        if any(m.label == "le" for m in numerator.matchers):
            raise BadValue("histogram_quantile reads every bucket: do not match on le")
        cursor.expect(")", "to close histogram_quantile(")
        kind = "quantile"
    else:
        raise BadValue(f"{name}: expected sum(...)/sum(...) or histogram_quantile(...); {_HINT}")
    limit, factor, unit = _bounds(cursor, kind, numerator.metric)
    return Rule(name, kind, numerator, denominator, quantile, limit, factor, unit, text)


def parse_min_requests(value: object) -> int:
    """`--analysis-min-requests N`: the traffic below which a window is not judged."""
    hint = "a whole number of requests, e.g. 100 (0 judges any traffic)"
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raw = need_str(value, hint).strip()
        if not raw.isdigit() or not raw.isascii():
            raise BadValue(hint)
        number = int(raw)
    if not 0 <= number <= 10**9:
        raise BadValue(hint)
    return number


def parse_metrics_path(value: object) -> str:
    """`--metrics-path /metrics`: where each generation serves its Prometheus metrics."""
    hint = "a metrics path starts with '/', e.g. /metrics"
    path = need_str(value, hint).strip()
    if not path.startswith("/"):
        raise BadValue(hint)
    if not path.isprintable() or " " in path or not path.isascii():
        raise BadValue("a metrics path has no spaces or control characters (write %20 for a space)")
    return path


# --------------------------------------------------------------------------- measuring


def increase(start: Snapshot, end: Snapshot) -> dict[SeriesKey, float]:
    """Each series' increase from `start` to `end`, counter resets included.

    A value that went down means the counter restarted from zero during the window,
    so its whole end value is the increase (what PromQL's increase() assumes too); a
    series absent at the start was created during the window (client_golang creates
    `code="500"` at the first 500), so it counts from zero.
    """
    out: dict[SeriesKey, float] = {}
    for key, value in end.items():
        before = start.get(key, 0.0)
        out[key] = value - before if value >= before else value
    return out


class Measure(Record):
    """One generation's value of one rule over a window, and the traffic behind it."""

    __slots__ = ("value", "requests", "matched")
    value: float | None  # None: no traffic, no value
    requests: float  # the denominator's increase, or the histogram's count
    matched: float  # the numerator's increase (ratio rules; 0 for quantiles)

    def __init__(self, value: float | None, requests: float, matched: float = 0.0) -> None:
        self._set(value=value, requests=requests, matched=matched)


def _total(selector: Selector, delta: Mapping[SeriesKey, float]) -> float:
    return sum(v for (name, labels), v in delta.items() if selector.matches(name, dict(labels)))


def quantile_of(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """histogram_quantile over (upper bound, cumulative count) pairs, as Prometheus does it.

    Linear interpolation inside the bucket holding the rank; a rank in the +Inf bucket
    answers the largest finite bound. Counts are forced monotonic, since buckets that
    reset at different moments can leave them slightly out of order.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][0] != _INF:
        return None
    fixed: list[tuple[float, float]] = []
    highest = 0.0
    for bound, count in ordered:
        highest = max(highest, count)
        fixed.append((bound, highest))
    total = fixed[-1][1]
    if total <= 0:
        return None
    rank = q * total
    below_bound, below_count = 0.0, 0.0
    for index, (bound, count) in enumerate(fixed):
        if count >= rank:
            if bound == _INF:
                return fixed[index - 1][0] if index else None
            if index == 0 and bound <= 0:
                return bound
            if count == below_count:
                return bound
            return below_bound + (bound - below_bound) * (rank - below_count) / (
                count - below_count
            )
        below_bound, below_count = bound, count
    return None  # unreachable: the +Inf bucket holds the whole count


def measure(rule: Rule, delta: Mapping[SeriesKey, float]) -> Measure:
    """The rule's value over a window, from the increases `increase()` gives."""
    if rule.kind == "ratio":
        assert rule.denominator is not None
        matched = _total(rule.numerator, delta)
        requests = _total(rule.denominator, delta)
        return Measure(matched / requests if requests > 0 else None, requests, matched)
    bucket = rule.numerator.metric + "_bucket"
    by_bound: dict[float, float] = {}
    for (name, pairs), value in delta.items():
        labels = dict(pairs)
        if name != bucket or "le" not in labels:
            continue
        if not all(m.matches(labels) for m in rule.numerator.matchers):
            continue
        bound = plain_number(labels["le"]) if labels["le"] != "+Inf" else _INF
        if bound is None:
            try:
                bound = float(labels["le"])  # 1e-05, as some clients spell small bounds
            except ValueError:
                continue
        by_bound[bound] = by_bound.get(bound, 0.0) + value
    requests = by_bound.get(_INF, 0.0)
    return Measure(quantile_of(rule.quantile, by_bound.items()), requests)


# --------------------------------------------------------------------------- judging


class Verdict(Record):
    """One rule's answer for one window: pass, fail or inconclusive, with both values."""

    __slots__ = ("rule", "status", "candidate", "serving", "reason")
    rule: Rule
    status: Literal["pass", "fail", "inconclusive"]
    candidate: Measure
    serving: Measure
    reason: str

    def __init__(
        self,
        rule: Rule,
        status: Literal["pass", "fail", "inconclusive"],
        candidate: Measure,
        serving: Measure,
        reason: str,
    ) -> None:
        self._set(rule=rule, status=status, candidate=candidate, serving=serving, reason=reason)


def _within(rule: Rule, value: float, serving: Measure, min_requests: int) -> tuple[bool, bool]:
    """(passes, judged): the absolute bound OR the factor of a well-fed serving value."""
    if rule.limit is not None and value <= rule.limit:
        return True, True
    comparable = serving.value is not None and serving.requests >= max(min_requests, 1)
    if rule.factor is not None and comparable:
        assert serving.value is not None
        return value <= rule.factor * serving.value, True
    return False, rule.limit is not None


def _counts(rule: Rule, measure: Measure) -> str:
    if rule.kind == "ratio":
        return f"{measure.matched:g} of {measure.requests:g} requests"
    return f"{measure.requests:g} requests"


def _describe(rule: Rule, candidate: Measure, serving: Measure) -> str:
    return (
        f"{rule.name}: candidate {rule.show(candidate.value)} ({_counts(rule, candidate)}), "
        f"serving {rule.show(serving.value)} ({_counts(rule, serving)})"
    )


def _bound_text(rule: Rule, joiner: str) -> str:
    """The bounds as `0.1% or 1.5x the serving generation's` (joiner "or" / "and over")."""
    parts = [rule.show(rule.limit)] if rule.limit is not None else []
    if rule.factor is not None:
        parts.append(f"{rule.factor:g}x the serving generation's")
    return f" {joiner} ".join(parts)


def judge(
    rule: Rule, candidate: Measure, serving: Measure, min_requests: int, *, final: bool = False
) -> Verdict:
    """The verdict for one window; `final` is the last step, where too little traffic passes."""
    described = _describe(rule, candidate, serving)
    if candidate.value is None or candidate.requests < max(min_requests, 1):
        if rule.kind == "ratio" and candidate.matched > 0 and min_requests > 0:
            # The best the candidate could still do: every missing request succeeds.
            best = candidate.matched / max(min_requests, candidate.requests)
            passes, judged = _within(rule, best, serving, min_requests)
            if judged and not passes:
                return Verdict(
                    rule,
                    "fail",
                    candidate,
                    serving,
                    f"{described}: over {_bound_text(rule, 'and over')} even if the next "
                    f"{min_requests - candidate.requests:g} requests succeed",
                )
        status: Literal["pass", "inconclusive"] = "pass" if final else "inconclusive"
        rule_for = "not judged, the last step passes" if final else "the window extends"
        return Verdict(
            rule,
            status,
            candidate,
            serving,
            f"{described}: too little traffic to judge (fewer than {min_requests} "
            f"requests to the candidate; {rule_for})",
        )
    passes, judged = _within(rule, candidate.value, serving, min_requests)
    if passes:
        return Verdict(
            rule, "pass", candidate, serving, f"{described}: within {_bound_text(rule, 'or')}"
        )
    if not judged:  # factor only, and the serving generation had too little traffic
        status = "pass" if final else "inconclusive"
        return Verdict(
            rule,
            status,
            candidate,
            serving,
            f"{described}: the serving generation had too little traffic to compare "
            f"(fewer than {min_requests} requests)",
        )
    return Verdict(
        rule, "fail", candidate, serving, f"{described}: over {_bound_text(rule, 'and over')}"
    )


def evaluate(
    rule: Rule,
    candidate: tuple[Snapshot, Snapshot],
    serving: tuple[Snapshot, Snapshot],
    min_requests: int = DEFAULT_MIN_REQUESTS,
    *,
    final: bool = False,
) -> Verdict:
    """One rule over one window, from each generation's (start, end) scrapes."""
    return judge(
        rule,
        measure(rule, increase(*candidate)),
        measure(rule, increase(*serving)),
        min_requests,
        final=final,
    )


class StepVerdict(Record):
    """Every rule's verdict for a window and what the canary does next."""

    __slots__ = ("outcome", "verdicts")
    outcome: Literal["pass", "fail", "extend"]
    verdicts: tuple[Verdict, ...]

    def __init__(
        self, outcome: Literal["pass", "fail", "extend"], verdicts: tuple[Verdict, ...]
    ) -> None:
        self._set(outcome=outcome, verdicts=verdicts)

    @property
    def reason(self) -> str:
        """The failed rules' reasons (or every rule's, when none failed), one line."""
        failed = [v.reason for v in self.verdicts if v.status == "fail"]
        return "; ".join(failed or [v.reason for v in self.verdicts])


class StepAnalysis:
    """The analysis of one swap's canary steps: when a window starts, and its verdict.

    Call `begin()` with both generations' scrapes at the start of each step and
    `judge()` with them at its end. A window that was inconclusive keeps its start:
    the next step's `begin()` is ignored, so its judgement covers both steps' traffic.
    The scrape at one step's end may serve as the next one's start.

    A serving generation whose scrape failed is passed as None: the window then
    compares by the absolute bounds only (a factor has nothing to compare with), so
    an unreadable serving generation never rolls a candidate back by itself.

    `fail_fast()` is a look in the middle of a step (scrape both every second or so):
    it answers only a failure and leaves the window as it is, so a bad candidate loses
    its weight a scrape interval after its errors begin, not at the end of the step.
    """

    __slots__ = ("rules", "min_requests", "_start", "_extended")

    def __init__(self, rules: Iterable[Rule], min_requests: int = DEFAULT_MIN_REQUESTS) -> None:
        self.rules = tuple(rules)
        self.min_requests = min_requests
        self._start: tuple[Snapshot, Snapshot | None] | None = None
        self._extended = False

    @property
    def extending(self) -> bool:
        """Whether the open window began in an earlier step (that one was inconclusive)."""
        return self._extended

    def begin(self, candidate: Snapshot, serving: Snapshot | None) -> None:
        if self._start is None:
            self._start = (candidate, serving)

    def _verdicts(self, candidate: Snapshot, serving: Snapshot | None, final: bool) -> StepVerdict:
        if self._start is None:
            raise RuntimeError("StepAnalysis: judge() or fail_fast() before begin()")
        start_candidate, start_serving = self._start
        if start_serving is None or serving is None:  # no increase: nothing to compare with
            start_serving = serving = start_serving or serving or {}
        verdicts = tuple(
            evaluate(
                rule,
                (start_candidate, candidate),
                (start_serving, serving),
                self.min_requests,
                final=final,
            )
            for rule in self.rules
        )
        statuses = {v.status for v in verdicts}
        outcome: Literal["pass", "fail", "extend"]
        if "fail" in statuses:
            outcome = "fail"
        elif "inconclusive" in statuses:
            outcome = "extend"
        else:
            outcome = "pass"
        return StepVerdict(outcome, verdicts)

    def judge(
        self, candidate: Snapshot, serving: Snapshot | None, *, final: bool = False
    ) -> StepVerdict:
        """The verdict at the end of a step; `final` for the last step before cutover."""
        verdict = self._verdicts(candidate, serving, final)
        self._extended = verdict.outcome == "extend"
        if not self._extended:
            self._start = None
        return verdict

    def fail_fast(self, candidate: Snapshot, serving: Snapshot | None) -> StepVerdict | None:
        """The failing verdict if a rule already fails mid-step, else None (window kept)."""
        verdict = self._verdicts(candidate, serving, final=False)
        return verdict if verdict.outcome == "fail" else None
