"""Smoke set run on every supported Python (3.11 here, 3.12 and 3.13 by scripts/smoke.sh)."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from tests.harness import CHILD, run_to_exit


def test_every_module_imports() -> None:
    """Every hotswapd module imports, pyinotify included (pyasyncore on 3.12+)."""
    package = Path(__file__).parent.parent / "hotswapd"
    names = [path.stem for path in package.glob("*.py") if path.stem != "__main__"]
    for name in names:
        importlib.import_module(f"hotswapd.{name}" if name != "__init__" else "hotswapd")
    if sys.version_info >= (3, 12):
        assert importlib.import_module("asyncore").__name__ == "asyncore"


def test_pid1_start_and_exit_code() -> None:
    """hotswapd starts as PID 1 and exits with the child's code."""
    exit_code, run = run_to_exit([], [*CHILD, "--exit", "42"])
    assert exit_code == 42
    assert run.events("init", role="pid1")


def test_one_swap(hotswapd: Any, go_server: Any, tmp_path: Path) -> None:
    """One SIGUSR2 swap of the example Go server commits."""
    program = tmp_path / "server"
    shutil.copy2(go_server("v1"), program)
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", "--health", "/healthz", "--settle", "0"],
                   [str(program)])  # fmt: skip
    run.wait_event("supervising")
    run.signal(signal.SIGUSR2)
    assert run.wait_event("swap_finished")["outcome"] == "committed"


def test_one_watch(hotswapd: Any, go_server: Any, tmp_path: Path) -> None:
    """A new build renamed over the watched program triggers one committed swap."""
    program = tmp_path / "server"
    shutil.copy2(go_server("v1"), program)
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", "--health", "/healthz", "--settle", "0",
                    "--debounce", "50ms", "--watch", str(program)], [str(program)])  # fmt: skip
    run.wait_event("supervising")
    staged = tmp_path / "server.new"
    shutil.copy2(go_server("v2"), staged)
    os.replace(staged, program)
    finished = run.wait_event("swap_finished")
    assert finished["outcome"] == "committed"
    assert run.events("swap_requested", source="watch")
