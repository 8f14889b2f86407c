"""The control socket and `hotswapd ctl`, against hotswapd running as PID 1 of a pid namespace.

Every swap here is real: the Go server is built with a version stamped in, hotswapd
spawns it on a shared listener, and the tests read /version, /proc and the JSON logs to
prove which generation serves.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotswapd import cli
from hotswapd.boot import control_paths
from hotswapd.boot.config import Config
from hotswapd.control import server as control
from hotswapd.errors import HotswapdError
from tests.harness import Hotswapd, ns_pid
from tests.helpers import REPO, wait_until

Start = Callable[..., Hotswapd]


def run_cli(
    *args: str, timeout: float = 60, socket_env: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `hotswapd ARGS` as a separate process, as an operator would."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("HOTSWAPD_CONTROL_SOCKET", None)
    if socket_env is not None:
        env["HOTSWAPD_CONTROL_SOCKET"] = socket_env
    return subprocess.run(
        [sys.executable, "-m", "hotswapd", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def run_cli_as(user: str, *args: str) -> tuple[int, str]:
    """Run `hotswapd ARGS` in a forked child that dropped to `user` (combined output).

    In-process after fork, because that user may not be able to read the interpreter."""
    account = pwd.getpwnam(user)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe and its exit code
        code = 99
        try:
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            sys.stdout = sys.stderr = open(1, "w", closefd=False)  # noqa: SIM115 - fd 1 stays
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            code = cli.main(list(args))
            sys.stdout.flush()
        finally:
            os._exit(code)
    os.close(write_fd)
    with open(read_fd, "rb") as pipe:
        output = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def http_get(port: int, path: str = "/version") -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode().strip()
    finally:
        conn.close()


@dataclass
class Served:
    """A hotswapd serving the Go server from `app`, with its control socket at `sock`."""

    run: Hotswapd
    sock: str
    port: int
    app: Path

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("ctl", "--control-socket", self.sock, *args)

    def status(self) -> dict[str, Any]:
        result = self.ctl("status", "--json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data


def serve(start: Start, app: Path, sock: str, *extra: str) -> Served:
    run = start(
        [
            "--listen",
            "http=tcp://127.0.0.1:0",
            "--health",
            "/healthz",
            "--settle",
            "0",
            "--health-timeout",
            "3s",
            "--drain-timeout",
            "5s",
            "--control-socket",
            sock,
            *extra,
        ],
        [str(app)],
    )
    port = int(run.wait_event("listening")["address"].rsplit(":", 1)[1])
    run.wait_event("control_listening")
    run.wait_stdout("ready pid=")
    return Served(run, sock, port, app)


def install(src: Path, dest: Path) -> None:
    """Replace dest by rename, as a build does (the running binary keeps its inode)."""
    temp = dest.with_name(dest.name + ".new")
    shutil.copy2(src, temp)
    os.replace(temp, dest)


def make_app(tmp_path: Path, go_server: Any) -> Path:
    """A private copy of the v1 build that the test may replace."""
    target = tmp_path / "app" / "server"
    target.parent.mkdir()
    shutil.copy2(go_server("v1"), target)
    return target


@pytest.fixture
def app(tmp_path: Path, go_server: Any) -> Path:
    return make_app(tmp_path, go_server)


@pytest.fixture
def served(hotswapd: Start, app: Path, tmp_path: Path) -> Served:
    return serve(hotswapd, app, str(tmp_path / "run" / "control.sock"))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse, so only the socket's own mode guards it."""
    path = Path(f"/tmp/hotswapd-test-{os.getpid()}-{os.urandom(3).hex()}")
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def outside(run: Hotswapd, inside_pid: int) -> int:
    return run.outside_pid(inside_pid)


# ------------------------------------------------------------------ status


def test_status_json_matches_proc(served: Served, app: Path) -> None:
    """`ctl status --json` names the generation that really runs: pid, binary, hash, memory."""
    status = served.status()
    assert status["hotswapd"]["pid"] == 1
    assert status["hotswapd"]["pid1"] is True
    assert status["hotswapd"]["state"] == "running"
    assert status["active"]["generation"] == 1
    (gen,) = status["generations"]
    assert gen["generation"] == 1
    assert gen["state"] == "active"
    assert gen["pid"] == status["active"]["pid"]
    pid = outside(served.run, gen["pid"])
    assert ns_pid(pid) == gen["pid"]
    assert os.readlink(f"/proc/{pid}/exe") == str(app)
    assert gen["executable"] == str(app)
    assert gen["sha256"] == hashlib.sha256(app.read_bytes()).hexdigest()
    with open(f"/proc/{pid}/status") as handle:
        vm_rss = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS"))
    assert 0.5 * vm_rss < gen["rss_bytes"] < 2 * vm_rss
    assert abs(gen["started_at"] - os.stat(f"/proc/{pid}").st_mtime) < 5
    assert status["last_swap"] is None
    assert status["watch"] == {"mode": "off", "paths": []}
    assert status["counters"]["swaps_committed"] == 0
    assert status["orphans_reaped"] == 0


def test_status_table_for_people(served: Served) -> None:
    """Without --json, status prints a table with the active generation marked."""
    result = served.ctl("status")
    assert result.returncode == 0, result.stderr
    active = served.status()["active"]
    assert f"*   1  {active['pid']:>7}  active" in result.stdout
    assert "last swap: none yet" in result.stdout
    assert "watch: off" in result.stdout


# ------------------------------------------------------------------ reload and rollback


def test_reload_wait_good_build_exits_0(served: Served, go_server: Any) -> None:
    """reload --wait shows each phase live and exits 0 once the new build serves."""
    old_pid = outside(served.run, served.status()["active"]["pid"])
    install(go_server("v2"), served.app)
    result = served.ctl("reload", "--wait")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    order = [
        "spawned",
        "ready (health check passed)",
        "memory ok",
        "cutover",
        "old generation exited",
        "committed: generation 2",
    ]
    found = [next(i for i, line in enumerate(lines) if word in line) for word in order]
    assert found == sorted(found), result.stdout
    assert http_get(served.port) == "v2"
    wait_until(lambda: not os.path.exists(f"/proc/{old_pid}"), 10, "the old generation reaped")
    status = served.status()
    assert status["active"]["generation"] == 2
    assert status["last_swap"]["outcome"] == "committed"
    assert set(status["last_swap"]["phases"]) >= {"spawned", "ready", "cutover", "old_exited"}


def test_reload_wait_bad_build_exits_1(served: Served, go_server: Any) -> None:
    """A build whose /healthz fails is rolled back: exit 1, the reason, v1 still serving."""
    old_pid = served.status()["active"]["pid"]
    install(go_server("v2", "-X main.healthz=fail"), served.app)
    result = served.ctl("reload", "--wait")
    assert result.returncode == 1
    status = served.status()
    reason = status["last_swap"]["reason"]
    assert status["last_swap"]["outcome"] == "rolled_back"
    assert reason
    assert result.stderr == f"hotswapd: reload rolled back: {reason}; generation 1 keeps serving\n"
    assert "candidate stopped" in result.stdout
    assert http_get(served.port) == "v1"
    assert status["active"] == {"generation": 1, "pid": old_pid}


def test_reload_without_wait_returns_at_once(served: Served, go_server: Any) -> None:
    """reload without --wait only queues the swap; the swap then happens on its own."""
    install(go_server("v2"), served.app)
    result = served.ctl("reload")
    assert result.returncode == 0, result.stderr
    assert "reload requested" in result.stdout
    served.run.wait_event("swap_finished", outcome="committed")
    assert http_get(served.port) == "v2"


def test_rollback_after_binary_replaced(served: Served, go_server: Any) -> None:
    """rollback execs the previous committed build from its kept fd, whatever is on disk."""
    install(go_server("v2"), served.app)
    assert served.ctl("reload", "--wait").returncode == 0
    assert http_get(served.port) == "v2"
    install(go_server("v3"), served.app)  # the file on disk is now neither v1 nor v2
    result = served.ctl("rollback", "--wait")
    assert result.returncode == 0, result.stderr
    assert http_get(served.port) == "v1"
    assert served.status()["active"]["generation"] == 3


def test_rollback_without_previous_is_refused(served: Served) -> None:
    """With no earlier committed generation, rollback says so and exits 1."""
    result = served.ctl("rollback", "--wait")
    assert result.returncode == 1
    assert "rollback refused: no previous committed generation" in result.stderr


def test_signal_forwarded_to_active(hotswapd: Start, tmp_path: Path) -> None:
    """`ctl signal HUP` reaches the active generation (the child prints what it gets)."""
    sock = str(tmp_path / "control.sock")
    run = hotswapd(
        ["--control-socket", sock], [sys.executable, str(REPO / "tests" / "children" / "child.py")]
    )
    run.wait_stdout("ready")
    run.wait_event("control_listening")  # the child can be up before hotswapd's socket is
    result = run_cli("ctl", "--control-socket", sock, "signal", "HUP")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent SIGHUP to generation 1")
    run.wait_stdout("signal SIGHUP")
    bad = run_cli("ctl", "--control-socket", sock, "signal", "NOPE")
    assert bad.returncode == 1
    assert "use a signal name" in bad.stderr
    for refused in ("STOP", "CHLD"):  # would freeze the server, or lie about its children
        result = run_cli("ctl", "--control-socket", sock, "signal", refused)
        assert result.returncode == 1
        assert "job-control" in result.stderr or "child-state" in result.stderr, result.stderr
    forwarded = ("signal SIGSTOP", "signal SIGCHLD")
    assert not run.stdout_matching(lambda line: line.startswith(forwarded))


# ------------------------------------------------------------------ the socket itself


def test_socket_0600_and_other_users_refused(hotswapd: Start, app: Path, open_dir: Path) -> None:
    """The socket is 0600; another user is refused by the mode, then by SO_PEERCRED."""
    sock = str(open_dir / "control.sock")
    served = serve(hotswapd, app, sock)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert cli.main(["ctl", "--control-socket", sock, "status", "--json"]) == 0  # warm imports
    code, output = run_cli_as("nobody", "ctl", "--control-socket", sock, "status")
    assert code == 1
    assert f"permission denied on {sock} (run as the user hotswapd runs as" in output
    os.chmod(sock, 0o666)  # now only the peer-credential check stands in the way
    code, output = run_cli_as("nobody", "ctl", "--control-socket", sock, "reload")
    assert code == 1
    assert "permission denied" in output
    assert served.run.events("swap_requested") == []


def test_socket_path_from_the_environment(hotswapd: Start, tmp_path: Path) -> None:
    """HOTSWAPD_CONTROL_SOCKET places the socket (run mode) and finds it (ctl)."""
    sock = str(tmp_path / "env" / "control.sock")
    child = [sys.executable, str(REPO / "tests" / "children" / "child.py")]
    run = hotswapd([], child, env={"HOTSWAPD_CONTROL_SOCKET": sock})
    assert run.wait_event("control_listening")["path"] == sock
    result = run_cli("ctl", "status", "--json", socket_env=sock)
    assert result.returncode == 0, result.stderr
    assert f'"control_socket": "{sock}"' in result.stdout


def test_no_hotswapd_listening(tmp_path: Path) -> None:
    """Missing and stale sockets both give the one 'no hotswapd is listening' line."""
    missing = str(tmp_path / "missing.sock")
    result = run_cli("ctl", "--control-socket", missing, "status")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"hotswapd: no hotswapd is listening on {missing} "
        "(is it running? is --control-socket the same?)"
    )
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(stale)
    result = run_cli("ctl", "--control-socket", stale, "reload", "--wait")
    assert result.returncode == 1
    assert "no hotswapd is listening on" in result.stderr


def test_stale_replaced_live_refused_removed_at_exit(
    hotswapd: Start, app: Path, tmp_path: Path
) -> None:
    """A dead hotswapd's socket is replaced, a live one is an error, and exit removes it."""
    sock = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(sock))
    served = serve(hotswapd, app, str(sock))
    assert served.status()["hotswapd"]["control_socket"] == str(sock)
    second = hotswapd(["--control-socket", str(sock)], [str(app)])
    assert second.wait(30) != 0
    assert f"--control-socket {sock}: another hotswapd is listening there" in "\n".join(
        second.stderr_lines
    )
    assert served.status()["active"]["generation"] == 1  # the first one is untouched
    served.run.signal(15)
    served.run.wait(30)
    assert not sock.exists()


def test_socket_is_not_inherited(hotswapd: Start, tmp_path: Path) -> None:
    """A generation spawned after the control socket opened gets no more fds than the first."""
    sock = str(tmp_path / "c.sock")
    run = hotswapd(
        ["--control-socket", sock, "--settle", "0"],
        [sys.executable, str(REPO / "tests" / "children" / "child.py"), "--report"],
    )
    first = run.wait_stdout("fds ")[0]
    run.wait_event("control_listening")
    assert run_cli("ctl", "--control-socket", sock, "reload", "--wait").returncode == 0
    second = run.wait_stdout("fds ", count=2)[1]
    assert second == first


def test_default_path_falls_back_when_run_is_unusable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without /run, the socket goes to $XDG_RUNTIME_DIR/hotswapd, and ctl looks there too."""
    monkeypatch.setattr(control_paths, "RUN_DIR", str(tmp_path / "no" / "such" / "run"))
    runtime = tmp_path / "xdg"
    runtime.mkdir()
    environ = {"XDG_RUNTIME_DIR": str(runtime)}
    path, explicit = control_paths.server_path(Config(command=("x",)), environ)
    assert (path, explicit) == (str(runtime / "hotswapd" / "control.sock"), False)
    assert path is not None
    sock = control.bind(path)
    try:
        assert stat.S_IMODE(os.stat(runtime / "hotswapd").st_mode) == 0o700
        assert control_paths.client_path(None, environ) == path
    finally:
        sock.close()
    assert control_paths.server_path(Config(command=("x",), control_socket="off"), environ) == (
        None,
        True,
    )


def test_bind_refuses_what_it_must_not_replace(tmp_path: Path) -> None:
    """A live socket and a regular file at the path are errors, each one line."""
    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(live))
        server.listen()
        with pytest.raises(HotswapdError, match="another hotswapd is listening there"):
            control.bind(str(live))
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(HotswapdError, match="a file that is not a socket is in the way"):
        control.bind(str(regular))
    assert regular.read_text() == "keep me"


# ------------------------------------------------------------------ hostile input (issue 14)


def raw_request(sock_path: str, method: str, route: str, body: bytes = b"") -> tuple[int, str]:
    """One hand-written HTTP request on the control socket: (status, body text)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(sock_path)
        conn.sendall(
            f"{method} {route} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, text = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), text.decode()


def test_wait_must_be_a_json_boolean(served: Served) -> None:
    """{"wait": "no"} is a 400 naming the field, and no swap is asked for."""
    status, text = raw_request(served.sock, "POST", "/reload", b'{"wait": "no"}')
    assert status == 400
    assert "wait: must be true or false" in text
    status, text = raw_request(served.sock, "POST", "/reload", b'{"reason": ["x"]}')
    assert status == 400
    assert "reason: must be a string" in text
    assert served.run.events("control_request") == []
    assert served.run.events("swap_requested") == []
    assert served.status()["counters"]["swaps_committed"] == 0


def test_huge_reason_is_refused_and_long_one_is_cut(served: Served, go_server: Any) -> None:
    """A 500 KB body is a 413; a 10 KB reason is logged cut to 200 characters, one line."""
    huge = json.dumps({"reason": "x" * 500_000}).encode()
    status, text = raw_request(served.sock, "POST", "/reload", huge)
    assert status == 413
    assert len(text) < 200
    assert served.run.events("control_request") == []
    install(go_server("v2"), served.app)
    long = json.dumps({"reason": "y" * 50 + "\nforged line" + "y" * 10_000}).encode()
    assert raw_request(served.sock, "POST", "/reload", long)[0] == 202
    served.run.wait_event("swap_finished", outcome="committed")
    (logged,) = served.run.events("control_request")
    assert len(logged["reason"]) == control.REASON_MAX
    assert "\n" not in served.status()["last_swap"]["reason"]
    assert max(len(line) for line in served.run.stderr_lines) < 4000


def test_idle_and_oversized_requests_are_cut(served: Served) -> None:
    """A connection that sends nothing is closed after the head deadline; a huge head is a 400."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.settimeout(control.LIMITS.head_timeout_s + 5)
        idle.connect(served.sock)
        answer = idle.recv(65536)  # returns when hotswapd answers and closes
    assert answer.startswith(b"HTTP/1.1 408 ")
    status, text = raw_request(served.sock, "GET", "/status?" + "a" * 20_000)
    assert status == 400
    assert "request head over 8192 bytes" in text
    assert not any("Traceback" in line for line in served.run.stderr_lines)
    assert served.status()["active"]["generation"] == 1


def test_bind_never_chmods_by_path(tmp_path: Path) -> None:
    """The socket's mode is set on its fd before bind: no chmod by path a symlink could redirect."""
    chmods: list[object] = []

    def audit(event: str, args: tuple[object, ...]) -> None:
        if event == "os.chmod":
            chmods.append(args[0])

    sys.addaudithook(audit)
    path = tmp_path / "run" / "control.sock"
    old = os.umask(0)  # even a careless umask in the environment gives 0600
    try:
        sock = control.bind(str(path))
    finally:
        os.umask(old)
    sock.close()
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert chmods, "the mode is set with fchmod"
    assert all(isinstance(target, int) for target in chmods), chmods


def test_explicit_path_in_a_world_writable_dir_is_refused(hotswapd: Start, open_dir: Path) -> None:
    """--control-socket in a 0777 directory (no sticky bit) is exit 2 with one line."""
    shared = open_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    child = [sys.executable, str(REPO / "tests" / "children" / "child.py")]
    run = hotswapd(["--control-socket", str(shared / "control.sock")], child)
    assert run.wait(30) == 2
    problems = [line for line in run.stderr_lines if "is writable by other users" in line]
    assert len(problems) == 1, run.tail()
    assert "mode 777" in problems[0]
    assert not (shared / "control.sock").exists()
    assert not any("Traceback" in line for line in run.stderr_lines)


def fake_server(path: str, uid: int, status: dict[str, Any]) -> int:
    """A process of `uid` that answers every request on `path` with `status` (a forger)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - a separate process, ends by _exit
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(path)
            server.listen()
            os.write(ready_w, b"x")
            body = json.dumps(status).encode()
            while True:
                conn, _ = server.accept()
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                conn.close()
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    return pid


def test_ctl_refuses_a_server_of_another_user(tmp_path: Path, open_dir: Path) -> None:
    """A socket served by uid 65534 is refused by root's ctl before a word of it is believed."""
    theirs = open_dir / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    sock = str(theirs / "control.sock")
    pid = fake_server(sock, 65534, {"forged": True})
    try:
        result = run_cli("ctl", "--control-socket", sock, "status", "--json")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert result.returncode == 1
    assert "forged" not in result.stdout
    assert result.stderr.strip().startswith(
        f"hotswapd: control socket {sock} is served by uid 65534"
    )
    assert "refusing to trust it" in result.stderr


# ------------------------------------------------------------------ any uid (issue 14, item 10)

ARBITRARY_UID = 12345  # OpenShift's pattern: an arbitrary uid in group 0, no passwd entry

AS_ARBITRARY_UID = r"""
set -e
# This private mount namespace gets a /run like `--tmpfs /run/hotswapd` over an image whose
# /run/hotswapd is root's and 0750, and keeps the interpreter reachable for another uid.
if [ -n "$HIDDEN" ]; then
    mount --bind "$HIDDEN/$EXPOSE" "$PARKED"
    mount -t tmpfs -o mode=0755 tmpfs "$HIDDEN"
    mkdir -p "$HIDDEN/$EXPOSE"
    mount --move "$PARKED" "$HIDDEN/$EXPOSE"
fi
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m "${DIR_MODE:-0750}" /run/hotswapd
exec setpriv --reuid "$UID_TO" --regid 0 --clear-groups "$@"
"""


def arbitrary_uid_env(parked: Path, xdg: Path | None) -> dict[str, str]:
    """What AS_ARBITRARY_UID needs: the first ancestor of the interpreter others cannot enter."""
    env = {"UID_TO": str(ARBITRARY_UID), "PARKED": str(parked), "HIDDEN": "", "EXPOSE": ""}
    real = Path(os.path.realpath(sys.executable))
    for ancestor in reversed(real.parents):
        if ancestor != Path("/") and not os.stat(ancestor).st_mode & stat.S_IXOTH:
            env["HIDDEN"] = str(ancestor)
            env["EXPOSE"] = real.relative_to(ancestor).parts[0]
            break
    if xdg is not None:
        env["XDG_RUNTIME_DIR"] = str(xdg)
    return env


def test_arbitrary_uid_default_path_falls_back(hotswapd: Start, open_dir: Path) -> None:
    """uid 12345:0 with a root-owned 0750 /run/hotswapd: the next default path, one line."""
    parked = open_dir / "parked"
    parked.mkdir()
    xdg = open_dir / "xdg"
    xdg.mkdir(mode=0o700)
    os.chown(xdg, ARBITRARY_UID, 0)
    run = hotswapd(
        [],
        ["/bin/sleep", "1000"],
        env=arbitrary_uid_env(parked, xdg),
        wrapper=["sh", "-c", AS_ARBITRARY_UID, "sh"],
    )
    sock = str(xdg / "hotswapd" / "control.sock")
    assert run.wait_event("control_listening")["path"] == sock
    (fallback,) = run.events("control_path_fallback")
    assert fallback["path"] == sock
    assert any("/run/hotswapd" in reason for reason in fallback["skipped"])
    assert os.stat(sock).st_uid == ARBITRARY_UID
    code, text = raw_request(sock, "GET", "/status")  # root may ask; ctl as root would refuse
    assert code == 200
    assert json.loads(text)["active"]["generation"] == 1
    assert not any("Traceback" in line for line in run.stderr_lines)


def test_arbitrary_uid_explicit_unusable_path_is_exit_2(hotswapd: Start, open_dir: Path) -> None:
    """An explicit --control-socket the uid cannot even look into is exit 2 and one line."""
    parked = open_dir / "parked"
    parked.mkdir()
    run = hotswapd(
        ["--control-socket", "/run/hotswapd/control.sock"],
        ["/bin/sleep", "1000"],
        env={**arbitrary_uid_env(parked, None), "DIR_MODE": "0700"},
        wrapper=["sh", "-c", AS_ARBITRARY_UID, "sh"],
    )
    assert run.wait(30) == 2, run.tail()
    assert not any("Traceback" in line for line in run.stderr_lines), run.tail()
    (line,) = [line for line in run.stderr_lines if "/run/hotswapd/control.sock" in line]
    assert f"/run/hotswapd is not writable by uid {ARBITRARY_UID}" in line


def test_status_into_a_closed_pipe_is_quiet(served: Served) -> None:
    """`ctl status | true` (a reader that is gone) exits 0 with no BrokenPipeError traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = (
        f"{shlex.quote(sys.executable)} -m hotswapd ctl --control-socket "
        f"{shlex.quote(served.sock)} status --json | true"
    )
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert result.returncode == 0, result.stderr


def test_serves_a_socket_bound_before_the_fork(tmp_path: Path) -> None:
    """start_control serves the socket the run mode bound with `_socket`, and removes it."""
    import _socket
    import asyncio
    import types

    path = str(tmp_path / "control.sock")
    raw = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    raw.bind(path)
    raw.listen(8)
    active = types.SimpleNamespace(number=1, pid=os.getpid(), alive=True, status=None)
    supervisor = types.SimpleNamespace(active=active, state=types.SimpleNamespace(value="running"))
    log = types.SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None)

    async def scenario() -> tuple[int, str]:
        config = Config(command=("x",), control_socket=path)
        close = await control.start_control(config, supervisor, log, bound=raw)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, raw_request, path, "GET", "/health")
        finally:
            await close()

    code, text = asyncio.run(scenario())
    assert code == 200
    assert json.loads(text)["healthy"] is True
    assert not os.path.exists(path)
