"""Hot swap: gated cutover with zero failed requests, and every rollback case."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Hotswapd, descendants, fd_links, proc_state
from tests.helpers import REPO, wait_until
from tests.load import Load

Start = Any
FAST = ["--settle", "0", "--drain-timeout", "5s", "--stop-timeout", "5s"]
GATED = [*FAST, "--health", "/healthz", "--health-timeout", "3s"]


def fetch(port: int, path: str = "/") -> tuple[int, str, str]:
    """(status, X-Pid, body) from a fresh connection."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers.get("X-Pid", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Pid", ""), exc.read().decode()


def install(src: Path, dest: Path) -> None:
    """Replace the program the way a build does: a new file renamed into place."""
    tmp = dest.with_name(dest.name + ".new")
    shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def swap(run: Hotswapd, count: int) -> dict[str, Any]:
    """Send SIGUSR2 and wait for that swap's outcome."""
    run.signal(signal.SIGUSR2)
    return run.wait_event("swap_finished", count=count, timeout=30)


def drained(run: Hotswapd, pid: int) -> bool:
    """Did generation `pid` (inside pid) get a stop signal? The Go server logs it."""
    return any(f"pid {pid} terminated" in line for line in run.stderr_lines)


@pytest.fixture
def program(tmp_path: Path, go_server: Any) -> Path:
    path = tmp_path / "app" / "server"
    path.parent.mkdir()
    shutil.copy2(go_server("v1"), path)
    return path


def start_server(hotswapd: Start, program: Path, *extra: str) -> tuple[Hotswapd, int, int]:
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *GATED, *extra], [str(program)])
    port = run.port()
    run.wait_stdout("ready pid=")
    run.wait_event("supervising")  # signal handlers are in: a SIGUSR2 now is not merged
    first = run.wait_event("spawned")
    return run, port, int(first["pid"])


# ----------------------------------------------------------------------------- committed swaps


def test_twenty_swaps_under_load_drop_nothing(hotswapd: Start, program: Path,
                                              go_server: Any) -> None:  # fmt: skip
    """20 swaps under keep-alive load: 0 failed requests, a new pid every time, all reaped."""
    run, port, pid = start_server(hotswapd, program)
    pids = [pid]
    with Load(port, connections=6) as load:
        for index in range(1, 21):
            install(go_server(f"v{index % 2 + 1}"), program)
            outcome = swap(run, index)
            assert outcome["outcome"] == "committed", outcome
            pids.append(int(outcome["active_pid"]))
            status, answered_by, _ = fetch(port)
            assert (status, answered_by) == (200, str(pids[-1]))
            count = load.count()
            wait_until(lambda: load.count() > count + 20, 10, "load still flowing")  # noqa: B023
        result = load.stop()
    assert result.failures == []
    assert result.ok > 1000
    assert len(set(pids)) == 21
    assert len(run.children()) == 1  # only the active generation is left
    assert run.zombies() == []
    assert set(result.versions) == {"v1", "v2"}
    run.signal(signal.SIGTERM)
    assert run.wait() == 0


def test_gunicorn_swaps_under_load(hotswapd: Start) -> None:
    """gunicorn as the child swaps under load with 0 failed requests (5 swaps)."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *FAST, "--health", "/",
                    "--health-timeout", "20s"],
                   [gunicorn, "--workers", "1", "--graceful-timeout", "5",
                    "--chdir", str(REPO / "tests" / "children"), "wsgi:app"])  # fmt: skip
    port = run.port()
    wait_until(lambda: _answers(port), 30, "gunicorn up")
    with Load(port, connections=4) as load:
        for index in range(1, 6):
            assert swap(run, index)["outcome"] == "committed"
        result = load.stop()
    assert result.failures == []
    assert len(set(result.pids)) >= 5
    run.signal(signal.SIGTERM)
    assert run.wait() == 0


def _answers(port: int) -> bool:
    try:
        return fetch(port)[0] == 200
    except OSError:
        return False


def test_swap_phases_are_logged_with_durations(hotswapd: Start, program: Path) -> None:
    """Every phase is one structured event; the outcome records each phase's duration."""
    run, _, _ = start_server(hotswapd, program)
    outcome = swap(run, 1)
    # Steered (issue 10): "handover" (the old queue drained before the drain signal) is a
    # phase of its own.
    assert set(outcome["phases"]) == {"checked", "spawned", "ready", "memory_ok", "cutover",
                                      "handover", "old_exited"}  # fmt: skip
    assert run.events("swap_checked")[0]["swap"] == 1
    for phase in ("spawned", "ready", "memory_ok", "cutover", "old_exited"):
        event = run.events("swap_" + phase)[0]
        assert (event["swap"], event["generation"]) == (1, 2)
        assert event["phase_s"] == outcome["phases"][phase]


def test_each_generation_gets_its_own_socket_on_the_same_address(
    hotswapd: Start, program: Path
) -> None:
    """Steered: generation N+1 inherits a socket of its own, not N's; hotswapd holds both.

    (Until issue 10 both generations shared one socket; the steered design gives each
    generation its own member of one SO_REUSEPORT group, bound to the same address.)
    """
    run, port, first = start_server(hotswapd, program, "--canary", "2s")
    run.signal(signal.SIGUSR2)
    spawned = run.wait_event("swap_spawned")
    old = run.outside_pid(first)
    new = run.outside_pid(int(spawned["pid"]))
    run.wait_event("swap_ready")

    def sockets(pid: int) -> set[str]:
        return {link for link in fd_links(pid) if link.startswith("socket:")}

    assert not sockets(old) & sockets(new)  # nothing shared between the generations
    assert len(sockets(old) & sockets(run.pid)) == 1  # hotswapd holds an fd of each
    assert len(sockets(new) & sockets(run.pid)) == 1
    run.wait_event("swap_finished")
    assert fetch(port)[1] == str(spawned["pid"])


# ----------------------------------------------------------------------------- rollbacks


def assert_untouched(
    run: Hotswapd, port: int, pid: int, outcome: dict[str, Any], expected: str = "rolled_back"
) -> None:
    """The serving generation kept its pid, got no signal and still answers."""
    assert outcome["outcome"] == expected
    assert outcome["active_pid"] == pid
    assert not drained(run, pid)
    assert fetch(port)[:2] == (200, str(pid))
    event = "swap_refused" if expected == "refused" else "swap_rolled_back"
    assert run.wait_event(event)["serving_pid"] == pid


def test_rollback_when_program_is_missing(hotswapd: Start, program: Path) -> None:
    """A missing program is refused before anything is spawned; generation 1 is untouched."""
    run, port, pid = start_server(hotswapd, program)
    program.unlink()
    with Load(port) as load:
        outcome = swap(run, 1)
        result = load.stop()
    assert "does not exist" in outcome["reason"]
    assert_untouched(run, port, pid, outcome, "refused")
    assert result.failures == []


def test_rollback_when_not_executable(hotswapd: Start, program: Path) -> None:
    """A program without the exec bit is refused with chmod advice."""
    run, port, pid = start_server(hotswapd, program)
    program.chmod(0o644)
    outcome = swap(run, 1)
    assert "chmod +x" in outcome["reason"]
    assert_untouched(run, port, pid, outcome, "refused")


def test_rollback_when_binary_is_truncated(hotswapd: Start, program: Path, tmp_path: Path) -> None:
    """A half-written ELF (a build still copying) is refused: its segments end past EOF."""
    run, port, pid = start_server(hotswapd, program)
    data = program.read_bytes()
    half = tmp_path / "half"
    half.write_bytes(data[: len(data) // 2])
    half.chmod(0o755)
    install(half, program)
    outcome = swap(run, 1)
    assert "is truncated" in outcome["reason"]
    assert_untouched(run, port, pid, outcome, "refused")


def test_rollback_when_neither_elf_nor_script(hotswapd: Start, program: Path) -> None:
    """A file that is neither ELF nor #! script is refused."""
    run, port, pid = start_server(hotswapd, program)
    junk = program.with_name("junk")
    junk.write_bytes(b"not a program\n" * 10)
    junk.chmod(0o755)
    install(junk, program)
    outcome = swap(run, 1)
    assert "neither an ELF binary nor a #! script" in outcome["reason"]
    assert_untouched(run, port, pid, outcome, "refused")


def test_rollback_when_candidate_exits(hotswapd: Start, program: Path, tmp_path: Path) -> None:
    """A candidate that exits before it is ready is rolled back; the reason has its status."""
    run, port, pid = start_server(hotswapd, program)
    script = tmp_path / "crash.sh"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    install(script, program)
    outcome = swap(run, 1)
    assert "exited during the readiness gate (exit 3)" in outcome["reason"]
    assert_untouched(run, port, pid, outcome)


def test_rollback_when_health_never_passes(hotswapd: Start, program: Path, go_server: Any) -> None:
    """A build whose /healthz answers 503 is rolled back at --health-timeout under load."""
    run, port, pid = start_server(hotswapd, program)
    install(go_server("bad", "-X main.healthz=fail"), program)
    with Load(port) as load:
        outcome = swap(run, 1)
        result = load.stop()
    assert "(last: answered HTTP 503" in outcome["reason"]
    assert "--health-timeout 3s" in outcome["reason"]
    assert_untouched(run, port, pid, outcome)
    assert result.failures == []
    stopped = run.events("swap_candidate_stopped")
    assert stopped
    assert stopped[0]["generation"] == 2


def test_rollback_when_listen_pid_check_fails(hotswapd: Start, program: Path, go_server: Any,
                                              tmp_path: Path) -> None:  # fmt: skip
    """A child that ignores its sockets (LISTEN_PID mismatch) never answers the probe: rollback."""
    run, port, pid = start_server(hotswapd, program)
    real = tmp_path / "real-server"
    shutil.copy2(go_server("v2"), real)
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(f"#!/bin/sh\nLISTEN_PID=99999 ADDR=127.0.0.1:0 exec {real}\n")
    wrapper.chmod(0o755)
    install(wrapper, program)
    outcome = swap(run, 1)
    # Steered, the probe goes through the public address into the candidate's own socket.
    assert "never accepted on its own --listen socket (http" in outcome["reason"]
    assert "LISTEN_FDS" in outcome["reason"]
    assert_untouched(run, port, pid, outcome)


def test_rollback_of_a_memory_hog(hotswapd: Start, program: Path, go_server: Any) -> None:
    """A build that holds 300 MiB more than its predecessor is rolled back; both figures shown."""
    run, port, pid = start_server(hotswapd, program)
    install(go_server("hog", "-X main.allocMiB=300"), program)
    outcome = swap(run, 1)
    assert "memory grew from" in outcome["reason"]
    assert "--max-memory-growth 1.5x and +32.0 MiB" in outcome["reason"]
    assert_untouched(run, port, pid, outcome)
    rolled = run.events("swap_rolled_back")[0]
    assert "MiB to 3" in rolled["reason"]  # e.g. "from 6.1 MiB to 305.2 MiB"


def test_memory_gate_lets_a_healthy_swap_through_by_default(hotswapd: Start, program: Path,
                                                            go_server: Any) -> None:  # fmt: skip
    """A modest growth (16 MiB) passes the default 1.5x+32MiB rule."""
    run, _, _ = start_server(hotswapd, program)
    install(go_server("grown", "-X main.allocMiB=16"), program)
    assert swap(run, 1)["outcome"] == "committed"


def test_sigterm_during_a_swap_rolls_back_and_stops(hotswapd: Start, program: Path,
                                                    go_server: Any) -> None:  # fmt: skip
    """SIGTERM mid-swap rolls the candidate back and stops the active one; its status is ours."""
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *FAST, "--health", "/healthz",
                    "--health-timeout", "60s"], [str(program)])  # fmt: skip
    run.wait_stdout("ready pid=")
    install(go_server("bad", "-X main.healthz=fail"), program)
    run.signal(signal.SIGUSR2)
    run.wait_event("swap_spawned")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    rolled = run.wait_event("swap_rolled_back")
    assert "hotswapd is stopping" in rolled["reason"]
    assert run.events("swap_finished")[0]["outcome"] == "rolled_back"


def test_canary_failure_rolls_back(hotswapd: Start, program: Path, go_server: Any) -> None:
    """A build that passes its gates but crashes during --canary is rolled back."""
    run, port, pid = start_server(hotswapd, program, "--canary", "3s")
    install(go_server("flaky", "-X main.crashAfter=400ms"), program)
    outcome = swap(run, 1)
    assert "exited during the canary (exit 3)" in outcome["reason"]
    assert_untouched(run, port, pid, outcome)


# ----------------------------------------------------------------------------- one at a time


def test_swap_storm_coalesces_and_never_leaves_three(hotswapd: Start, program: Path) -> None:
    """10 SIGUSR2 in 50 ms: one swap plus one coalesced follow-up; never 3 generations alive."""
    # A steered swap commits in milliseconds (issue 10), faster than the storm: a 1 s
    # canary keeps the first swap running while the other nine signals arrive.
    run, _, _ = start_server(hotswapd, program, "--canary", "1s")
    for _ in range(10):
        run.signal(signal.SIGUSR2)
        time.sleep(0.005)  # pacing the storm (10 signals in 50 ms), not synchronisation
    peak = 0

    def finished() -> bool:
        nonlocal peak
        peak = max(peak, len(run.children()))
        return len(run.events("swap_finished")) >= 2

    wait_until(finished, 30, "the swap and its follow-up")
    assert peak <= 2
    assert len(run.events("swap_requested")) == 2
    assert len(run.events("swap_coalesced")) >= 1
    assert all(event["outcome"] == "committed" for event in run.events("swap_finished"))
    wait_until(lambda: len(run.children()) == 1, 10, "one generation left")
    assert len(run.events("swap_finished")) == 2


# ----------------------------------------------------------------------------- readiness modes


def test_sd_notify_with_systemd_notify(hotswapd: Start, tmp_path: Path) -> None:
    """--ready notify: systemd-notify's READY=1 (with its BARRIER fd closed) gates the swap."""
    script = tmp_path / "server.sh"
    script.write_text('#!/bin/sh\nsystemd-notify --ready --status="up $$"\nexec sleep 300\n')
    script.chmod(0o755)
    run = hotswapd(["--ready", "notify", *FAST, "--health-timeout", "10s"], [str(script)])
    run.wait_event("supervising")
    outcome = swap(run, 1)
    assert outcome["outcome"] == "committed", outcome
    notified = run.events("swap_notified")[0]
    assert notified["status"].startswith("up ")
    assert [e for e in run.events("sd_notify") if e["fields"].get("READY") == "1"]


def test_sd_notify_with_the_go_server(hotswapd: Start, program: Path) -> None:
    """The example Go server's READY=1 plus its /healthz gate a swap."""
    run, _, _ = start_server(hotswapd, program, "--ready", "notify")
    outcome = swap(run, 1)
    assert outcome["outcome"] == "committed"
    assert run.events("swap_notified")[0]["status"] == "serving v1"


def test_unhealthy_without_ready_times_out_notify(hotswapd: Start, tmp_path: Path) -> None:
    """A candidate that never sends READY=1 is rolled back at --health-timeout."""
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\nexec sleep 300\n")
    script.chmod(0o755)
    run = hotswapd(["--ready", "notify", *FAST, "--health-timeout", "500ms"], [str(script)])
    run.wait_event("supervising")
    outcome = swap(run, 1)
    assert outcome["outcome"] == "rolled_back"
    assert "sent no READY=1 within --health-timeout 0.5s" in outcome["reason"]


def test_ungated_swap_warns(hotswapd: Start, tmp_path: Path) -> None:
    """Without --health or --ready notify every swap warns that it is not health-gated."""
    run = hotswapd([*FAST], ["/bin/sh", "-c", "exec sleep 300"])
    run.wait_event("supervising")
    assert swap(run, 1)["outcome"] == "committed"
    assert run.events("swap_not_health_gated")


def test_health_url_probes_an_explicit_address(hotswapd: Start, program: Path) -> None:
    """--health-url probes the given address instead of the private probe listener."""
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *FAST,
                    "--health-url", "http://127.0.0.1:1/healthz", "--health-timeout", "500ms"],
                   [str(program)])  # fmt: skip
    run.wait_stdout("ready pid=")
    outcome = swap(run, 1)
    assert outcome["outcome"] == "rolled_back"
    assert "http://127.0.0.1:1/healthz did not pass" in outcome["reason"]


# ----------------------------------------------------------------------------- adapters


def test_fd_and_port_templates_in_argv_and_env(hotswapd: Start) -> None:
    """{fd:NAME} and {port:NAME} are substituted per generation in argv and env."""
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *FAST],
                   ["/bin/sh", "-c", 'echo "fd=$1 port=$2 env=$HTTP_PORT"; exec sleep 300',
                    "sh", "{fd:http}", "{port:http}"],
                   env={"HTTP_PORT": "{port:http}"})  # fmt: skip
    port = run.port()
    line = run.wait_stdout("fd=")[0]
    fd, http_port, env_port = (part.split("=")[1] for part in line.split())
    assert (fd, int(http_port), int(env_port)) == ("3", port, port)
    swap(run, 1)
    second = run.wait_stdout("fd=", count=2)[1]
    # Steered, each generation has a socket of its own on the same public port, at fd 3.
    assert second == line


def test_probe_template_names_the_shared_mode_probe_listener(hotswapd: Start,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """{port:probe} is the private probe listener, which exists only for a shared --health."""
    path = tmp_path / "s.sock"
    run = hotswapd(["--listen", f"app=unix://{path}", "--health", "/healthz", *FAST],
                   ["/bin/sh", "-c", 'echo "probe=$PROBE_PORT names=$LISTEN_FDNAMES"; '
                    "exec sleep 300"],
                   env={"PROBE_PORT": "{port:probe}"})  # fmt: skip
    line = run.wait_stdout("probe=")[0]
    probe, names = (part.split("=")[1] for part in line.split())
    assert int(probe) > 0
    assert names == "app:probe"


def test_unknown_template_name_is_a_usage_error() -> None:
    """A template naming no listener fails at start with exit 2."""
    proc = subprocess.run([sys.executable, "-m", "hotswapd", "--listen", "tcp://127.0.0.1:0",
                           "--", "/bin/echo", "{fd:nope}"], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    assert proc.returncode == 2
    assert "no listener named 'nope'" in proc.stderr


# ----------------------------------------------------------------------------- soak


@pytest.mark.slow
def test_thousand_swaps_keep_fds_and_rss_flat(hotswapd: Start) -> None:
    """1000 consecutive swaps of a small child: hotswapd's fd count and RSS stay flat."""
    run = hotswapd(["--settle", "0", "--drain-timeout", "2s"], ["/bin/sleep", "1000"])
    wait_until(lambda: run.children(), 10, "child started")

    def fds() -> int:
        return len(os.listdir(f"/proc/{run.pid}/fd"))

    def rss_kib() -> int:
        for line in Path(f"/proc/{run.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def swaps_done() -> int:
        return len(run.events("swap_finished"))

    figures = {}
    for target in (100, 1000):
        while swaps_done() < target:
            before = swaps_done()
            run.signal(signal.SIGUSR2)
            wait_until(lambda: swaps_done() > before, 10, "swap finished")  # noqa: B023
        figures[target] = (fds(), rss_kib())
    print(
        f"\nafter 100 swaps: {figures[100][0]} fds, {figures[100][1]} KiB RSS; "
        f"after 1000: {figures[1000][0]} fds, {figures[1000][1]} KiB RSS"
    )
    assert figures[1000][0] == figures[100][0]
    assert figures[1000][1] - figures[100][1] < 4096  # under 4 MiB of growth over 900 swaps
    assert run.zombies() == []
    assert proc_state(run.pid) in ("S", "R")
    assert len(descendants(run.pid)) == 1


# ----------------------------------------------------------------------------- cgroup headroom


def _memory_cgroup_dir() -> Path | None:
    """This process's memory cgroup directory (v1 controller or the v2 unified tree)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return base if base.is_dir() else None
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            if "memory" in (base / "cgroup.controllers").read_text():
                return base
    return None


@pytest.fixture
def memory_cgroup(tmp_path: Path) -> Any:
    """A child memory cgroup of our own; removed at teardown."""
    parent = _memory_cgroup_dir()
    if parent is None:
        pytest.skip("no writable memory cgroup on this machine")
    group = parent / f"hotswapd-headroom-{os.getpid()}-{tmp_path.name[-8:]}"
    group.mkdir()
    yield group
    for _ in range(50):
        try:
            group.rmdir()
            break
        except OSError:
            wait_until(lambda: not (group / "cgroup.procs").read_text().strip(), 5, "empty cgroup")


def test_swap_refused_when_the_cgroup_cannot_hold_two_generations(
    hotswapd: Start, program: Path, go_server: Any, tmp_path: Path, memory_cgroup: Path
) -> None:
    """Under a memory limit with less headroom than the serving generation uses, the swap is
    refused before anything is spawned: an OOM kill in the overlap could hit the old one."""
    limit_file = memory_cgroup / (
        "memory.limit_in_bytes" if (memory_cgroup / "memory.limit_in_bytes").exists()
        else "memory.max"
    )  # fmt: skip
    limit_file.write_text(str(320 * 1024 * 1024))
    fat = tmp_path / "fat-server"
    shutil.copy2(go_server("fat", "-X main.allocMiB=200"), fat)
    install(fat, program)
    wrapper = tmp_path / "in-cgroup.sh"
    wrapper.write_text(f'#!/bin/sh\necho $$ > {memory_cgroup}/cgroup.procs\nexec "$@"\n')
    wrapper.chmod(0o755)
    run = Hotswapd(["--listen", "http=tcp://127.0.0.1:0", *GATED], [str(program)], pid1=False,
                   wrapper=[str(wrapper)])  # fmt: skip
    try:
        run.wait_stdout("ready pid=")
        run.wait_event("supervising")
        pid = int(run.wait_event("spawned")["pid"])
        outcome = swap(run, 1)
        assert outcome["outcome"] == "refused"
        assert "swap refused: only" in outcome["reason"]
        assert "left under the cgroup memory limit" in outcome["reason"]
        assert outcome["active_pid"] == pid
        assert not run.events("swap_spawned")  # nothing was started
    finally:
        run.kill_tree()


def test_health_url_with_a_listener_port_template_probes_the_candidate(
    hotswapd: Start, program: Path, go_server: Any
) -> None:
    """`--health-url http://127.0.0.1:{port:http}/healthz` reaches the candidate, not gen 1:
    a build whose /healthz fails is rolled back, a good one commits."""
    url = "http://127.0.0.1:{port:http}/healthz"
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", *FAST, "--health-url", url,
                    "--health-timeout", "2s"], [str(program)])  # fmt: skip
    port = run.port()
    run.wait_stdout("ready pid=")
    run.wait_event("supervising")
    install(go_server("bad", "-X main.healthz=fail"), program)
    outcome = swap(run, 1)
    assert outcome["outcome"] == "rolled_back"
    assert f"http://127.0.0.1:{port}/healthz" in outcome["reason"]
    assert "answered HTTP 503" in outcome["reason"]
    install(go_server("v2"), program)
    assert swap(run, 2)["outcome"] == "committed"


def test_health_url_naming_no_listener_is_one_line(tmp_path: Path) -> None:
    """An unknown `{port:NAME}` in --health-url: one line naming the ports that exist, exit 2."""
    ran = subprocess.run(
        [sys.executable, "-m", "hotswapd", "--listen", "http=tcp://127.0.0.1:0",
         "--control-socket", "off", "--health-url", "http://127.0.0.1:{port:api}/healthz",
         "--", "/bin/true"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert ran.returncode == 2
    assert ran.stderr.splitlines() == [
        "hotswapd: --health-url http://127.0.0.1:{port:api}/healthz: no listener port named "
        "'api' (known: {port:http})"
    ]
