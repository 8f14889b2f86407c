"""`hotswapd doctor`, run as PID 1 of a fresh pid and mount namespace with real mounts.

Each scenario builds the situation for real (a tmpfs over a watched directory, an
overlayfs, inotify limits at zero, a binary whose ELF interpreter is missing, a cgroup
memory limit) and checks the one line doctor prints about it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotswapd.doctor import command as doctor
from tests.helpers import REPO
from tests.test_control import Start, make_app, serve

LOADER = b"/lib64/ld-linux-x86-64.so.2"
MISSING = b"/nonexistent/ld-x86-64.so.2"  # the same length: patched in place


def run_doctor(
    args: list[str], setup: str = "", namespace: bool = True, **kwargs: Any
) -> tuple[int, list[str]]:
    """Run `hotswapd doctor ARGS`, after the shell `setup`, as PID 1 of new namespaces."""
    command = f"{setup}\nexec {shlex.quote(sys.executable)} -m hotswapd doctor {shlex.join(args)}"
    argv = ["sh", "-ec", command]
    if namespace:
        argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=60, check=False, **kwargs
    )
    assert result.stderr == "", result.stderr
    return result.returncode, result.stdout.splitlines()


def line(lines: list[str], start: str) -> str:
    found = [text for text in lines if text.startswith(start)]
    assert found, f"no line starting {start!r} in:\n" + "\n".join(lines)
    return found[0]


@pytest.fixture
def program(tmp_path: Path, go_server: Any) -> Path:
    target = tmp_path / "bin" / "server"
    target.parent.mkdir()
    shutil.copy2(go_server("v1"), target)
    return target


ORIGINAL = {
    name: Path(f"/proc/sys/fs/inotify/{name}").read_text()
    for name in ("max_user_instances", "max_user_watches")
}


@pytest.fixture
def sysctls() -> Iterator[None]:
    """Let a test lower the inotify sysctls; the values from before are always restored."""
    yield
    for name, old in ORIGINAL.items():
        Path(f"/proc/sys/fs/inotify/{name}").write_text(old)


def test_pid1_and_a_tmpfs_hiding_the_image(tmp_path: Path, program: Path) -> None:
    """As PID 1, with a tmpfs over the watched directory: the hidden files are named."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "from-image.conf").write_text("shipped in the image")
    setup = f"mount -t tmpfs tmpfs {app}\ncp {program} {app}/server"
    code, lines = run_doctor(
        ["--watch", f"{app}/server", "--listen", "tcp://127.0.0.1:0", "--", f"{app}/server"], setup
    )
    assert code == 0, lines
    assert line(lines, "ok    init:").startswith("ok    init: running as PID 1")
    assert line(lines, f"ok    watch {app}/server:").startswith(
        f"ok    watch {app}/server: tmpfs mounted on {app} from tmpfs"
    )
    hidden = line(lines, f"warn  watch {app}/server: the tmpfs mount on {app} hides")
    assert "hides 1 entry underneath (from-image.conf)" in hidden
    assert sum("hides" in text for text in lines) == 1  # the program dir shares the mount
    assert "— files the image put there are invisible" in hidden
    assert line(lines, "ok    program:").endswith("is a static ELF binary (runs in scratch)")
    assert lines[-1].startswith("doctor: ")


def test_overlayfs_watched_path(tmp_path: Path, program: Path) -> None:
    """On overlayfs, the watched path's filesystem and mount point are reported."""
    dirs = {name: tmp_path / name for name in ("lower", "upper", "work", "merged")}
    for path in dirs.values():
        path.mkdir()
    shutil.copy2(program, dirs["lower"] / "server")
    setup = (
        f"mount -t overlay overlay -o lowerdir={dirs['lower']},upperdir={dirs['upper']},"
        f"workdir={dirs['work']} {dirs['merged']}"
    )
    merged = dirs["merged"]
    code, lines = run_doctor(["--watch", f"{merged}/server", "--", f"{merged}/server"], setup)
    assert code == 0, lines
    assert line(lines, f"ok    watch {merged}/server:").startswith(
        f"ok    watch {merged}/server: overlay mounted on {merged} from overlay (the container's "
        "own layer"
    )


def test_single_file_bind_mount(tmp_path: Path, program: Path) -> None:
    """A watched file bind-mounted on its own is flagged: a host rename is never seen."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "server").write_bytes(b"")
    setup = f"mount --bind {program} {app}/server"
    code, lines = run_doctor(["--watch", f"{app}/server", "--", f"{app}/server"], setup)
    assert code == 0, lines
    found = line(lines, f"warn  watch {app}/server: single-file bind mount")
    assert found.endswith("— bind-mount the directory instead (-v ./build:/app)")


@pytest.mark.usefixtures("sysctls")
def test_inotify_limits_exhausted(program: Path) -> None:
    """No inotify instance left: fail with --watch-mode inotify, warn (polling) in auto."""
    watched = f"{program.parent}/server"
    Path("/proc/sys/fs/inotify/max_user_instances").write_text("0")
    code, lines = run_doctor(["--watch", watched, "--watch-mode", "inotify", "--", watched])
    assert code == 1
    found = line(lines, "fail  inotify: fs.inotify.max_user_instances=0 reached (EMFILE)")
    assert "the watch will fail (--watch-mode inotify) — raise it on the node" in found
    assert found.endswith("sysctl -w fs.inotify.max_user_instances=1024")
    Path("/proc/sys/fs/inotify/max_user_instances").write_text(ORIGINAL["max_user_instances"])
    Path("/proc/sys/fs/inotify/max_user_watches").write_text("0")
    code, lines = run_doctor(["--watch", watched, "--", watched])
    assert code == 0
    found = line(lines, "warn  inotify: fs.inotify.max_user_watches=0 exhausted (ENOSPC)")
    assert "auto mode will fall back to polling" in found


def test_missing_elf_interpreter(tmp_path: Path) -> None:
    """A dynamic binary whose loader is absent fails, as exec would (ENOENT)."""
    data = Path(os.path.realpath("/bin/true")).read_bytes()
    assert LOADER in data
    broken = tmp_path / "server"
    broken.write_bytes(data.replace(LOADER, MISSING))
    broken.chmod(0o755)
    with pytest.raises(FileNotFoundError):
        subprocess.run([str(broken)], check=False)
    code, lines = run_doctor(["--", str(broken)])
    assert code == 1
    found = line(lines, "fail  program:")
    assert found == (
        f"fail  program: {broken} is dynamically linked but its ELF interpreter "
        f"{MISSING.decode()} is missing: exec fails with 'no such file or directory' "
        "— build it static (CGO_ENABLED=0 go build) or use a base image with that "
        "libc"
    )
    assert lines[-1].endswith("1 fail")


def test_not_pid1_listen_in_use_and_no_program() -> None:
    """Outside a pid namespace: not PID 1 is a warning; a taken port and no program too."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = run_doctor(["--listen", f"web=tcp://127.0.0.1:{port}"], namespace=False)
    assert code == 0
    assert line(lines, "warn  init: not PID 1 (PID 1 is ")
    assert line(lines, f"warn  listen web=tcp://127.0.0.1:{port}: in use now")
    assert line(lines, "warn  program: none given — add -- PROGRAM")


def test_control_socket_permissions(hotswapd: Start, tmp_path: Path, go_server: Any) -> None:
    """A live control socket is checked: 0600 is ok, a socket others may use fails."""
    served = serve(hotswapd, make_app(tmp_path, go_server), str(tmp_path / "run" / "c.sock"))
    code, lines = run_doctor(["--control-socket", served.sock], namespace=False)
    assert line(lines, "ok    control:") == (
        f"ok    control: a hotswapd is listening on {served.sock} (mode 0600)"
    )
    os.chmod(served.sock, 0o666)
    code, lines = run_doctor(["--control-socket", served.sock], namespace=False)
    assert code == 1
    assert line(lines, "fail  control:").endswith("any user who can connect can swap")


def test_memory_limit_headroom(tmp_path: Path) -> None:
    """Under a cgroup memory limit, doctor reports the limit and the room for two generations."""
    base = Path("/sys/fs/cgroup/memory")
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    parent = Path("/sys/fs/cgroup") if v2 else base
    group = parent / f"hotswapd-doctor-{os.getpid()}"
    limit_file = "memory.max" if v2 else "memory.limit_in_bytes"
    group.mkdir()
    try:
        (group / limit_file).write_text(str(512 * 1024 * 1024))

        def enter() -> None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

        _code, lines = run_doctor([], namespace=False, preexec_fn=enter)
        found = line(lines, "ok    memory: cgroup limit 512.0 MiB")
        assert found.endswith("room for a second generation")
    finally:
        group.rmdir()


def test_inotify_usage_counts_this_process() -> None:
    """Instances and watches held by this uid are counted from /proc/*/fdinfo."""
    libc: Any = ctypes.CDLL(None, use_errno=True)
    before = doctor.inotify_usage(os.geteuid())
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0, errno.errorcode[ctypes.get_errno()]
    try:
        for directory in ("/", "/tmp", str(REPO)):
            assert libc.inotify_add_watch(fd, directory.encode(), doctor.IN_MODIFY) >= 0
        after = doctor.inotify_usage(os.geteuid())
    finally:
        os.close(fd)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 3)


def test_help_lists_the_run_options() -> None:
    """`hotswapd doctor --help` prints its usage and the run mode's options, exit 0."""
    code, lines = run_doctor(["--help"], namespace=False)
    assert code == 0
    assert lines[0] == "usage: hotswapd doctor [OPTIONS] [-- PROGRAM [ARGS...]]"
    text = "\n".join(lines)
    for option in ("--watch", "--watch-mode", "--control-socket", "--listen"):
        assert option in text


@pytest.mark.parametrize("mounted", ["app", "tmp"])
def test_program_hidden_by_a_tmpfs(tmp_path: Path, program: Path, mounted: str) -> None:
    """A tmpfs over the program's directory (or an ancestor, an emptyDir on /tmp) is named
    as what hides the program, not just 'No such file or directory'."""
    app = tmp_path / "tmp" / "app"
    app.mkdir(parents=True)
    shutil.copy2(program, app / "server")
    point = app if mounted == "app" else app.parent
    code, lines = run_doctor(["--", f"{app}/server"], f"mount -t tmpfs tmpfs {point}")
    assert code == 1
    assert line(lines, "fail  program:") == (
        f"fail  program: {app}/server is hidden by the tmpfs mount on {point}: it exists "
        f"underneath, where the image put it — mount the volume elsewhere, or install server "
        f"outside {point}"
    )


def test_missing_program_without_a_mount_is_still_enoent(tmp_path: Path) -> None:
    """A program that is simply absent gets the plain ENOENT line, no mount blamed."""
    code, lines = run_doctor(["--", f"{tmp_path}/absent/server"])
    assert code == 1
    assert line(lines, "fail  program:") == (
        f"fail  program: cannot run '{tmp_path}/absent/server': No such file or directory "
        "— fix the path after '--'"
    )


def doctor_as_nobody_with_private_run(args: list[str]) -> tuple[int, list[str]]:
    """Run doctor in a forked child that mounts a private tmpfs on /run holding a root-owned
    0750 /run/hotswapd (as `--read-only --tmpfs /run/hotswapd` gives), then becomes nobody."""
    libc: Any = ctypes.CDLL(None, use_errno=True)
    account = pwd.getpwnam("nobody")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe and its exit code
        code = 99
        try:
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            sys.stdout = sys.stderr = open(1, "w", closefd=False)  # noqa: SIM115 - fd 1 stays
            assert libc.unshare(0x20000) == 0  # CLONE_NEWNS
            assert libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None) == 0  # rprivate
            assert libc.mount(b"tmpfs", b"/run", b"tmpfs", 0, b"mode=0755") == 0
            os.mkdir("/run/hotswapd", 0o750)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            code = doctor.main(args)
            sys.stdout.flush()
        except BaseException:  # noqa: BLE001 - a crash is the finding: print it, exit 98
            import traceback

            traceback.print_exc()
            code = 98
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.splitlines()


def test_unsearchable_control_dir_is_one_finding() -> None:
    """A root-owned 0750 /run/hotswapd seen by another uid: one clear line, no traceback
    (explicit path: the run mode's own exit-2 line; default path: skipped, the next default
    is used and said why)."""
    code, lines = doctor_as_nobody_with_private_run(
        ["--control-socket", "/run/hotswapd/control.sock"]
    )
    assert code == 1, lines
    assert line(lines, "fail  control:") == (
        "fail  control: /run/hotswapd/control.sock: /run/hotswapd is not writable by uid 65534 "
        "(choose a writable directory)"
    )
    code, lines = doctor_as_nobody_with_private_run([])
    assert code == 0, lines
    found = line(lines, "ok    control: /tmp/hotswapd-65534/control.sock will be created")
    assert "(skipped /run/hotswapd/control.sock: /run/hotswapd is owned by uid 0" in found
