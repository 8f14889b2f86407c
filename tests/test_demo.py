"""The README's demo, end to end: its result table must show zero failed requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def test_demo_swaps_with_zero_failures_and_rolls_back_the_bad_build(tmp_path: Path) -> None:
    """scripts/demo.py: v1 → v2 committed, the bad build rolled back, no request failed."""
    out = tmp_path / "demo.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--json", str(out), "--seconds", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["failed"] == 0
    assert result["requests"] > 1000
    assert [swap["outcome"] for swap in result["swaps"]] == ["committed", "rolled_back"]
    assert "answered HTTP 503" in result["swaps"][1]["reason"]
    assert set(result["versions"]) == {"v1", "v2"}
    assert "failed requests                0" in proc.stdout
    assert "result: OK" in proc.stdout
