"""Smoke tests for bench/: each benchmark runs in --quick mode and writes sane JSON.

Not timed assertions: the figures only have to exist, be positive and be consistent
(the quick swap run must still lose no request under hotswapd).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO

BENCH = REPO / "bench"


def run_bench(script: str, tmp_path: Path, *extra: str, timeout: float = 90) -> dict[str, Any]:
    """Run `bench/<script> --quick --json <tmp>` and return the JSON it wrote."""
    out = tmp_path / (Path(script).stem + ".json")
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--json", str(out), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert out.exists(), done.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@pytest.mark.timeout(100)
@pytest.mark.skipif(shutil.which("gcc") is None, reason="the clock child needs gcc")
def test_startup_quick_writes_figures(tmp_path: Path) -> None:
    """bench_startup --quick times every variant and reads each supervisor's RSS."""
    data = run_bench("bench_startup.py", tmp_path)
    timings = data["start_to_exec_ms"]
    for key in (
        "hotswapd_m",
        "hotswapd_script",
        "python3_pass",
        "venv_python_pass",
        "naive_asyncio",
        "python_exec",
    ):
        assert key in timings, sorted(timings)
    for key, row in timings.items():
        assert row["n"] == data["runs"] == 5, key
        for stat in ("median", "p90", "min", "max"):
            assert positive(row[stat]), (key, stat, row)
        assert row["min"] <= row["median"] <= row["p90"] <= row["max"], (key, row)
    assert isinstance(data["target_met"], bool)
    supervisors = data["rss"]["supervisors"]
    assert {"hotswapd_m", "python3_sleep"} <= set(supervisors)
    for key, row in supervisors.items():
        assert positive(row["VmRSS_kib"]), (key, row)
    assert positive(data["rss"]["hotswapd_logged_startup_ms"]["median"])
    profile = data["import_profile"]
    assert positive(profile["hotswapd_imports_before_spawn_ms"])
    assert profile["heaviest_before_spawn"], profile
    assert "hotswapd.cli, hotswapd.boot.run" in profile["marginal_import_cost"]["marginal_ms"]


@pytest.mark.timeout(100)
def test_swap_quick_loses_nothing_under_hotswapd(tmp_path: Path) -> None:
    """bench_swap --quick: hotswapd commits 3 swaps with 0 failures; every figure is there."""
    png = tmp_path / "swap.png"
    data = run_bench("bench_swap.py", tmp_path, "--png", str(png))
    hot, naive = data["hotswapd"], data["naive_restart"]
    assert data["config"]["swaps"] == 3
    assert hot["failures"] == 0, hot["failure_kinds"]
    assert hot["swaps_committed"] == hot["swaps"] == 3
    assert hot["distinct_responding_pids"] >= 4  # a new generation answers after every swap
    assert naive["restarts"] == 3
    for run in (hot, naive):
        assert positive(run["requests"])
        assert run["ok"] + run["failures"] == run["requests"]
        assert 0 <= run["error_rate_pct"] <= 100
    over = data["overhead"]
    assert over["swaps_measured"] == 3
    for key in ("gate_to_signal_ms", "signal_to_cutover_ms", "signal_to_finished_ms"):
        assert positive(over[key]["median"]), (key, over)
        assert positive(over[key]["max"]), (key, over)
    assert over["gate_to_signal_ms"]["median"] <= over["signal_to_cutover_ms"]["median"]
    assert {"spawned", "ready", "cutover", "old_exited"} <= set(over["phase_ms"])
    assert positive(naive["signal_to_new_ready_ms"]["median"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
