"""Every recipe in docs/servers.md, run against the real server it names.

The command line is taken from the page itself (its first `sh` block per section), so the
page cannot drift from what works: each recipe starts, 3 swaps commit under 8 keep-alive
connections, and the failed-request count is the figure the section states.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.harness import Hotswapd
from tests.helpers import REPO, go_binary, wait_until
from tests.load import Load, LoadResult

PAGE = REPO / "docs" / "servers.md"
SERVERS = REPO / "tests" / "servers"
VENV_BIN = Path(sys.executable).parent  # gunicorn, uvicorn and hypercorn come from the venv
CONNECTIONS = 8
SWAPS = 3
PER_CONNECTION = re.compile(
    r"\*\*at\s+most\s+1\s+failed\s+request\s+per\s+keep-alive\s+connection\s+per\s+swap\*\*"
)
ZERO = re.compile(r"Measured:\s+\*\*0\s+failed\s+requests\*\*")


def sections() -> dict[str, str]:
    """The page's `## ` sections by title."""
    parts = re.split(r"^## ", PAGE.read_text(), flags=re.M)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def block(section: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block"
    return match.group(1)


def recipe(title: str) -> tuple[dict[str, str], list[str], list[str], str]:
    """(environment, hotswapd options, program argv, section text) of one recipe."""
    text = sections()[title]
    words = shlex.split(block(text, "sh").replace("\\\n", " "))
    env: dict[str, str] = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "hotswapd", words
    dash = words.index("--")
    return env, words[1:dash], words[dash + 1 :], text


def free_port() -> int:
    """A loopback port for the servers whose own config names it (nginx)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build(package: Path, out: Path) -> Path:
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOPROXY="off")
    env.setdefault("GOCACHE", str(REPO / "build" / "gocache"))
    env.setdefault("GOPATH", str(REPO / "build" / "gopath"))
    subprocess.run([go_binary(), "build", "-o", str(out), "."], cwd=package, env=env, check=True)
    return out


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def run_recipe(
    title: str, tmp_path: Path, program: Path | None = None, port: int = 0
) -> tuple[LoadResult, float, str]:
    """Start one recipe, swap it 3 times under keep-alive load; (load, req/s, section)."""
    env, options, command, text = recipe(title)
    address = f"127.0.0.1:{port}"
    options = [o.replace("0.0.0.0:8080", address) for o in options]
    replace = {"/app/server": str(program)} if program else {}
    if "nginx" in title:
        conf = tmp_path / "nginx.conf"
        conf.write_text(block(text, "nginx").replace("0.0.0.0:8080", address))
        replace["/etc/nginx/hotswapd.conf"] = str(conf)
        replace["/run/nginx."] = str(tmp_path / "nginx.")
    for old, new in replace.items():
        command = [arg.replace(old, new) for arg in command]
    env["PATH"] = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}:/usr/sbin"
    run = Hotswapd(
        [*options, "--settle", "0"], command, pid1=False, env=env, cwd=SERVERS / "python"
    )
    try:
        port = run.port()
        wait_until(lambda: answers(port), 30, f"{title} answering")
        started = time.monotonic()
        with Load(port, connections=CONNECTIONS) as load:
            wait_until(lambda: load.count() > 50, 30, "load running")
            pids = []
            for index in range(1, SWAPS + 1):
                run.signal(signal.SIGUSR2)
                outcome = run.wait_event("swap_finished", count=index, timeout=60)
                assert outcome["outcome"] == "committed", outcome
                pids.append(outcome["active_pid"])
            wait_until(lambda: load.count() > 100, 30, "load after the swaps")
            result = load.stop()
        assert len(set(pids)) == SWAPS
        rate = result.ok / (time.monotonic() - started)
        return result, rate, text
    finally:
        run.kill_tree()


def assert_stated_figure(result: LoadResult, text: str) -> None:
    """The section's figure: 0 failed, or at most one per keep-alive connection per swap."""
    if ZERO.search(text):
        assert result.failures == [], result.failures[:5]
    else:
        assert PER_CONNECTION.search(text), "the section states no figure the test knows"
        assert len(result.failures) <= CONNECTIONS * SWAPS, result.failures[:5]
    assert result.ok > 0


@pytest.fixture(scope="module")
def go_servers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("servers")
    return {
        "drained": build(SERVERS / "drained", out / "drained"),
        "gosystemd": build(SERVERS / "gosystemd", out / "gosystemd"),
    }


def test_net_http_with_the_package_loses_nothing(
    go_servers: dict[str, Path], tmp_path: Path
) -> None:
    """A plain net/http server on the hotswap package swaps 3 times with 0 failed requests."""
    result, _, text = run_recipe("Go net/http with the package", tmp_path, go_servers["drained"])
    assert_stated_figure(result, text)


def test_a_go_systemd_server_with_the_drain_loses_nothing(
    go_servers: dict[str, Path], tmp_path: Path
) -> None:
    """go-systemd's Listeners() gets exactly one socket; with hotswap.Serve: 0 failed."""
    result, _, text = run_recipe("An existing go-systemd server", tmp_path, go_servers["gosystemd"])
    assert_stated_figure(result, text)


def test_gunicorn_recipe(tmp_path: Path) -> None:
    """gunicorn (sync workers, no shared control socket) swaps with the stated figure."""
    result, _, text = run_recipe("gunicorn", tmp_path)
    assert_stated_figure(result, text)


def test_uvicorn_recipe_and_why_not_fd(tmp_path: Path) -> None:
    """uvicorn under gunicorn swaps with the stated figure and beats `uvicorn --fd` 2x."""
    result, worker_rate, text = run_recipe("uvicorn", tmp_path)
    assert_stated_figure(result, text)
    # The same app through `uvicorn --fd`, which the page advises against.
    run = Hotswapd(
        ["--listen", "http=tcp://127.0.0.1:0"],
        [str(VENV_BIN / "uvicorn"), "--fd", "{fd:http}", "app:asgi"],
        pid1=False,
        cwd=SERVERS / "python",
    )
    try:
        port = run.port()
        wait_until(lambda: answers(port), 30, "uvicorn --fd answering")
        with Load(port, connections=CONNECTIONS) as load:
            started = time.monotonic()
            wait_until(lambda: load.count() > 200, 60, "uvicorn --fd load")
            fd_rate = load.count() / (time.monotonic() - started)
    finally:
        run.kill_tree()
    assert worker_rate > 2 * fd_rate, (worker_rate, fd_rate)


def test_hypercorn_recipe(tmp_path: Path) -> None:
    """hypercorn on fd://{fd:http} swaps with the stated figure."""
    result, _, text = run_recipe("hypercorn", tmp_path)
    assert_stated_figure(result, text)


def test_nginx_recipe(tmp_path: Path) -> None:
    """nginx with NGINX='{fd:http};', QUIT and a pid file per generation: the stated figure."""
    result, _, text = run_recipe("nginx", tmp_path, port=free_port())
    assert_stated_figure(result, text)


def test_every_recipe_section_is_tested() -> None:
    """Each recipe on the page has a test here (a new section needs one)."""
    tested = {
        "Go net/http with the package",
        "An existing go-systemd server",
        "gunicorn",
        "uvicorn",
        "hypercorn",
        "nginx",
        "Servers that cannot take inherited sockets",
    }
    assert set(sections()) == tested
