"""Canary analysis wired into the swap (issue 13): real hotswapd, real flaky Go builds,
real sockets. Each generation's /metrics is read through the public address."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotswapd.boot.config import parse_run_args
from hotswapd.errors import UsageError
from tests.harness import Hotswapd
from tests.helpers import wait_until
from tests.load import Load
from tests.test_control import run_cli
from tests.test_metrics import scrape
from tests.test_steering import Fresh, get_pid

Start = Any
Build = Callable[..., Path]
GATED = ["--settle", "0", "--drain-timeout", "5s", "--stop-timeout", "5s",
         "--health", "/healthz", "--health-timeout", "3s"]  # fmt: skip
ERROR_RULE = (
    'error-ratio=sum(http_requests_total{code=~"5.."}) / sum(http_requests_total) '
    "<= 0.1% or <= 1.5x"
)
ANALYSIS = ["--analysis", ERROR_RULE, "--analysis-min-requests", "20"]


def install(src: Path, dest: Path) -> None:
    """Replace the program by rename, as a build or `hotswapd deploy` does."""
    tmp = dest.with_name(dest.name + ".new")
    shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def start(hotswapd: Start, tmp_path: Path, first: Path, *extra: str) -> tuple[Hotswapd, Path, int]:
    """hotswapd on a steered loopback port running `first`; the program path and the port."""
    program = tmp_path / "app" / "server"
    program.parent.mkdir()
    shutil.copy2(first, program)
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *GATED, *extra], [str(program)])
    port = run.port()
    run.wait_event("supervising")
    run.wait_event("spawned")
    return run, program, port


def test_a_five_percent_build_is_rolled_back_at_its_first_step(
    hotswapd: Start, tmp_path: Path, flaky: Build
) -> None:
    """A 5%-errors candidate fails the error rule at step 1, both ratios in the reason."""
    run, program, port = start(hotswapd, tmp_path, flaky("v1"), "--canary", "25%:2s,50%:2s",
                               *ANALYSIS, "--metrics", "127.0.0.1:0")  # fmt: skip
    serving_pid = int(run.wait_event("spawned")["pid"])
    install(flaky("v2", "-X main.errorPercent=5"), program)
    with Fresh(port, threads=4) as client:
        wait_until(lambda: client.count() > 50, 10, "load running")
        run.signal(signal.SIGUSR2)
        outcome = run.wait_event("swap_finished", timeout=30)
    assert outcome["outcome"] == "rolled_back", outcome
    assert outcome["code"] == "analysis"
    reason = str(outcome["reason"])
    assert reason.startswith("canary step 1 (25%): error-ratio: candidate "), reason
    assert "serving 0% (0 of " in reason, reason
    assert "over 0.1% and over 1.5x the serving generation's" in reason
    assert outcome["active_pid"] == serving_pid  # generation 1 still serves
    assert not run.events("swap_canary_step", step=2)
    assert client.failures == []
    _, samples = scrape(run.wait_event("metrics_listening")["address"])
    rule = (("role", "candidate"), ("rule", "error-ratio"))
    assert samples[("hotswapd_analysis_value", rule)] >= 0.01
    assert samples[("hotswapd_analysis_value", (("role", "serving"), ("rule", "error-ratio")))] == 0
    assert (
        samples[("hotswapd_swaps_total", (("outcome", "rolled_back"), ("reason", "analysis")))] == 1
    )
    assert samples[("hotswapd_listener_mode", (("listener", "http"), ("mode", "steered")))] == 1
    assert samples[("hotswapd_canary_weight_percent", (("listener", "http"),))] == 0


def test_an_unchanged_build_passes_every_step(
    hotswapd: Start, tmp_path: Path, flaky: Build
) -> None:
    """An unchanged build passes the error rule at each step and is committed."""
    run, program, port = start(hotswapd, tmp_path, flaky("v1"), "--canary", "20%:1s,50%:1s",
                               *ANALYSIS)  # fmt: skip
    install(flaky("v1b"), program)
    with Fresh(port, threads=4) as client:
        wait_until(lambda: client.count() > 50, 10, "load running")
        run.signal(signal.SIGUSR2)
        outcome = run.wait_event("swap_finished", timeout=30)
    assert outcome["outcome"] == "committed", outcome
    judged = run.events("swap_analysis")
    assert [(e["step"], e["outcome"]) for e in judged if e["outcome"] != "fail"][-2:] == [
        (1, "pass"),
        (2, "pass"),
    ], judged
    assert "candidate 0% (" in judged[-1]["reason"]
    assert client.failures == []


def test_a_build_that_leaks_after_cutover_is_swapped_back_by_probation(
    hotswapd: Start, tmp_path: Path, flaky: Build
) -> None:
    """A build that grows 96 MiB after cutover fails probation; the previous build serves."""
    run, program, port = start(hotswapd, tmp_path, flaky("v1"), "--probation", "4s",
                               "--metrics", "127.0.0.1:0")  # fmt: skip
    install(flaky("v2", "-X main.growAfter=700ms -X main.growMiB=96"), program)
    run.signal(signal.SIGUSR2)
    first = run.wait_event("swap_finished", timeout=30)
    assert first["outcome"] == "committed", first
    leaky = first["active_pid"]
    run.wait_event("probation_started", generation=2)
    failed = run.wait_event("probation_failed", timeout=15)
    assert failed["generation"] == 2
    assert str(failed["reason"]).startswith("during probation, memory grew from "), failed
    back = run.wait_event("swap_finished", count=2, timeout=30)
    assert run.wait_event("swap_requested", source="probation")["swap"] == back["swap"]
    assert back["outcome"] == "committed", back
    assert back["active_pid"] != leaky
    assert get_pid(port) == str(back["active_pid"])  # generation 3, the v1 build, serves
    assert not run.events("probation_started", generation=3)  # the swap back has none
    _, samples = scrape(run.wait_event("metrics_listening")["address"])
    assert samples[("hotswapd_probations_total", (("outcome", "failed"),))] == 1
    assert samples[("hotswapd_generation_rss_delta_bytes", (("at", "probation_end"),))] > 32 << 20


def test_a_build_whose_health_hangs_is_replaced_by_liveness_under_load(
    hotswapd: Start, tmp_path: Path, flaky: Build
) -> None:
    """Health hangs after 2 s: liveness swaps in a fresh generation, 0 failed requests."""
    hanging = flaky("v1", "-X main.hangHealthAfter=2s")
    run, _program, port = start(hotswapd, tmp_path, hanging, "--liveness", "200ms,2",
                                "--health-timeout", "1s")  # fmt: skip
    hung = int(run.wait_event("spawned")["pid"])
    with Load(port, connections=4) as load:
        replacing = run.wait_event("liveness_replacing", timeout=20)
        outcome = run.wait_event("swap_finished", timeout=30)
        wait_until(lambda: get_pid(port) == str(outcome["active_pid"]), 10, "the new one serving")
        result = load.stop()
    assert replacing["generation"] == 1
    assert replacing["pid"] == hung
    assert "2 liveness probes in a row failed" in str(replacing["reason"])
    assert run.wait_event("swap_requested", source="liveness")["swap"] == outcome["swap"]
    assert outcome["outcome"] == "committed", outcome
    assert outcome["active_pid"] != hung
    assert result.failures == []
    assert result.ok > 100


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--analysis", ERROR_RULE], "--analysis judges the candidate during canary steps"),
        (["--liveness", "5s"], "--liveness probes the active generation's health"),
    ],
)
def test_an_option_that_would_do_nothing_is_a_usage_error(argv: list[str], says: str) -> None:
    """--analysis without --canary and --liveness without --health are refused, not ignored."""
    with pytest.raises(UsageError, match=says):
        parse_run_args([*argv, "--", "/app/server"])


def test_the_canary_options_parse_into_the_config() -> None:
    """--analysis, --probation and --liveness reach the Config the supervisor runs with."""
    argv = ["--canary", "5%:1s", *ANALYSIS, "--health", "/healthz", "--probation", "30s",
            "--liveness", "2s,5", "--", "/app/server"]  # fmt: skip
    config = parse_run_args(argv)
    assert [rule.name for rule in config.analysis] == ["error-ratio"]
    assert config.analysis_min_requests == 20
    assert config.probation == 30.0
    assert config.liveness is not None
    assert (config.liveness.interval, config.liveness.failures) == (2.0, 5)


def test_ctl_status_shows_the_probation_time_left_until_it_passes(
    hotswapd: Start, tmp_path: Path, flaky: Build
) -> None:
    """`ctl status --json` gives the probation's seconds left; a steady build passes it."""
    sock = str(tmp_path / "control.sock")
    run, program, _port = start(hotswapd, tmp_path, flaky("v1"), "--probation", "3s",
                                "--control-socket", sock)  # fmt: skip
    install(flaky("v1b"), program)
    run.signal(signal.SIGUSR2)
    run.wait_event("probation_started", generation=2)

    def status() -> dict[str, Any]:
        result = run_cli("ctl", "--control-socket", sock, "status", "--json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    watching = status()["probation"]
    assert watching["generation"] == 2
    assert 0 < watching["remaining_s"] <= 3
    assert run.wait_event("probation_passed", timeout=10)["generation"] == 2
    after = status()
    assert after["probation"] is None
    assert after["counters"]["probations"] == {"passed": 1}
    assert after["active"]["generation"] == 2


def test_probation_judges_the_analysis_rules_after_cutover(
    hotswapd: Start, tmp_path: Path, flaky: Build
) -> None:
    """A 5%-errors build unjudged in its canary (no traffic) fails probation by the rule."""
    run, program, port = start(hotswapd, tmp_path, flaky("v1"), "--canary", "20%:300ms",
                               *ANALYSIS, "--probation", "10s")  # fmt: skip
    install(flaky("v2", "-X main.errorPercent=5"), program)
    run.signal(signal.SIGUSR2)
    first = run.wait_event("swap_finished", timeout=30)
    assert first["outcome"] == "committed", first  # too little traffic: passed, not judged
    assert run.events("swap_analysis", step=1)[-1]["outcome"] == "pass"
    with Load(port, connections=2):
        failed = run.wait_event("probation_failed", timeout=15)
        back = run.wait_event("swap_finished", count=2, timeout=30)
    reason = str(failed["reason"])
    assert reason.startswith("during probation, error-ratio: candidate "), reason
    assert "over 0.1%" in reason
    assert back["outcome"] == "committed", back
    assert run.wait_event("swap_requested", source="probation")["swap"] == back["swap"]
    assert get_pid(port) == str(back["active_pid"])
    assert back["active_pid"] != first["active_pid"]
