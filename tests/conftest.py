"""Fixtures: a factory for hotswapd runs that are always torn down, and built Go servers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Hotswapd
from tests.helpers import REPO, build_go_server, go_binary

_BUILD = REPO / "build" / "test-servers"


@pytest.fixture
def hotswapd() -> Iterator[Any]:
    """Start hotswapd runs; each is killed with its whole tree at teardown."""
    runs: list[Hotswapd] = []

    def start(options: list[str], command: list[str], **kwargs: Any) -> Hotswapd:
        run = Hotswapd(options, command, **kwargs)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill_tree()


@pytest.fixture(scope="session")
def go_server() -> Any:
    """Build the example Go server once per variant (version and -X knobs)."""
    cache: dict[tuple[str, str], Path] = {}

    def build(version: str = "v1", knobs: str = "") -> Path:
        key = (version, knobs)
        if key not in cache:
            _BUILD.mkdir(parents=True, exist_ok=True)
            name = f"server-{version}" + (f"-{abs(hash(knobs))}" if knobs else "")
            cache[key] = build_go_server(_BUILD / name, version, knobs)
        return cache[key]

    return build


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount tmpfs filesystems with the given options under tmp_path; unmount them after."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    failed = [p for p in reversed(mounted) if subprocess.run(["umount", str(p)]).returncode]
    assert not failed, f"could not unmount {failed}"


@pytest.fixture(scope="session")
def flaky(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build tests/servers/flaky (the canary test server) once per set of -X knobs."""
    out_dir = tmp_path_factory.mktemp("flaky")
    built: dict[str, Path] = {}

    def build(version: str, knobs: str = "") -> Path:
        ldflags = f"-X main.version={version} {knobs}".strip()
        if ldflags not in built:
            out = out_dir / f"flaky-{len(built)}"
            env = dict(
                os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOPROXY="off"
            )
            env.setdefault("GOCACHE", str(REPO / "build" / "gocache"))
            env.setdefault("GOPATH", str(REPO / "build" / "gopath"))
            subprocess.run(
                [go_binary(), "build", "-o", str(out), "-ldflags", ldflags, "./flaky"],
                cwd=REPO / "tests" / "servers",
                env=env,
                check=True,
            )
            built[ldflags] = out
        return built[ldflags]

    return build
