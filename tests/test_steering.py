"""Steered generations (issue 10): each generation on its own socket, hotswapd decides in
the kernel where every new connection lands. Real processes, real kernel, real clients."""

from __future__ import annotations

import errno
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hotswapd.boot.steering_options import parse_canary, parse_steering
from hotswapd.boot.units import BadValue
from tests.harness import CHILD, HOTSWAPD, Hotswapd, proc_state
from tests.helpers import REPO, go_binary, wait_until
from tests.load import Load

Start = Any
FAST = ["--settle", "0", "--drain-timeout", "5s", "--stop-timeout", "5s"]
GATED = [*FAST, "--health", "/healthz", "--health-timeout", "3s"]
HOSTILE = REPO / "tests" / "children" / "hostile_listener.py"
GO_SYSTEMD = Path("/usr/share/gocode/src/github.com/coreos/go-systemd")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


# ----------------------------------------------------------------------------- clients


class Fresh:
    """A fresh-connection client (`Connection: close`): which pid answered, and when."""

    def __init__(self, port: int, host: str = "127.0.0.1", threads: int = 4,
                 pause: float = 0.0) -> None:  # fmt: skip
        self.port, self.host, self.pause = port, host, pause
        self.answers: list[tuple[float, str]] = []  # (monotonic, X-Pid)
        self.walls: list[tuple[float, str]] = []  # (wall clock, X-Pid), against log stamps
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Fresh:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                response = conn.getresponse()
                response.read()
                pid = response.getheader("X-Pid", "")
                with self._lock:
                    self.answers.append((time.monotonic(), pid))
                    self.walls.append((time.time(), pid))
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()
            if self.pause:
                time.sleep(self.pause)  # pacing the client, not synchronisation

    def pids(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        with self._lock:
            return Counter(pid for at, pid in self.answers if since <= at <= until)

    def by_wall(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        with self._lock:
            return Counter(pid for at, pid in self.walls if since <= at <= until)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)


def wall(stamp: str) -> float:
    """A log timestamp (ISO 8601, UTC) as seconds since the epoch."""
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def get_pid(port: int, host: str = "127.0.0.1") -> str:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.getheader("X-Pid", "")
    finally:
        conn.close()


# ----------------------------------------------------------------------------- fixtures


def install(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".new")
    shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def swap(run: Hotswapd, count: int, timeout: float = 30) -> dict[str, Any]:
    run.signal(signal.SIGUSR2)
    return run.wait_event("swap_finished", count=count, timeout=timeout)


@pytest.fixture
def program(tmp_path: Path, go_server: Any) -> Path:
    path = tmp_path / "app" / "server"
    path.parent.mkdir()
    shutil.copy2(go_server("v1"), path)
    return path


def start(hotswapd: Start, program: Path, *extra: str,
          listen: str = "http=tcp://127.0.0.1:0") -> tuple[Hotswapd, int, int]:  # fmt: skip
    run = hotswapd(["--listen", listen, *GATED, *extra], [str(program)])
    port = run.port()
    run.wait_stdout("ready pid=")
    run.wait_event("supervising")
    return run, port, int(run.wait_event("spawned")["pid"])


# ----------------------------------------------------------------------------- what a child gets


def report(lines: list[str]) -> dict[str, str]:
    """child.py --report's fds and LISTEN_* lines, as a dict."""
    out = {}
    for line in lines:
        if line.startswith("fds "):
            out["fds"] = line[4:]
        elif line.startswith("env LISTEN_FDS=") or line.startswith("env LISTEN_FDNAMES="):
            key, _, value = line[4:].partition("=")
            out[key] = value
    return out


def socket_activate_report(addresses: list[str], names: list[str]) -> dict[str, str]:
    """What systemd-socket-activate hands the same child for these addresses and names."""
    assert SOCKET_ACTIVATE is not None
    argv = [SOCKET_ACTIVATE]
    for address in addresses:
        argv += ["-l", address]
    argv += [f"--fdname={':'.join(names)}", *CHILD, "--report"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        port = int(addresses[0].rsplit(":", 1)[1])
        host = addresses[0].rsplit(":", 1)[0].strip("[]")

        def connect() -> bool:
            try:
                socket.create_connection((host, port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(connect, 10, "systemd-socket-activate listening")
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("pid "):
                break
        return report(lines)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="needs systemd-socket-activate (systemd)")
@pytest.mark.parametrize("listeners", [1, 2])
@pytest.mark.parametrize("health", [False, True])
def test_child_gets_what_systemd_socket_activate_gives(hotswapd: Start, listeners: int,
                                                      health: bool) -> None:  # fmt: skip
    """Steered, with or without --health: fds 3.. and LISTEN_FDS/FDNAMES exactly as systemd."""
    names = ["http", "admin"][:listeners]
    ours = [free_port() for _ in names]
    options = [arg for name, port in zip(names, ours, strict=True)
               for arg in ("--listen", f"{name}=tcp://127.0.0.1:{port}")]  # fmt: skip
    if health:
        options += ["--health", "/healthz"]
    run = hotswapd(options, [*CHILD, "--report"])
    run.wait_stdout("pid ")
    mine = report(run.stdout_lines)
    run.kill_tree()
    theirs = socket_activate_report([f"127.0.0.1:{free_port()}" for _ in names], names)
    assert mine == theirs
    assert mine["LISTEN_FDNAMES"] == ":".join(names)
    # (child.py's own listdir adds one fd past the listeners, under both alike)
    assert mine["fds"].split()[: 3 + listeners] == [str(fd) for fd in range(3 + listeners)]
    assert str(3 + listeners) not in mine["fds"].split()


def test_tini_mode_passes_no_listen_variables_and_no_fd(hotswapd: Start) -> None:
    """With no --listen (the tini use) the child gets fds 0-2 and no LISTEN_FDS/FDNAMES."""
    run = hotswapd(["--health", "/healthz"], [*CHILD, "--report"])
    run.wait_stdout("pid ")
    got = report(run.stdout_lines)
    assert (got["LISTEN_FDS"], got["LISTEN_FDNAMES"]) == ("", "")
    assert "3" not in got["fds"].split()  # (child.py's own listdir shows as one fd past 2)


def test_shared_mode_passes_the_probe_listener_only_for_health(hotswapd: Start,
                                                              tmp_path: Path) -> None:  # fmt: skip
    """unix:// is shared: `probe` follows the listeners only when --health PATH needs it."""
    for health, expected in (([], "app"), (["--health", "/healthz"], "app:probe")):
        path = tmp_path / f"s{len(health)}.sock"
        run = hotswapd(["--listen", f"app=unix://{path}", *health],
                       [*CHILD, "--report"])  # fmt: skip
        run.wait_stdout("pid ")
        assert report(run.stdout_lines)["LISTEN_FDNAMES"] == expected
        assert run.wait_event("listening")["mode"] == "shared"
        run.kill_tree()


def test_start_says_which_mode_each_listener_is_in(hotswapd: Start, tmp_path: Path) -> None:
    """One log line per listener at start: steered for TCP, shared for unix://, and why."""
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", "--listen",
                    f"local=unix://{tmp_path / 'l.sock'}"], ["sleep", "300"])  # fmt: skip
    http_line = run.wait_event("listening", name="http")
    local = run.wait_event("listening", name="local")
    assert (http_line["mode"], local["mode"]) == ("steered", "shared")
    assert "reuseport" in http_line["why"]
    assert local["why"] == "unix sockets cannot be steered"


# ----------------------------------------------------------------------------- go-systemd


@pytest.fixture(scope="session")
def activation_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """go-systemd's own examples/activation/httpserver, built unmodified."""
    source = GO_SYSTEMD / "examples" / "activation" / "httpserver" / "httpserver.go"
    if not source.exists():
        pytest.skip("needs golang-github-coreos-go-systemd-dev")
    work = tmp_path_factory.mktemp("activation")
    shutil.copy2(source, work / "httpserver.go")
    (work / "go.mod").write_text(
        "module activationexample\n\ngo 1.21\n\n"
        "require github.com/coreos/go-systemd/v22 v22.3.2\n\n"
        f"replace github.com/coreos/go-systemd/v22 => {GO_SYSTEMD}\n"
    )
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOPROXY="off",
               CGO_ENABLED="0", GOCACHE=str(REPO / "build" / "gocache"),
               GOPATH=str(REPO / "build" / "gopath"))  # fmt: skip
    out = work / "httpserver"
    subprocess.run([go_binary(), "build", "-o", str(out), "httpserver.go"], cwd=work, env=env,
                   check=True, capture_output=True)  # fmt: skip
    return out


def test_go_systemd_activation_example_swaps_with_health(
    hotswapd: Start, activation_example: Path
) -> None:
    """go-systemd's example (it panics on any fd count but 1) serves, passes --health /, swaps."""
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *FAST, "--health", "/"],
                   [str(activation_example)])  # fmt: skip
    port = run.port()
    run.wait_event("supervising")
    first = run.wait_event("spawned")["pid"]

    def hello() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            return b"socket activated" in conn.getresponse().read()
        except OSError:
            return False

    wait_until(hello, 10, "the example answering")
    outcome = swap(run, 1)
    assert outcome["outcome"] == "committed", outcome
    assert outcome["active_pid"] != first
    assert hello()
    assert not [line for line in run.stderr_lines if "Unexpected number" in line]


# ----------------------------------------------------------------------------- where they land


def test_no_live_connection_reaches_a_candidate_that_is_rolled_back(
    hotswapd: Start, program: Path, go_server: Any
) -> None:
    """During a 3 s health gate that fails, every fresh connection is answered by gen 1."""
    run, port, first = start(hotswapd, program)
    install(go_server("bad", "-X main.healthz=fail"), program)
    with Fresh(port) as client:
        wait_until(lambda: client.count() > 20, 10, "load running")
        outcome = swap(run, 1)
        wait_until(lambda: client.count() > 40, 10, "more answers")
    assert outcome["outcome"] == "rolled_back"
    candidate = str(run.wait_event("swap_spawned")["pid"])
    seen = client.pids()
    assert candidate not in seen, seen
    assert set(seen) == {str(first)}
    assert sum(seen.values()) > 200
    assert client.failures == []


def test_connections_land_old_then_new_and_never_old_after_the_drain(
    hotswapd: Start, program: Path, go_server: Any
) -> None:
    """Before health passes: all old; after cutover: all new; after drain: none from the old."""
    run, port, first = start(hotswapd, program)
    install(go_server("v2"), program)
    with Fresh(port) as client:
        wait_until(lambda: client.count() > 20, 10, "load running")
        run.signal(signal.SIGUSR2)
        candidate = str(run.wait_event("swap_spawned")["pid"])
        cutover = run.wait_event("swap_cutover")
        run.wait_event("swap_finished")
        drained = time.monotonic()
        wait_until(lambda: client.pids(since=drained).total() > 100, 10, "answers after drain")
    # The log's clock is the wall clock: every answer completed before the cutover was
    # logged came from generation 1, the candidate answered nothing before its verdict.
    cut = wall(cutover["timestamp"])
    before = client.by_wall(until=cut)
    assert set(before) == {str(first)}, before
    assert set(client.by_wall(since=cut + 0.05)) == {candidate}
    assert set(client.pids(since=drained)) == {candidate}
    assert client.failures == []


def test_a_bare_canary_duration_shares_equally(hotswapd: Start, program: Path,
                                              go_server: Any) -> None:  # fmt: skip
    """--canary 5s (bare): about half of ≥ 1,000 fresh connections reach the candidate."""
    run, port, first = start(hotswapd, program, "--canary", "5s")
    install(go_server("v2"), program)
    with Fresh(port, threads=6) as client:
        wait_until(lambda: client.count() > 20, 10, "load running")
        run.signal(signal.SIGUSR2)
        step = run.wait_event("swap_canary_step")
        begin = time.monotonic() + 0.1
        assert step["weight_percent"] == 50
        run.wait_event("swap_canary_step_ok", timeout=20)
        end = time.monotonic() - 0.1
        outcome = run.wait_event("swap_finished", timeout=30)
    share = client.pids(begin, end)
    total = sum(share.values())
    assert total >= 1000, share
    assert set(share) == {str(first), str(outcome["active_pid"])}
    assert abs(share[str(outcome["active_pid"])] * 100 / total - 50) <= 5, share
    assert client.failures == []


def test_a_weighted_canary_step_gives_its_share(hotswapd: Start, program: Path,
                                                go_server: Any) -> None:  # fmt: skip
    """--canary 20%:4s: 20% ± 5 of ≥ 1,000 fresh connections reach the candidate."""
    run, port, _first = start(hotswapd, program, "--canary", "20%:4s")
    install(go_server("v2"), program)
    with Fresh(port, threads=6) as client:
        wait_until(lambda: client.count() > 20, 10, "load running")
        run.signal(signal.SIGUSR2)
        assert run.wait_event("swap_canary_step")["weight_percent"] == 20
        begin = time.monotonic() + 0.1
        run.wait_event("swap_canary_step_ok", timeout=20)
        end = time.monotonic() - 0.1
        outcome = run.wait_event("swap_finished", timeout=30)
    share = client.pids(begin, end)
    total = sum(share.values())
    assert total >= 1000, share
    assert abs(share[str(outcome["active_pid"])] * 100 / total - 20) <= 5, share


def test_twenty_swaps_under_keepalive_and_fresh_load(hotswapd: Start, program: Path,
                                                     go_server: Any) -> None:  # fmt: skip
    """20 steered swaps under keep-alive plus fresh-connection load: 0 failed, 0 reset."""
    run, port, _ = start(hotswapd, program)
    with Load(port, connections=4) as load, Fresh(port, threads=2) as client:
        for index in range(1, 21):
            install(go_server(f"v{index % 2 + 1}"), program)
            outcome = swap(run, index)
            assert outcome["outcome"] == "committed", outcome
        result = load.stop()
        client.stop()
    assert result.failures == []
    assert client.failures == []
    assert result.ok > 100
    assert client.count() > 100


def test_a_full_old_queue_is_served_by_the_old_generation(hotswapd: Start, program: Path,
                                                          go_server: Any) -> None:  # fmt: skip
    """Connections queued on the old socket at cutover are served by it: none is reset."""
    run, port, first = start(hotswapd, program)
    install(go_server("v2"), program)
    old = run.outside_pid(first)
    os.kill(old, signal.SIGSTOP)  # it stops accepting: what arrives now waits in its queue
    queued = []
    try:
        wait_until(lambda: all_stopped(old), 10, "every thread of generation 1 stopped")
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            queued.append(sock)
        run.signal(signal.SIGUSR2)
        run.wait_event("swap_cutover")
        assert get_pid(port) != str(first)  # new connections already go to the new one
        assert not run.events("swap_handover")  # the old queue is not empty: no drain yet
    finally:
        os.kill(old, signal.SIGCONT)
    handover = run.wait_event("swap_handover")
    assert handover["queued_at_cutover"] >= 50
    answers = []
    for sock in queued:
        with sock:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            answers.append(data)
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    assert all(f"X-Pid: {first}".encode() in answer for answer in answers)
    assert run.wait_event("swap_finished")["outcome"] == "committed"


def all_stopped(pid: int) -> bool:
    tasks = os.listdir(f"/proc/{pid}/task")
    return all(proc_state(int(task)) == "T" for task in tasks)


# ----------------------------------------------------------------------------- isolation


def hostile_program(tmp_path: Path, *args: str) -> Path:
    path = tmp_path / "hostile.sh"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {HOSTILE} {' '.join(args)}\n")
    path.chmod(0o755)
    return path


def test_a_candidate_shutting_down_its_socket_affects_only_itself(
    hotswapd: Start, program: Path, tmp_path: Path
) -> None:
    """A candidate's shutdown(SHUT_RD): it is rolled back for it; gen 1 serves untouched."""
    run, port, first = start(hotswapd, program)
    install(hostile_program(tmp_path, "--shutdown"), program)
    with Fresh(port) as client:
        wait_until(lambda: client.count() > 10, 10, "load running")
        outcome = swap(run, 1)
        wait_until(lambda: client.count() > 40, 10, "more answers")
    assert outcome["outcome"] == "rolled_back"
    assert outcome["code"] == "socket_shut_down", outcome
    assert "shut down its own --listen socket" in outcome["reason"]
    assert set(client.pids()) == {str(first)}
    assert client.failures == []
    assert get_pid(port) == str(first)
    assert proc_state(run.outside_pid(first)) not in (None, "Z")


def test_a_setsid_daemon_gets_nothing_after_cutover_and_is_stopped(
    hotswapd: Start, program: Path, go_server: Any, tmp_path: Path
) -> None:
    """A daemon (setsid) holding gen 1's socket: no connection after cutover, then stopped."""
    install(hostile_program(tmp_path, "--daemon", "--serve"), program)
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *GATED], [str(program)])
    port = run.port()
    daemon = int(run.wait_stdout("daemon ")[0].split()[1])
    run.wait_stdout("ready pid")
    run.wait_event("supervising")
    install(go_server("v2"), program)
    with Fresh(port) as client:
        outcome = swap(run, 1)
        after = time.monotonic()
        wait_until(lambda: client.pids(since=after).total() > 50, 10, "answers after the swap")
    assert outcome["outcome"] == "committed", outcome
    assert str(daemon) not in client.pids(since=after)
    assert set(client.pids(since=after)) == {str(outcome["active_pid"])}
    stopping = run.wait_event("descendants_stopping")
    assert daemon in stopping["pids"]
    wait_until(lambda: not _ns_alive(run, daemon), 10, "the daemon gone")


def _ns_alive(run: Hotswapd, inside: int) -> bool:
    try:
        return proc_state(run.outside_pid(inside)) not in (None, "Z")
    except LookupError:
        return False


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("listen", "host"),
    [("http=tcp://[::1]:0", "::1"), ("http=tcp://:0", "127.0.0.1"), ("http=tcp://:0", "::1")],
)
def test_ipv6_and_dual_stack_listeners_are_steered(hotswapd: Start, program: Path,
                                                   go_server: Any, listen: str,
                                                   host: str) -> None:  # fmt: skip
    """[::1] and a dual-stack :P (IPv4 and IPv6 clients): probed, committed, new pid answers."""
    run, port, first = start(hotswapd, program, listen=listen)
    assert get_pid(port, host) == str(first)
    install(go_server("v2"), program)
    with Fresh(port, host=host) as client:
        outcome = swap(run, 1)
    assert outcome["outcome"] == "committed", outcome
    assert get_pid(port, host) == str(outcome["active_pid"])
    assert client.failures == []


def test_a_foreign_reuseport_socket_is_said_and_never_steered_to(
    hotswapd: Start, program: Path, go_server: Any
) -> None:
    """A same-uid SO_REUSEPORT bind on the port: logged once, gets no connection across a swap."""
    run, port, _first = start(hotswapd, program)
    foreign = socket.socket()
    foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    foreign.bind(("127.0.0.1", port))
    foreign.listen(64)
    foreign.setblocking(False)
    try:
        install(go_server("v2"), program)
        with Fresh(port) as client:
            outcome = swap(run, 1)
            wait_until(lambda: client.count() > 200, 15, "answers")
        assert outcome["outcome"] == "committed", outcome
        assert len(run.events("steering_foreign_member")) == 1
        with pytest.raises(BlockingIOError):
            foreign.accept()  # nothing ever landed in the foreign socket's queue
        assert client.failures == []
    finally:
        foreign.close()


# ----------------------------------------------------------------------------- options


def test_canary_and_steering_values_are_one_line_refusals() -> None:
    """120%, a step with no duration, a 0s step and `maybe` each say what is accepted."""
    for bad in ("120%:5s", "20%", "5%:0s"):
        with pytest.raises(BadValue, match="PERCENT%:DURATION"):
            parse_canary(bad)
    with pytest.raises(BadValue, match="auto, on, off"):
        parse_steering("maybe")
    assert parse_canary("5%:10s,25%:10s") == ((5, 10.0), (25, 10.0))
    assert parse_canary("2s") == ((50, 2.0),)
    assert parse_canary("0") == ()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--canary", "120%:5s"], "--canary"),
        (["--canary", "20%"], "--canary"),
        (["--canary", "5%:0s"], "--canary"),
        (["--steering", "maybe"], "--steering"),
    ],
)
def test_bad_steering_options_exit_2(args: list[str], says: str) -> None:
    """Each bad value is one line naming the option, exit 2, no child started."""
    result = subprocess.run([*HOTSWAPD, *args, "--", "true"], capture_output=True, text=True,
                            timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert says in result.stderr


def test_steering_off_shares_one_socket_and_relistens_after_a_shutdown(
    hotswapd: Start, program: Path, tmp_path: Path
) -> None:
    """--steering off: one shared socket; a candidate's shutdown is repaired for the restart."""
    # A fixed port: a socket bound to port 0 comes back on a new one when listened again.
    run, port, _first = start(hotswapd, program, "--steering", "off", "--on-exit", "restart",
                              listen=f"http=tcp://127.0.0.1:{free_port()}")  # fmt: skip
    assert run.wait_event("listening")["mode"] == "shared"
    once = tmp_path / "shut-down-once"
    once.touch()  # the candidate shuts the socket down; the restart after it serves
    install(hostile_program(tmp_path, "--shutdown-once", str(once), "--serve"), program)
    outcome = swap(run, 1)
    assert outcome["outcome"] == "rolled_back"
    run.wait_event("listener_relistened")
    wait_until(lambda: _answers(port), 15, lambda: f"the port answering again\n{run.tail()}")


def _answers(port: int) -> bool:
    try:
        return bool(get_pid(port))
    except OSError:
        return False


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="needs systemd-socket-activate (systemd)")
def test_shared_mode_survives_a_candidate_that_shuts_the_socket_down(
    hotswapd: Start, program: Path, tmp_path: Path
) -> None:
    """Shared (adopted) socket: a candidate's shutdown kills gen 1, hotswapd listens again
    before the restart, the restarted server serves, and nothing claims gen 1 serves on."""
    assert SOCKET_ACTIVATE is not None
    port = free_port()
    activate = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=http"]
    control = ["--control-socket", str(tmp_path / "c.sock")]
    run = hotswapd([*GATED, "--on-exit", "restart", *control], [str(program)], pid1=False,
                   wrapper=activate)  # fmt: skip
    wait_until(lambda: _answers(port), 15, "generation 1 answering")  # also starts hotswapd
    listening = run.wait_event("listening")
    assert (listening["mode"], listening["adopted"]) == ("shared", True)
    run.wait_event("supervising")
    first = str(run.wait_event("spawned")["pid"])
    once = tmp_path / "shut-down-once"
    once.touch()
    install(hostile_program(tmp_path, "--shutdown-once", str(once), "--serve"), program)
    outcome = swap(run, 1)
    assert outcome["outcome"] == "rolled_back"
    relistened = run.wait_event("listener_relistened")
    assert relistened["listeners"] == ["http"]
    run.wait_event("restarted", timeout=20)
    wait_until(lambda: _answers(port), 15, "the restarted generation answering")
    candidate = str(run.wait_event("swap_spawned")["pid"])
    assert get_pid(port) not in (first, candidate)  # a restarted generation serves
    rolled = run.wait_event("swap_rolled_back")
    assert "keeps serving" not in rolled["reason"]


# ----------------------------------------------------------------------------- untrusted answers


def test_a_redirect_fails_the_gate_and_is_never_followed(hotswapd: Start, program: Path,
                                                         tmp_path: Path) -> None:  # fmt: skip
    """A candidate answering 302 to another local service is rolled back, the 302 named."""
    run, port, first = start(hotswapd, program)
    install(hostile_program(tmp_path, "--serve", "--answer", "redirect"), program)
    outcome = swap(run, 1)
    assert outcome["outcome"] == "rolled_back"
    assert outcome["code"] == "health"
    named = "HTTP 302 redirect to http://127.0.0.1:9/x (redirects are never followed)"
    assert named in outcome["reason"]
    assert get_pid(port) == str(first)


def test_a_huge_health_body_is_cut_not_buffered(hotswapd: Start, program: Path,
                                                tmp_path: Path) -> None:  # fmt: skip
    """A 1.5 GB /healthz body: PID 1's peak memory stays far below it (read a few KiB)."""
    run, _, _ = start(hotswapd, program)
    before = _peak_kib(run.pid)
    install(hostile_program(tmp_path, "--serve", "--answer", "huge"), program)
    outcome = swap(run, 1)
    assert outcome["outcome"] == "committed", outcome  # the status was 200; the body was cut
    assert _peak_kib(run.pid) - before < 32 * 1024


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_doctor_can_ask_which_mode_each_listener_would_be_in() -> None:
    """steering_modes says what bind_all would do, binding nothing: the one rule for doctor."""
    from hotswapd.boot.listeners import steering_modes
    from hotswapd.boot.values import parse_listen

    specs = [parse_listen("http=tcp://127.0.0.1:1"), parse_listen("l=unix:///tmp/x.sock")]
    assert [mode for _, mode, _ in steering_modes(specs)] == ["steered", "shared"]
    assert steering_modes(specs, "off")[0] == ("http", "shared", "--steering off")
    assert steering_modes(specs, adopted=True)[0][1] == "shared"


def test_the_selector_gives_a_canary_step_its_weight_and_withdraws_it_at_once() -> None:
    """Real sockets, the controller alone: 20% ± 5 of 1,000 connections, then 0% at once."""
    import structlog

    from hotswapd.boot.listeners import bind_all, close_all
    from hotswapd.boot.values import parse_listen
    from hotswapd.core.steering import Steering

    listeners = bind_all([parse_listen("http=tcp://127.0.0.1:0")])
    steering = Steering(listeners, 1, structlog.get_logger())
    try:
        # socket.socket views (dup'd fds) of the two members, to accept() from
        old = socket.socket(fileno=os.dup(listeners[0].sock.fileno()))
        (member,) = steering.sockets_for(2)
        new = socket.socket(fileno=os.dup(member.fileno()))
        port = listeners[0].port()
        old.setblocking(False)
        new.setblocking(False)

        def accepted(seen: Counter[str]) -> bool:
            for name, sock in (("old", old), ("new", new)):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                except OSError as exc:  # EINVAL: this member has left (released)
                    if exc.errno != errno.EINVAL or name != "old":
                        raise
                    continue
                conn.close()
                seen[name] += 1
                return True
            return False

        def land(count: int) -> Counter[str]:
            seen: Counter[str] = Counter()
            for _ in range(count):
                with socket.create_connection(("127.0.0.1", port)):
                    wait_until(lambda: accepted(seen), 5, "the connection in a queue")
            return seen

        assert land(50) == Counter(old=50)  # joined, but named by no program yet
        steering.weigh(2, 20)
        share = land(1000)
        assert sum(share.values()) == 1000
        assert abs(share["new"] / 10 - 20) <= 5, share
        steering.withdraw(2)
        assert land(200) == Counter(old=200)
        steering.cutover(2)
        assert land(200) == Counter(new=200)
        assert steering.release(1)
        assert land(50) == Counter(new=50)
        old.close()
        new.close()
    finally:
        steering.close()
        close_all(listeners)


def test_a_pid1_child_of_no_live_generation_is_listed_and_logged_once(
    hotswapd: Start, program: Path, go_server: Any, tmp_path: Path
) -> None:
    """A setsid grandchild holding no socket outlives its generation: listed, logged once."""
    install(hostile_program(tmp_path, "--sleeper", "--serve"), program)
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *GATED], [str(program)])
    sleeper = int(run.wait_stdout("sleeper ")[0].split()[1])
    run.wait_stdout("ready pid")
    run.wait_event("supervising")
    for index, build in enumerate(("v2", "v1"), 1):
        install(go_server(build), program)
        assert swap(run, index)["outcome"] == "committed"
    logged = run.events("unowned_child", pid=sleeper)
    assert len(logged) == 1  # two swaps, one line
    assert _ns_alive(run, sleeper)
