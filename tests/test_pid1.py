"""hotswapd as a real PID 1: exit codes, signal forwarding, reaping, stop, fds, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    CHILD,
    HOTSWAPD,
    Hotswapd,
    descendants,
    fd_links,
    proc_state,
    run_to_exit,
)
from tests.helpers import REPO, wait_until

Start = Any  # the `hotswapd` fixture: (options, command, **kwargs) -> Hotswapd


def listen_port(run: Hotswapd, name: str = "http") -> int:
    event = run.wait_event("listening", name=name)
    return int(str(event["address"]).rsplit(":", 1)[1])


def get(port: int, path: str = "/", host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


# ----------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_code_is_the_childs(code: int) -> None:
    """hotswapd as PID 1 exits with exactly the active child's exit code."""
    exit_code, _ = run_to_exit([], [*CHILD, "--exit", str(code)])
    assert exit_code == code


@pytest.mark.parametrize("name", ["HUP", "INT", "QUIT", "ABRT", "KILL", "TERM"])
def test_exit_code_is_128_plus_signal(name: str) -> None:
    """A child killed by signal N makes hotswapd exit 128+N, as tini and Docker report it."""
    exit_code, _ = run_to_exit([], [*CHILD, "--die-by", name])
    assert exit_code == 128 + getattr(signal, "SIG" + name)


def test_missing_program_exits_127_with_one_line(tmp_path: Path) -> None:
    """A missing program is one stderr line naming it, and exit 127."""
    exit_code, run = run_to_exit([], [str(tmp_path / "nope")])
    assert exit_code == 127
    missing = tmp_path / "nope"
    assert run.stderr_lines == [f"hotswapd: cannot run '{missing}': No such file or directory"]


def test_directory_as_program_exits_126(tmp_path: Path) -> None:
    """A directory given as the program is one line and exit 126."""
    exit_code, run = run_to_exit([], [str(tmp_path)])
    assert exit_code == 126
    assert len(run.stderr_lines) == 1
    assert "is a directory" in run.stderr_lines[0]


def test_not_executable_program_exits_126(tmp_path: Path) -> None:
    """A file without the exec bit is one line and exit 126."""
    program = tmp_path / "server"
    program.write_text("#!/bin/sh\nexit 0\n")
    exit_code, run = run_to_exit([], [str(program)])
    assert exit_code == 126
    assert len(run.stderr_lines) == 1
    assert "Permission denied" in run.stderr_lines[0]


def test_bad_interpreter_exits_127_from_exec(tmp_path: Path) -> None:
    """A script whose #! interpreter is missing fails in exec itself: 127, reported once."""
    program = tmp_path / "server"
    program.write_text("#!/no/such/interpreter\n")
    program.chmod(0o755)
    exit_code, run = run_to_exit([], [str(program)])
    assert exit_code == 127
    assert len(run.stderr_lines) == 1
    assert "interpreter" in run.stderr_lines[0]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--listen", "http://:8080"], "--listen: invalid value 'http://:8080'"),
        (["--listen", "tcp://:99999"], "ports go from 0 to 65535"),
        (["--stop-timeout", "3x"], "--stop-timeout: invalid value '3x': use 500ms, 30s, 2m"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--on-exit", "sometimes"], "--on-exit: invalid value 'sometimes': use exit or restart"),
        (["--stop-signal", "NOPE"], "use a signal name such as TERM"),
        (["--max-memory-growth", "0.5"], "a ratio below 1 would fail every swap"),
    ],
)
def test_bad_option_is_one_line_and_exit_2(options: list[str], needle: str) -> None:
    """A bad option value is one line naming the option, the value and what is accepted; exit 2."""
    exit_code, run = run_to_exit(options, ["/bin/true"], pid1=False)
    assert exit_code == 2
    assert len(run.stderr_lines) == 1, run.stderr_lines
    assert needle in run.stderr_lines[0]


def test_bad_env_value_names_the_variable() -> None:
    """A bad HOTSWAPD_* value is reported under the variable's name."""
    exit_code, run = run_to_exit([], ["/bin/true"], pid1=False,
                                 env={"HOTSWAPD_DRAIN_TIMEOUT": "soon"})  # fmt: skip
    assert exit_code == 2
    assert run.stderr_lines[0].startswith("hotswapd: HOTSWAPD_DRAIN_TIMEOUT: invalid value 'soon'")


def test_port_in_use_is_one_line_and_nothing_spawned() -> None:
    """A port already in use is one line naming the listener and the fix; no child starts."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        exit_code, run = run_to_exit([f"--listen=http=tcp://127.0.0.1:{port}"],
                                     [*CHILD, "--exit", "0"])  # fmt: skip
    finally:
        holder.close()
    assert exit_code == 1
    assert run.stderr_lines == [
        f"hotswapd: --listen http=tcp://127.0.0.1:{port}: port {port} is already in use "
        "(another server or an old hotswapd holds it; stop it or choose another port)"
    ]


def test_unix_socket_in_missing_directory(tmp_path: Path) -> None:
    """A unix socket path in a missing directory is one line that says to create it."""
    path = tmp_path / "missing" / "app.sock"
    exit_code, run = run_to_exit([f"--listen=unix://{path}"], [*CHILD, "--exit", "0"])
    assert exit_code == 1
    assert len(run.stderr_lines) == 1
    assert f"directory {path.parent} does not exist" in run.stderr_lines[0]


def test_no_program_is_a_usage_error() -> None:
    """Running hotswapd without a program is exit 2 with the usage in one line."""
    proc = subprocess.run([*HOTSWAPD], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "hotswapd: no program given: hotswapd [OPTIONS] -- PROGRAM [ARGS...]"
    )


# ----------------------------------------------------------------------------- signals

FORWARDED = ["HUP", "QUIT", "USR1", "WINCH", "CONT", "ALRM", "PIPE", "URG", "TTIN", "TTOU",
             "XCPU", "VTALRM", "PWR"]  # fmt: skip


def test_each_forwarded_signal_reaches_the_child_exactly_once(hotswapd: Start) -> None:
    """Every forwardable signal sent to PID 1 is seen once by the child, real-time ones too."""
    run = hotswapd([], [*CHILD])
    run.wait_stdout("ready (pid:")
    names = [*FORWARDED, "RTMIN", "RTMIN+3", "RTMAX"]
    for name in names:
        if name.startswith("RT"):
            base = signal.SIGRTMIN if name.startswith("RTMIN") else signal.SIGRTMAX
            number = int(base) + (int(name.split("+")[1]) if "+" in name else 0)
            expected = f"SIGRTMIN+{number - signal.SIGRTMIN}"
        else:
            number = int(getattr(signal, "SIG" + name))
            expected = "SIG" + name
        run.signal(number)
        run.wait_stdout(f"signal {expected}")
    seen = list(run.stdout_lines)  # before the stop: it adds a SIGCONT of its own
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    for name in FORWARDED:
        assert seen.count(f"signal SIG{name}") == 1, name
    assert run.stdout_lines.count("signal SIGTERM") == 1


def test_usr2_is_consumed_not_forwarded(hotswapd: Start) -> None:
    """SIGUSR2 is hotswapd's swap trigger: the child never sees it."""
    run = hotswapd(["--settle", "5s"], [*CHILD])  # the swap still runs when HUP comes
    run.wait_stdout("ready (pid:")
    run.signal(signal.SIGUSR2)
    run.wait_event("swap_requested", source="signal")
    run.signal(signal.SIGHUP)  # a sentinel: forwarded in order after the USR2 was handled
    run.wait_stdout("signal SIGHUP")
    assert "signal SIGUSR2" not in run.stdout_lines


def test_sigterm_at_the_instant_of_start_still_stops(hotswapd: Start) -> None:
    """A SIGTERM sent the instant the child exists, before the loop runs, still stops it."""
    for _ in range(3):
        run = hotswapd(["--stop-timeout", "5s"], [*CHILD])
        assert run.pid > 0
        wait_until(lambda: descendants(run.pid), 10, "the child to be forked")  # noqa: B023
        run.signal(signal.SIGTERM)
        code = run.wait(20)
        # The child either had its handler in (exit 0) or was killed by the TERM (143).
        assert code in (0, 143)
        assert run.events("stop_requested", signal="SIGTERM")


def test_ctrl_c_on_a_tty_reaches_the_child_once(tmp_path: Path) -> None:
    """Ctrl-C typed on hotswapd's terminal reaches the child exactly once."""
    import fcntl
    import termios

    master, slave = os.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = dict(os.environ, PYTHONPATH=str(REPO), HOTSWAPD_LOG_FORMAT="json")
    proc = subprocess.Popen([*HOTSWAPD, "--", *CHILD], stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=controlling_tty, env=env)  # fmt: skip
    os.close(slave)
    output = b""

    def read_until(text: bytes) -> bool:
        nonlocal output
        import select

        if select.select([master], [], [], 0.05)[0]:
            try:
                output += os.read(master, 65536)
            except OSError:
                return text in output
        return text in output

    try:
        wait_until(lambda: read_until(b"ready (pid:"), 15, "child ready on the tty")
        os.write(master, b"\x03")
        wait_until(lambda: read_until(b"signal SIGINT"), 15, "SIGINT at the child")
        assert proc.wait(15) == 0
        read_until(b"")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert output.count(b"signal SIGINT") == 1


def test_job_control_stops_and_continues_with_the_child(hotswapd: Start) -> None:
    """SIGTSTP reaches the child and stops hotswapd too; SIGCONT resumes both (not PID 1)."""
    run = hotswapd([], [*CHILD], pid1=False)
    run.wait_stdout("ready (pid:")
    run.signal(signal.SIGTSTP)
    run.wait_stdout("signal SIGTSTP")
    wait_until(lambda: proc_state(run.pid) == "T", 10, "hotswapd stopped")
    run.signal(signal.SIGCONT)
    run.wait_stdout("signal SIGCONT")
    wait_until(lambda: proc_state(run.pid) in ("S", "R"), 10, "hotswapd running again")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert run.stdout_lines.count("signal SIGTSTP") == 1


# ----------------------------------------------------------------------------- stop


def test_child_ignoring_term_is_killed_at_stop_timeout(hotswapd: Start) -> None:
    """A child that ignores SIGTERM is SIGKILLed at --stop-timeout; exit 137."""
    run = hotswapd(["--stop-timeout", "300ms"], [*CHILD, "--ignore-term"])
    run.wait_stdout("ready (pid:")
    run.signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGKILL
    run.wait_stdout("signal SIGTERM")
    assert run.events("stop_timeout_kill", timeout_s=0.3)


def test_stop_signal_option_replaces_the_received_one(hotswapd: Start) -> None:
    """--stop-signal QUIT sends QUIT to the child when hotswapd gets SIGTERM."""
    run = hotswapd(["--stop-signal", "QUIT", "--stop-timeout", "300ms"], [*CHILD])
    run.wait_stdout("ready (pid:")
    run.signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGKILL  # the fake child only exits on TERM/INT
    assert "signal SIGQUIT" in run.stdout_lines
    assert "signal SIGTERM" not in run.stdout_lines


def test_sigint_stops_with_int(hotswapd: Start) -> None:
    """SIGINT to hotswapd forwards SIGINT (not TERM) and exits with the child's code."""
    run = hotswapd([], [*CHILD, "--term-exit", "5"])
    run.wait_stdout("ready (pid:")
    run.signal(signal.SIGINT)
    assert run.wait() == 5
    assert run.stdout_lines.count("signal SIGINT") == 1


def test_hotswapd_sigkilled_outside_a_namespace_takes_the_child(hotswapd: Start) -> None:
    """The parent-death signal kills children when hotswapd itself is SIGKILLed."""
    run = hotswapd([], [*CHILD], pid1=False)
    line = run.wait_stdout("ready (pid:")[0]
    child_pid = int(line.split("pid: ")[1].rstrip(")"))
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    wait_until(lambda: proc_state(child_pid) in (None, "Z"), 10, "child gone")


# ----------------------------------------------------------------------------- reaping


def test_hundred_orphans_reaped_and_exit_code_exact() -> None:
    """100 orphans are reaped (no zombie left) and the child's exit code stays exact."""
    for _ in range(3):
        exit_code, run = run_to_exit([], [*CHILD, "--orphans", "100", "--exit", "7"])
        assert exit_code == 7
        stopped = run.events("stopped")[0]
        assert stopped["orphans_reaped"] == 100


def test_orphans_are_reaped_while_running(hotswapd: Start) -> None:
    """Orphans of a running child never linger as zombies under PID 1."""
    run = hotswapd([], [*CHILD, "--orphans", "50"])
    run.wait_stdout("ready (pid:")
    wait_until(lambda: not run.zombies(), 10, "no zombies")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0


def test_subreaper_when_not_pid1(hotswapd: Start) -> None:
    """Not PID 1, hotswapd becomes a child subreaper, says so, and reaps orphans itself."""
    run = hotswapd([], [*CHILD, "--orphans", "20"], pid1=False)
    run.wait_stdout("ready (pid:")
    run.wait_event("init", role="subreaper")
    wait_until(lambda: not run.zombies(), 10, "no zombies")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert run.events("stopped")[0]["orphans_reaped"] == 20


# ----------------------------------------------------------------------------- the child's view


def test_child_has_exactly_stdio_and_listeners_and_clean_signals(hotswapd: Start) -> None:
    """The child holds fds 0, 1, 2 and the listeners only; its mask and ignores are empty."""
    run = hotswapd(
        ["--listen", "http=tcp://127.0.0.1:0", "--listen", "tcp://127.0.0.1:0"],
        ["/bin/sh", "-c", "echo ready $$; exec sleep 300"],
        env={"LISTEN_FDS": "9", "LISTEN_PID": "99999", "NOTIFY_SOCKET": "/x"},
    )
    inside = int(run.wait_stdout("ready")[0].split()[1])
    child = run.outside_pid(inside)
    # Exactly its two --listen sockets at fd 3 and 4 (issue 10: no `probe` fd any more).
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{child}/fd")) == [0, 1, 2, 3, 4]
    status = Path(f"/proc/{child}/status").read_text()
    assert "SigBlk:\t0000000000000000" in status
    assert "SigIgn:\t0000000000000000" in status
    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
    assert b"LISTEN_FDS=2" in environ
    assert b"LISTEN_FDNAMES=http:listen1" in environ
    assert f"LISTEN_PID={inside}".encode() in environ  # its own pid, as it sees it
    assert not [var for var in environ if var.startswith(b"NOTIFY_SOCKET=")]
    assert os.getpgid(child) == child  # its own process group


def test_inherited_sockets_are_the_same_across_stdio_checks(hotswapd: Start) -> None:
    """fd 3 in the child is the very socket hotswapd bound (same socket inode)."""
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0"], [*CHILD])
    line = run.wait_stdout("ready (pid:")[0]
    child = run.outside_pid(int(line.split("pid: ")[1].rstrip(")")))
    assert os.readlink(f"/proc/{child}/fd/3") in fd_links(run.pid)


def test_user_drops_privileges_and_no_new_privs(hotswapd: Start) -> None:
    """--user nobody runs the child unprivileged; --no-new-privs sets NoNewPrivs."""
    report = "echo uid $(id -u) gid $(id -g); grep -E '^(NoNewPrivs|Groups)' /proc/self/status"
    run = hotswapd(["--user", "nobody", "--no-new-privs", "--listen", "tcp://127.0.0.1:80"],
                   ["/bin/sh", "-c", report])  # fmt: skip
    assert run.wait() == 0
    assert "uid 65534 gid 65534" in run.stdout_lines
    assert "NoNewPrivs:\t1" in run.stdout_lines
    assert ["Groups:", "65534"] in [line.split() for line in run.stdout_lines]
    assert run.events("listening", address="tcp://127.0.0.1:80")  # bound as root


def test_unknown_user_is_one_line(tmp_path: Path) -> None:
    """--user with an unknown name fails before anything starts, naming the user."""
    exit_code, run = run_to_exit(["--user", "no-such-user-xyz"], [*CHILD], pid1=False)
    assert exit_code == 1
    assert run.stderr_lines == ["hotswapd: --user: no user 'no-such-user-xyz' in /etc/passwd"]


def test_unix_socket_listener_created_served_and_removed(hotswapd: Start, tmp_path: Path,
                                                         go_server: Any) -> None:  # fmt: skip
    """A unix listener replaces a stale socket file, is served, and is unlinked at exit."""
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file with no listener: stale
    run = hotswapd([f"--listen=web=unix://{path}"], [str(go_server())])
    run.wait_stdout("ready pid=")
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    client.sendall(b"GET /version HTTP/1.0\r\n\r\n")
    reply = b""
    while chunk := client.recv(4096):
        reply += chunk
    client.close()
    assert reply.endswith(b"v1\n")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert not path.exists()


def test_go_server_serves_two_named_listeners(hotswapd: Start, go_server: Any) -> None:
    """The example Go server serves every named listener it inherits."""
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0", "--listen", "admin=tcp://[::1]:0"],
                   [str(go_server())])  # fmt: skip
    http_port = listen_port(run, "http")
    admin_port = listen_port(run, "admin")
    run.wait_stdout("ready pid=")
    assert get(http_port, "/version") == "v1\n"
    assert get(admin_port, "/version", host="[::1]") == "v1\n"
    assert any("serving on http(fd 3),admin(fd 4)" in line for line in run.stderr_lines)
    assert not any("probe(fd" in line for line in run.stderr_lines)  # issue 10: no probe fd


def test_gunicorn_serves_on_the_inherited_socket(hotswapd: Start) -> None:
    """gunicorn, which checks LISTEN_PID, serves on the socket hotswapd bound."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    run = hotswapd(["--listen", "http=tcp://127.0.0.1:0"],
                   [gunicorn, "--workers", "1", "--chdir", str(REPO / "tests" / "children"),
                    "wsgi:app"])  # fmt: skip
    port = listen_port(run)
    body: str = wait_until(lambda: _try_get(port), 30, "gunicorn answering")
    assert body.startswith("hello from gunicorn")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0


def _try_get(port: int, path: str = "/") -> str | None:
    try:
        return get(port, path)
    except OSError:
        return None


def test_adopts_sockets_passed_to_hotswapd_itself(tmp_path: Path) -> None:
    """Started with LISTEN_FDS for its own pid, hotswapd adopts those sockets instead of binding."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    fd = sock.fileno()
    command = " ".join([*HOTSWAPD, "--", *CHILD])
    script = f"exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec {command}"
    env = dict(os.environ, PYTHONPATH=str(REPO), HOTSWAPD_LOG_FORMAT="json")
    proc = subprocess.Popen(
        ["bash", "-c", script],
        pass_fds=[fd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sock.close()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready (pid:")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert f'"address": "tcp://127.0.0.1:{port}", "adopted": true' in err
    assert '"name": "web"' in err


# ----------------------------------------------------------------------------- on-exit


def test_on_exit_restart_backs_off(hotswapd: Start) -> None:
    """--on-exit restart restarts a crashing child with a doubling delay, logging each status."""
    run = hotswapd(["--on-exit", "restart"], [*CHILD, "--exit", "3"])
    run.wait_event("restarted", count=3)
    delays = [event["delay_s"] for event in run.events("restart_scheduled")][:3]
    assert delays == [0.1, 0.2, 0.4]
    assert all(event["status"] == "exit 3" for event in run.events("restart_scheduled"))
    run.signal(signal.SIGTERM)
    assert run.wait() in (3, 143, 0, 1)


def test_on_exit_restart_gives_up_when_the_program_is_gone(hotswapd: Start,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """A program that can no longer be exec'd is not restarted forever: exit 127."""
    program = tmp_path / "server.sh"
    program.write_text('#!/bin/sh\nrm -- "$0"\nexit 3\n')
    program.chmod(0o755)
    run = hotswapd(["--on-exit", "restart"], [str(program)])
    assert run.wait() == 127
    assert run.events("restart_failed")
    assert "No such file" in run.events("restart_failed")[0]["error"]


def test_on_exit_exit_stops_the_rest_of_the_group(hotswapd: Start, tmp_path: Path) -> None:
    """When the child exits by itself, what is left of its process group is stopped too."""
    program = tmp_path / "server.sh"
    program.write_text("#!/bin/sh\nsleep 300 &\necho started $!\nexit 4\n")
    program.chmod(0o755)
    run = hotswapd(["--stop-timeout", "2s"], [str(program)], pid1=False)
    assert run.wait() == 4
    sleeper = int(run.wait_stdout("started")[0].split()[1])
    assert proc_state(sleeper) in (None, "Z")
