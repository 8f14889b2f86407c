"""`--metrics HOST:PORT`: /metrics scraped from a real hotswapd, read by the Prometheus parser."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO, wait_until
from tests.test_control import Served, Start, http_get, install, make_app, serve


@pytest.fixture
def app(tmp_path: Path, go_server: Any) -> Path:
    return make_app(tmp_path, go_server)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> tuple[str, Samples]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        content_type = response.getheader("Content-Type") or ""
        text = response.read().decode()
    finally:
        conn.close()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return content_type, samples


def start(hotswapd: Start, app: Path, tmp_path: Path) -> tuple[Served, str]:
    served = serve(hotswapd, app, str(tmp_path / "control.sock"), "--metrics", "127.0.0.1:0")
    return served, served.run.wait_event("metrics_listening")["address"]


def test_metrics_parsed_after_swaps(
    hotswapd: Start, app: Path, tmp_path: Path, go_server: Any
) -> None:
    """Swaps by outcome and reason, phase histograms, memory and process metrics all parse."""
    served, address = start(hotswapd, app, tmp_path)
    content_type, before = scrape(address)
    assert content_type.startswith("text/plain; version=")
    assert before[("hotswapd_active_generation", ())] == 1
    assert (
        before[("hotswapd_swaps_total", (("outcome", "committed"), ("reason", "all_gates_passed")))]
        == 0
    )
    install(go_server("v2"), app)
    assert served.ctl("reload", "--wait").returncode == 0
    install(go_server("v3", "-X main.healthz=fail"), app)
    assert served.ctl("reload", "--wait").returncode == 1
    _, after = scrape(address)
    status = served.status()
    assert after[("hotswapd_active_generation", ())] == status["active"]["generation"] == 2
    assert (
        after[("hotswapd_swaps_total", (("outcome", "committed"), ("reason", "all_gates_passed")))]
        == 1
    )
    rolled_back = {
        labels: value
        for (name, labels), value in after.items()
        if name == "hotswapd_swaps_total" and ("outcome", "rolled_back") in labels
    }
    assert sum(rolled_back.values()) == 1
    counts = {"spawned": 2, "ready": 1, "cutover": 1, "old_exited": 1, "candidate_stopped": 1}
    for phase, count in counts.items():  # the bad build was spawned, never ready
        assert after[("hotswapd_swap_phase_seconds_count", (("phase", phase),))] == count
    assert after[("hotswapd_swap_duration_seconds_count", (("outcome", "rolled_back"),))] == 1
    rss = after[("hotswapd_generation_rss_bytes", (("generation", "2"), ("state", "active")))]
    assert rss > 1024 * 1024
    assert 0.2 < after[("hotswapd_generation_memory_growth_ratio", ())] < 5
    assert after[("hotswapd_watch_mode", (("mode", "off"),))] == 1
    assert after[("hotswapd_watch_mode", (("mode", "inotify"),))] == 0
    assert after[("hotswapd_restarts_total", ())] == 0
    assert after[("hotswapd_orphans_reaped_total", ())] == 0
    assert after[("hotswapd_state", (("state", "running"),))] == 1
    # hotswapd's own process metrics: the resident memory of PID 1 itself, not of a child
    with open(f"/proc/{served.run.pid}/status") as handle:
        vm_rss = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS"))
    assert 0.5 * vm_rss < after[("process_resident_memory_bytes", ())] < 2 * vm_rss
    assert any(name == "python_info" for name, _ in after)  # the platform collector


def test_metrics_counts_orphans_and_restarts(hotswapd: Start, tmp_path: Path) -> None:
    """Orphans reaped by PID 1 and --on-exit restarts show up as counters."""
    child = [sys.executable, str(REPO / "tests" / "children" / "child.py")]
    run = hotswapd(
        [
            "--metrics",
            "127.0.0.1:0",
            "--control-socket",
            str(tmp_path / "c.sock"),
            "--on-exit",
            "restart",
        ],
        [*child, "--orphans", "2", "--exit", "0"],
    )
    address = run.wait_event("metrics_listening")["address"]
    run.wait_event("restarted")
    _, samples = scrape(address)
    assert samples[("hotswapd_restarts_total", ())] >= 1
    assert samples[("hotswapd_orphans_reaped_total", ())] >= 2


def test_idle_connections_do_not_starve_pid1(
    hotswapd: Start, app: Path, tmp_path: Path, go_server: Any
) -> None:
    """300 silent connections to --metrics at `ulimit -n 128`: ctl answers, a swap commits."""

    def limited(options: list[str], command: list[str]) -> Any:
        return hotswapd(options, command, wrapper=["prlimit", "--nofile=128:128"])

    served = serve(limited, app, str(tmp_path / "control.sock"), "--metrics", "127.0.0.1:0")
    host, port = served.run.wait_event("metrics_listening")["address"].rsplit(":", 1)
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            conn.setblocking(False)
            conn.connect_ex((host, int(port)))  # in progress: the backlog may be full
            idle.append(conn)
        status = served.status()  # the control socket still accepts
        assert status["active"]["generation"] == 1
        install(go_server("v2"), app)
        result = served.ctl("reload", "--wait")
        assert result.returncode == 0, result.stderr
        assert http_get(served.port) == "v2"

        def cut() -> list[bytes]:
            answers = []
            for conn in idle:
                with contextlib.suppress(BlockingIOError, OSError):
                    answers.append(conn.recv(100))
            return [a for a in answers if a.startswith(b"HTTP/1.1 408")]

        wait_until(cut, 30, "hotswapd to time out the silent connections")
    finally:
        for conn in idle:
            conn.close()
    _, samples = scrape(f"{host}:{port}")
    assert samples[("hotswapd_active_generation", ())] == 2
    assert not any("Traceback" in line for line in served.run.stderr_lines)
    assert len(served.run.events("metrics_accept_failed")) <= 3


def test_oversized_head_is_a_bounded_400(hotswapd: Start, app: Path, tmp_path: Path) -> None:
    """A 100 KB header line gets a 400 with a one-line reason, and nothing multi-line is logged."""
    served, address = start(hotswapd, app, tmp_path)
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body) == {"error": "request head over 8192 bytes"}
    assert scrape(address)[1][("hotswapd_active_generation", ())] == 1
    assert not any("LineTooLong" in line or "Traceback" in line for line in served.run.stderr_lines)
    assert not any("a" * 100 in line for line in served.run.stderr_lines)  # not echoed


def test_out_of_fds_is_one_line_not_a_traceback_per_accept() -> None:
    """EMFILE on accept pauses accepting and logs one line per 10 s, not one per attempt."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe, ends by _exit
        code = 1
        try:
            code = _serve_out_of_fds(write_fd)
        finally:
            os._exit(code)
    os.close(write_fd)
    with open(read_fd) as pipe:
        report = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report["answered"] >= 1  # it kept serving once fds were free again
    assert len(report["warnings"]) == 1, report
    event, fields = report["warnings"][0]
    assert event == "metrics_accept_failed"
    assert fields["errno"] == "EMFILE"


def _serve_out_of_fds(report_fd: int) -> int:
    """In a forked child: a Server with no fd to spare, 20 clients, then fds freed."""
    import asyncio
    import resource

    from hotswapd.control import http as control_http

    warnings: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            warnings.append((event, fields))

    async def handler(request: control_http.Request, reply: control_http.Reply) -> None:
        await reply.json(200, {"ok": True})

    async def main() -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        events = ("metrics_accept_failed", "metrics_request_failed")
        server = control_http.Server(events, listener, handler, Log(), control_http.Limits())
        server.start()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(20)]
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        # No fd left: every accept fails until the spare ones are closed again.
        spare = []
        with contextlib.suppress(OSError):
            while True:
                spare.append(os.open("/dev/null", os.O_RDONLY))
        # Wait (bounded) until the accept has failed three times, paused in between.
        deadline = time.monotonic() + 15
        while server.trouble.dropped.get("metrics_accept_failed", 0) < 2:
            assert time.monotonic() < deadline, "accept never failed three times"
            await asyncio.sleep(0.05)
        for fd in spare:
            os.close(fd)
        answered = 0
        loop = asyncio.get_running_loop()
        for client in clients[:3]:
            client.setblocking(False)
            data = await asyncio.wait_for(loop.sock_recv(client, 100), 10)
            answered += data.startswith(b"HTTP/1.1 200")
        await server.close(1.0)
        return answered

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    answered = asyncio.run(main())
    os.write(report_fd, json.dumps({"answered": answered, "warnings": warnings}).encode())
    return 0
