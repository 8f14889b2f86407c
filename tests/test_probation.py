"""Probation and liveness decisions: observations in, a decision out, one branch per test."""

from __future__ import annotations

import pytest

from hotswapd.boot.units import BadValue
from hotswapd.boot.values import LivenessRule, MemoryGrowth, parse_liveness
from hotswapd.core.probation import Liveness, Probation, parse_probation
from hotswapd.gates import analysis

MIB = 1 << 20
RULE = MemoryGrowth(ratio=1.5, allowance=32 * MIB)


def probation(duration: float = 30.0) -> Probation:
    """A probation that started at t=100 after a previous generation of 100 MiB."""
    return Probation(duration, 100.0, baseline_rss=100 * MIB, rss_at_commit=90 * MIB, rule=RULE)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5s", LivenessRule(5.0, 3)),
        ("500ms,1", LivenessRule(0.5, 1)),
        (" 2s , 5 ", LivenessRule(2.0, 5)),
        ("off", None),
        ("0", None),
    ],
)
def test_liveness_option_parses(value: str, expected: LivenessRule | None) -> None:
    """--liveness INTERVAL[,FAILURES] gives the interval and count (default 3), or off."""
    assert parse_liveness(value) == expected


@pytest.mark.parametrize("value", ["5s,0", "5s,101", "5s,x", "fast", "-1s", "5s,", 5])
def test_bad_liveness_values_say_what_is_accepted(value: object) -> None:
    """A bad --liveness is one BadValue with the accepted form."""
    with pytest.raises(BadValue, match=r"INTERVAL\[,FAILURES\]|expected a string"):
        parse_liveness(value)


def test_probation_option_is_a_duration() -> None:
    """--probation takes the durations every timeout takes; 0 is off."""
    assert parse_probation("30s") == 30.0
    assert parse_probation("0") == 0.0
    with pytest.raises(BadValue):
        parse_probation("soon")


def test_probation_passes_when_the_time_is_up() -> None:
    """Nothing went wrong for the whole duration: passed, and the pass sticks."""
    watch = probation()
    assert watch.tick(110.0).outcome == "watching"
    assert watch.remaining(110.0) == pytest.approx(20.0)
    done = watch.tick(130.0)
    assert (done.outcome, done.reason) == ("passed", "survived 30s of probation")
    assert watch.on_exit(131.0, "exited with status 3").outcome == "passed"
    assert watch.remaining(131.0) == 0.0


def test_an_exit_during_probation_fails_it() -> None:
    """The generation exiting inside the window fails probation, saying when."""
    decision = probation().on_exit(120.0, "exited with status 3")
    assert decision.outcome == "failed"
    assert decision.reason == "exited with status 3 during probation (10s left)"


def test_probes_fail_probation_only_in_a_row() -> None:
    """Three consecutive failed probes fail it; a success in between resets the count."""
    watch = probation()
    assert watch.on_probe(101, False).outcome == "watching"
    assert watch.on_probe(102, False).outcome == "watching"
    assert watch.on_probe(103, True).outcome == "watching"
    assert watch.on_probe(104, False).outcome == "watching"
    assert watch.on_probe(105, False).outcome == "watching"
    failed = watch.on_probe(106, False, "answered HTTP 503")
    assert failed.outcome == "failed"
    assert failed.reason == (
        "3 health probes in a row failed during probation (last: answered HTTP 503)"
    )
    assert watch.on_probe(107, True) is failed  # sticky


def test_memory_growth_over_the_previous_generation_fails_probation() -> None:
    """RSS past --max-memory-growth of the previous generation's at commit fails it."""
    watch = probation()
    assert watch.rss_delta_at_commit == -10 * MIB
    assert watch.on_memory(105, 140 * MIB).outcome == "watching"  # 1.4x: within 1.5x
    assert watch.rss_delta == 40 * MIB
    failed = watch.on_memory(110, 300 * MIB)
    assert failed.outcome == "failed"
    assert failed.reason.startswith("during probation, memory grew from 100.0 MiB to 300.0 MiB")
    assert watch.rss_delta == 200 * MIB


def test_a_failed_analysis_window_fails_probation() -> None:
    """An analysis window that fails (against the previous generation's values) fails it."""
    rule = analysis.parse_rule(
        'e=sum(http_requests_total{code="500"})/sum(http_requests_total) <= 1%'
    )
    bad = analysis.judge(rule, analysis.Measure(0.05, 1000, 50), analysis.Measure(0.0, 9000), 100)
    good = analysis.judge(rule, analysis.Measure(0.0, 1000, 0), analysis.Measure(0.0, 9000), 100)
    watch = probation()
    assert watch.on_analysis(105, analysis.StepVerdict("pass", (good,))).outcome == "watching"
    failed = watch.on_analysis(110, analysis.StepVerdict("fail", (bad,)))
    assert failed.outcome == "failed"
    assert "candidate 5% (50 of 1000 requests)" in failed.reason


def test_liveness_asks_for_one_replacement_after_n_failures() -> None:
    """FAILURES consecutive failures ask to replace once; reset() re-arms it."""
    live = Liveness(LivenessRule(1.0, 2))
    assert live.on_probe(False).outcome == "failing"
    assert live.on_probe(True).outcome == "ok"
    assert live.on_probe(False).outcome == "failing"
    replace = live.on_probe(False, "timed out after 1s")
    assert (replace.outcome, replace.failures) == ("replace", 2)
    assert replace.reason == (
        "2 liveness probes in a row failed (last: timed out after 1s): replacing the generation"
    )
    assert live.on_probe(False).outcome == "failing"  # asked once, not at every probe
    live.reset()
    assert live.on_probe(False).outcome == "failing"
    assert live.on_probe(False).outcome == "replace"
    assert live.next_probe(10.0) == 11.0
