"""`hotswapd health`: the exit status a Docker HEALTHCHECK or a Kubernetes exec probe reads.

Against a real hotswapd: without --health it reports whether the active generation runs;
with --health-url it follows what that URL answers now (a server the test controls); with
the Go server's --health /healthz it names the generation that serves after a swap.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, wait_until
from tests.test_control import Start, install, make_app, raw_request, run_cli, serve

CHILD = [sys.executable, str(REPO / "tests" / "children" / "child.py")]


class Checked:
    """A loopback HTTP server whose answer the test sets, counting the requests it gets."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def checked() -> Iterator[Checked]:
    server = Checked()
    yield server
    server.close()


def health(sock: str) -> subprocess.CompletedProcess[str]:
    return run_cli("health", "--control-socket", sock)


def test_without_health_check_running_is_healthy(hotswapd: Start, tmp_path: Path) -> None:
    """Without --health: exit 0 while the active generation runs, 1 once hotswapd is gone."""
    sock = str(tmp_path / "control.sock")
    run = hotswapd(["--control-socket", sock], CHILD)
    pid = int(run.wait_stdout("ready")[0].split("pid: ")[1].rstrip(")"))
    run.wait_event("control_listening")
    result = health(sock)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"healthy: generation 1 pid {pid} (running)\n"
    run.signal(15)
    run.wait(30)
    result = health(sock)
    assert result.returncode == 1
    assert result.stderr.startswith("hotswapd: health: unhealthy: no hotswapd is listening")
    assert result.stderr.count("\n") == 1


def test_follows_the_health_url_now(hotswapd: Start, tmp_path: Path, checked: Checked) -> None:
    """With --health-url: exit 0 while it answers 2xx, 1 with the reason once it answers 503."""
    sock = str(tmp_path / "control.sock")
    run = hotswapd(["--control-socket", sock, "--health-url", checked.url], CHILD)
    run.wait_event("control_listening")
    result = health(sock)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("healthy: generation 1 pid ")
    assert f"(GET {checked.url})" in result.stdout
    checked.status = 503
    wait_until(lambda: health(sock).returncode == 1, 10, "health to see the 503")
    result = health(sock)
    assert result.returncode == 1
    assert result.stderr.endswith(f": {checked.url} answered HTTP 503\n")
    assert result.stderr.count("\n") == 1
    assert run.events("swap_requested") == []  # asking never changes anything


def test_a_storm_of_checks_costs_few_probes(
    hotswapd: Start, tmp_path: Path, checked: Checked
) -> None:
    """20 health requests at once share one probe (a verdict under a second old is reused)."""
    sock = str(tmp_path / "control.sock")
    run = hotswapd(["--control-socket", sock, "--health-url", checked.url], CHILD)
    run.wait_event("control_listening")
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda: answers.append(raw_request(sock, "GET", "/health")[0]))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == [200] * 20
    assert 1 <= checked.hits <= 5


def test_names_the_generation_serving_after_a_swap(
    hotswapd: Start, tmp_path: Path, go_server: Any
) -> None:
    """With the Go server's --health /healthz, health probes the generation that serves."""
    app = make_app(tmp_path, go_server)
    served = serve(hotswapd, app, str(tmp_path / "control.sock"))
    install(go_server("v2"), app)
    assert served.ctl("reload", "--wait").returncode == 0
    active = served.status()["active"]
    result = health(served.sock)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"healthy: generation 2 pid {active['pid']} (GET http://")
    assert result.stdout.rstrip().endswith("/healthz)")


def test_client_commands_load_nothing_of_the_server(hotswapd: Start, tmp_path: Path) -> None:
    """`health` and `ctl status` load no aiohttp, asyncio, psutil, core or control module."""
    sock = str(tmp_path / "control.sock")
    run = hotswapd(["--control-socket", sock], CHILD)
    run.wait_event("control_listening")
    script = (
        "import contextlib, io, json, sys\n"
        "from hotswapd import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    codes = [cli.main(['health', '--control-socket', sys.argv[1]]),\n"
        "             cli.main(['ctl', '--control-socket', sys.argv[1], 'status'])]\n"
        "print(json.dumps({'codes': codes, 'modules': sorted(sys.modules)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, sock], capture_output=True, text=True, check=True, cwd=REPO
    )
    report = json.loads(out.stdout)
    assert report["codes"] == [0, 0]
    heavy = [
        name
        for name in report["modules"]
        if name.split(".")[0] in {"aiohttp", "asyncio", "psutil", "structlog", "prometheus_client"}
        or name.startswith(("hotswapd.core", "hotswapd.control", "hotswapd.gates"))
    ]
    assert heavy == []
