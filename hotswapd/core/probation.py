"""Probation and liveness: what to decide about the active generation after the swap.

Both are decisions only — observations in, a verdict out — so every branch is tested
in milliseconds and the supervisor stays the one place that acts (STYLE rules 3, 5):

- `Probation` (`--probation DURATION`) watches a generation for a while after its
  cutover: an exit, failed health probes, memory against the *previous* generation's
  at commit (the `--max-memory-growth` rule, the memory gate's own `verdict`), and a
  failed analysis window. Any of them fails it; the supervisor then swaps back to the
  previous committed binary through a normal gated swap. Surviving the whole duration
  passes it. Once decided, the decision sticks.
- `Liveness` (`--liveness INTERVAL[,FAILURES]`) keeps probing the active generation
  and asks for a replacement (a fresh generation of the same program, through a normal
  gated swap) after FAILURES consecutive failed probes — instead of a hung server
  serving nothing until an orchestrator restarts the whole container.

The --liveness parser and its record live in boot/values.py (boot parses every option
before the first fork and may not import core/).
"""

from __future__ import annotations

from hotswapd.boot.units import format_duration, parse_duration
from hotswapd.boot.values import LivenessRule, MemoryGrowth, Record
from hotswapd.gates import memory

TYPE_CHECKING = False  # see boot/config.py
if TYPE_CHECKING:
    from typing import Literal

    from hotswapd.gates.analysis import StepVerdict

DEFAULT_PROBATION_PROBE_FAILURES = 3  # one lost probe is noise; three in a row is not


def parse_probation(value: object) -> float:
    """`--probation DURATION`: seconds to watch after cutover; 0 is off."""
    return parse_duration(value)


class Decision(Record):
    """Probation's answer to one observation: keep watching, passed, or failed (why)."""

    __slots__ = ("outcome", "reason", "remaining")
    outcome: Literal["watching", "passed", "failed"]
    reason: str
    remaining: float  # seconds of probation left (0 once decided)

    def __init__(
        self, outcome: Literal["watching", "passed", "failed"], reason: str, remaining: float
    ) -> None:
        self._set(outcome=outcome, reason=reason, remaining=remaining)


class Probation:
    """The probation of one committed generation; times are the loop's monotonic clock."""

    __slots__ = (
        "duration",
        "ends_at",
        "baseline_rss",
        "rule",
        "probe_failures",
        "rss_at_commit",
        "rss_last",
        "_failed_probes",
        "_decision",
    )

    def __init__(
        self,
        duration: float,
        committed_at: float,
        *,
        baseline_rss: int,
        rss_at_commit: int = 0,
        rule: MemoryGrowth,
        probe_failures: int = DEFAULT_PROBATION_PROBE_FAILURES,
    ) -> None:
        """`baseline_rss` is the previous generation's RSS at commit, `rss_at_commit` ours."""
        self.duration = duration
        self.ends_at = committed_at + duration
        self.baseline_rss = baseline_rss
        self.rule = rule
        self.probe_failures = probe_failures
        self.rss_at_commit = rss_at_commit
        self.rss_last = rss_at_commit
        self._failed_probes = 0
        self._decision: Decision | None = None

    def remaining(self, now: float) -> float:
        """Seconds left, for `ctl status` (0 once decided or over)."""
        return 0.0 if self._decision else max(0.0, self.ends_at - now)

    @property
    def decision(self) -> Decision | None:
        return self._decision

    @property
    def rss_delta_at_commit(self) -> int:
        """Our RSS at commit minus the previous generation's then (a golden signal)."""
        return self.rss_at_commit - self.baseline_rss

    @property
    def rss_delta(self) -> int:
        """RSS at the last sample minus the previous generation's at commit: at the end of
        probation, the other golden signal."""
        return self.rss_last - self.baseline_rss

    def _decide(self, outcome: Literal["passed", "failed"], reason: str) -> Decision:
        self._decision = Decision(outcome, reason, 0.0)
        return self._decision

    def _settled(self, now: float) -> Decision | None:
        """The sticky decision, or a pass when the time is up (later events are not ours)."""
        if self._decision is not None:
            return self._decision
        if now >= self.ends_at:
            return self._decide("passed", f"survived {format_duration(self.duration)} of probation")
        return None

    def _watching(self, now: float, reason: str = "") -> Decision:
        return Decision("watching", reason, self.ends_at - now)

    def tick(self, now: float) -> Decision:
        """Call at `ends_at` (and whenever convenient): passes once the time is up."""
        return self._settled(now) or self._watching(now)

    def on_exit(self, now: float, description: str) -> Decision:
        """The generation exited (`description`: 'exited with status 3', 'killed by SIGSEGV')."""
        settled = self._settled(now)
        if settled:
            return settled
        left = format_duration(round(self.ends_at - now, 3))
        return self._decide("failed", f"{description} during probation ({left} left)")

    def on_probe(self, now: float, healthy: bool, detail: str = "") -> Decision:
        """One health probe; `probe_failures` consecutive failures fail probation."""
        settled = self._settled(now)
        if settled:
            return settled
        if healthy:
            self._failed_probes = 0
            return self._watching(now)
        self._failed_probes += 1
        if self._failed_probes >= self.probe_failures:
            return self._decide(
                "failed",
                f"{self._failed_probes} health probes in a row failed during probation"
                + (f" (last: {detail})" if detail else ""),
            )
        return self._watching(now, f"health probe failed ({self._failed_probes} in a row)")

    def on_memory(self, now: float, rss: int) -> Decision:
        """An RSS sample of the generation's tree, held to --max-memory-growth."""
        settled = self._settled(now)
        if settled:
            return settled
        self.rss_last = rss
        reason = memory.verdict(self.baseline_rss, rss, self.rule)
        if reason:
            return self._decide("failed", f"during probation, {reason}")
        return self._watching(now)

    def on_analysis(self, now: float, verdict: StepVerdict) -> Decision:
        """A window of the analysis rules against the previous generation's last values."""
        settled = self._settled(now)
        if settled:
            return settled
        if verdict.outcome == "fail":
            return self._decide("failed", f"during probation, {verdict.reason}")
        return self._watching(now)


class LivenessDecision(Record):
    """Liveness's answer to one probe: fine, failing (how many in a row), or replace now."""

    __slots__ = ("outcome", "failures", "reason")
    outcome: Literal["ok", "failing", "replace"]
    failures: int
    reason: str

    def __init__(
        self, outcome: Literal["ok", "failing", "replace"], failures: int, reason: str
    ) -> None:
        self._set(outcome=outcome, failures=failures, reason=reason)


class Liveness:
    """Consecutive failed probes of the active generation; asks once for a replacement.

    After "replace" further failures answer "failing" until `reset()`, which the
    supervisor calls when a new generation becomes active (a replacement or any swap)
    or when the replacement swap was rolled back (so it is tried again after another
    FAILURES failures, not at every probe).
    """

    __slots__ = ("rule", "_failures", "_asked")

    def __init__(self, rule: LivenessRule) -> None:
        self.rule = rule
        self._failures = 0
        self._asked = False

    def next_probe(self, last_probe_at: float) -> float:
        return last_probe_at + self.rule.interval

    def reset(self) -> None:
        self._failures = 0
        self._asked = False

    def on_probe(self, healthy: bool, detail: str = "") -> LivenessDecision:
        if healthy:
            self._failures = 0
            return LivenessDecision("ok", 0, "")
        self._failures += 1
        what = f"{self._failures} liveness probes in a row failed" + (
            f" (last: {detail})" if detail else ""
        )
        if self._failures >= self.rule.failures and not self._asked:
            self._asked = True
            return LivenessDecision("replace", self._failures, f"{what}: replacing the generation")
        return LivenessDecision("failing", self._failures, what)
