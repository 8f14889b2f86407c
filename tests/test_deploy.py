"""`hotswapd deploy SRC [DEST]`: install atomically, then swap — or leave DEST exactly as it was.

The failure cases use real filesystems: a truncated build, a tmpfs that is full, a DEST
that is a bind mount from another filesystem. Each time DEST keeps its bytes, no temp
file is left in its directory, and the serving generation is not touched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_control import (
    Served,
    Start,
    fake_server,
    http_get,
    make_app,
    open_dir,
    run_cli,
    serve,
)

__all__ = ["open_dir"]  # the fixture, shared with test_control

Mount = Callable[..., Path]


@pytest.fixture
def mount() -> Iterator[Mount]:
    """Mount a tmpfs (or bind a path) for one test; unmounted lazily at teardown."""
    mounted: list[Path] = []

    def do(target: Path, size: str = "16m", bind: Path | None = None) -> Path:
        if bind is None:
            target.mkdir(parents=True, exist_ok=True)
            argv = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)]
        else:
            argv = ["mount", "--bind", str(bind), str(target)]
        subprocess.run(argv, check=True)
        mounted.append(target)
        return target

    yield do
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fill_up(path: Path) -> None:
    """Write zeros until the filesystem is full (unbuffered: nothing is left to flush)."""
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def assert_untouched(dest: Path, before: str, served: Served | None = None) -> None:
    """DEST has its old bytes, its directory holds no temp file, and no swap was asked for."""
    assert digest(dest) == before
    assert [name for name in os.listdir(dest.parent) if "hotswapd-tmp" in name] == []
    if served is not None:
        assert served.run.events("swap_requested") == []
        assert http_get(served.port) == "v1"


def test_deploy_installs_and_swaps(hotswapd: Start, tmp_path: Path, go_server: Any) -> None:
    """With DEST omitted, the running binary is replaced and the new build serves (exit 0)."""
    app = make_app(tmp_path, go_server)
    served = serve(hotswapd, app, str(tmp_path / "control.sock"))
    v2 = go_server("v2")
    result = run_cli("deploy", "--control-socket", served.sock, str(v2))
    assert result.returncode == 0, result.stderr
    assert f"installed {v2} as {app}" in result.stdout
    assert "committed: generation 2" in result.stdout
    assert digest(app) == digest(v2)
    assert http_get(served.port) == "v2"
    assert served.status()["generations"][-1]["sha256"] == digest(v2)


def test_deploy_bad_build_exits_1(hotswapd: Start, tmp_path: Path, go_server: Any) -> None:
    """A build that fails its health check is installed, rolled back, and deploy exits 1."""
    app = make_app(tmp_path, go_server)
    served = serve(hotswapd, app, str(tmp_path / "control.sock"))
    result = run_cli(
        "deploy", "--control-socket", served.sock, str(go_server("v2", "-X main.healthz=fail"))
    )
    assert result.returncode == 1
    assert "reload rolled back" in result.stderr
    assert http_get(served.port) == "v1"


def test_deploy_truncated_build_refused(hotswapd: Start, tmp_path: Path, go_server: Any) -> None:
    """Half a binary is refused before DEST is touched, with the reason."""
    app = make_app(tmp_path, go_server)
    served = serve(hotswapd, app, str(tmp_path / "control.sock"))
    before = digest(app)
    half = tmp_path / "half"
    data = go_server("v2").read_bytes()
    half.write_bytes(data[: len(data) // 2])
    half.chmod(0o755)
    result = run_cli("deploy", "--control-socket", served.sock, str(half))
    assert result.returncode == 1
    assert f"hotswapd: deploy: {half} is truncated" in result.stderr
    assert "DEST was not touched" in result.stderr
    assert_untouched(app, before, served)


def test_deploy_into_full_filesystem(
    hotswapd: Start, tmp_path: Path, go_server: Any, mount: Mount
) -> None:
    """ENOSPC while copying (a full tmpfs) leaves DEST whole and no temp file behind."""
    v1 = go_server("v1")
    size = v1.stat().st_size + 2 * 1024 * 1024
    disk = mount(tmp_path / "tiny", size=str(size))
    app = disk / "server"
    shutil.copy2(v1, app)
    fill_up(disk / "filler")
    served = serve(hotswapd, app, str(tmp_path / "control.sock"))
    before = digest(app)
    result = run_cli("deploy", "--control-socket", served.sock, str(go_server("v2")))
    assert result.returncode == 1
    assert f"hotswapd: deploy: cannot install {app}:" in result.stderr
    assert "No space left on device" in result.stderr
    assert f"{app} was not changed" in result.stderr
    assert_untouched(app, before, served)
    assert sorted(os.listdir(disk)) == ["filler", "server"]


def test_deploy_across_filesystems(
    hotswapd: Start, tmp_path: Path, go_server: Any, mount: Mount
) -> None:
    """SRC on another filesystem installs fine: the temp copy is made in DEST's directory."""
    app = make_app(tmp_path, go_server)
    served = serve(hotswapd, app, str(tmp_path / "control.sock"))
    elsewhere = mount(tmp_path / "uploads")
    src = elsewhere / "server"
    shutil.copy2(go_server("v2"), src)
    assert os.stat(src).st_dev != os.stat(app).st_dev
    result = run_cli("deploy", "--control-socket", served.sock, str(src))
    assert result.returncode == 0, result.stderr
    assert digest(app) == digest(src)
    assert http_get(served.port) == "v2"


def test_deploy_onto_a_bind_mounted_file(tmp_path: Path, go_server: Any, mount: Mount) -> None:
    """DEST bind-mounted from another filesystem cannot be renamed over: DEST is unchanged."""
    other = mount(tmp_path / "other")
    source = other / "server"
    shutil.copy2(go_server("v1"), source)
    dest = tmp_path / "app" / "server"
    dest.parent.mkdir()
    dest.write_bytes(b"")
    mount(dest, bind=source)
    before = digest(dest)
    result = run_cli("deploy", "--no-reload", str(go_server("v2")), str(dest))
    assert result.returncode == 1
    assert f"renaming the temp copy over {dest} failed: Device or resource busy" in result.stderr
    assert_untouched(dest, before)


def test_deploy_needs_a_listening_hotswapd(tmp_path: Path, go_server: Any) -> None:
    """Without a hotswapd to swap, deploy says so and installs nothing."""
    dest = make_app(tmp_path, go_server)
    before = digest(dest)
    missing = str(tmp_path / "none.sock")
    result = run_cli("deploy", "--control-socket", missing, str(go_server("v2")), str(dest))
    assert result.returncode == 1
    assert result.stderr.startswith(f"hotswapd: deploy: no hotswapd is listening on {missing}")
    assert_untouched(dest, before)


def test_deploy_refuses_a_dest_that_is_not_the_program(
    hotswapd: Start, tmp_path: Path, go_server: Any
) -> None:
    """DEST other than the running program is exit 2, untouched, no swap; --force installs."""
    app = make_app(tmp_path, go_server)
    served = serve(hotswapd, app, str(tmp_path / "control.sock"))
    other = tmp_path / "other"
    other.write_bytes(b"keep")
    before = digest(other)
    result = run_cli("deploy", "--control-socket", served.sock, str(go_server("v2")), str(other))
    assert result.returncode == 2
    assert result.stderr.startswith(f"hotswapd: deploy: {other} is not the program hotswapd runs")
    assert "installed" not in result.stdout
    assert digest(other) == before
    assert served.run.events("swap_requested") == []
    forced = run_cli(
        "deploy", "--force", "--control-socket", served.sock, str(go_server("v2")), str(other)
    )
    assert forced.returncode == 0, forced.stderr
    assert digest(other) == digest(go_server("v2"))
    assert http_get(served.port) == "v1"  # the program itself was not replaced


def test_deploy_trusts_no_server_of_another_user(
    tmp_path: Path, go_server: Any, open_dir: Path
) -> None:
    """A forged status from uid 65534 naming a root file as the program overwrites nothing."""
    victim = tmp_path / "root-only"
    victim.write_bytes(b"secret")
    victim.chmod(0o600)
    before = digest(victim)
    theirs = open_dir / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    sock = str(theirs / "control.sock")
    forged = {
        "hotswapd": {"cwd": "/"},
        "active": {"generation": 1},
        "generations": [{"generation": 1, "executable": str(victim)}],
    }
    pid = fake_server(sock, 65534, forged)
    try:
        result = run_cli("deploy", "--control-socket", sock, str(go_server("v2")))
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert result.returncode == 1
    assert "is served by uid 65534" in result.stderr
    assert digest(victim) == before
