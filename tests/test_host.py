"""The host modules are the one copy of each rule: doctor's verdict and the runtime agree.

For every finding that has both a doctor line and a runtime behaviour, the same situation
is built (a real tmpfs, real sysctls, a real cgroup, a real mount hiding a file; a
mountinfo table for the filesystems this machine cannot mount) and both sides are asked:
the watcher's mode and reason against doctor's line, the run mode's missing-program
message against doctor's, the memory gate's headroom against doctor's memory figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hotswapd.boot.config import parse_run_args
from hotswapd.boot.spawn import resolve_program
from hotswapd.boot.values import WatchSpec
from hotswapd.control import status
from hotswapd.doctor import command as doctor
from hotswapd.doctor.findings import Finding
from hotswapd.errors import SpawnError
from hotswapd.gates import memory
from hotswapd.host import cgroup, fsfacts, hashing, inotify_limits, mountinfo, shadow
from hotswapd.watch import decide
from hotswapd.watch.watcher import Watcher, WatchError
from tests.helpers import REPO


def watcher_mode(path: Path, mode: str = "auto") -> tuple[str, str]:
    """(mode, reason) the watcher chooses for `path` (or ("refused", message))."""

    async def scenario() -> tuple[str, str]:
        watcher = Watcher(
            [WatchSpec(path=str(path), action="swap")],
            mode=mode,
            on_change=lambda spec, reason: None,
        )
        try:
            await watcher.start()
        except WatchError as exc:
            return "refused", str(exc)
        try:
            return watcher.mode, watcher.mode_reason
        finally:
            await watcher.close()

    return asyncio.run(scenario())


def doctor_findings(args: list[str], check: str) -> list[Finding]:
    """doctor's findings for `args` whose check starts with `check`."""
    config = parse_run_args(args, require_command=False)
    return [f for f in doctor.diagnose(config) if f.check.startswith(check)]


@contextlib.contextmanager
def tmpfs_over(point: Path) -> Iterator[Path]:
    """Mount a tmpfs over an existing, filled directory (hiding it); unmount after."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


@contextlib.contextmanager
def sysctl(name: str, value: int) -> Iterator[None]:
    knob = Path(inotify_limits.SYSCTL_DIR) / name
    old = knob.read_text()
    knob.write_text(f"{value}\n")
    try:
        yield
    finally:
        knob.write_text(old)


# ---------------------------------------------------------------------- blind filesystems


@pytest.mark.parametrize(
    "fstype",
    ["nfs4", "cifs", "smbfs", "ceph", "9p", "virtiofs", "fakeowner", "grpcfuse", "fuse.sshfs"],
)
def test_blind_filesystem_polls_exactly_when_doctor_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str
) -> None:
    """On each inotify-blind type the watcher polls (auto) or refuses (inotify), and doctor
    warns or fails with the watcher's own sentence."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "server").write_bytes(b"x")
    table = tmp_path / "mountinfo"
    table.write_text(
        f"1 0 0:1 / / rw - ext4 /dev/vda rw\n2 1 0:2 / {app} rw - {fstype} share:/export rw\n"
    )
    monkeypatch.setattr(mountinfo, "MOUNTINFO", str(table))
    mode, reason = watcher_mode(app / "server")
    assert mode == "poll"
    assert reason == fsfacts.blind_reason(str(app), fstype, str(app))
    (finding,) = doctor_findings(["--watch", str(app / "server")], f"watch {app}/server")
    assert (finding.level, finding.finding, finding.fix) == ("warn", reason, fsfacts.BLIND_FIX)
    refused, message = watcher_mode(app / "server", mode="inotify")
    assert refused == "refused"
    assert reason in message
    (finding,) = doctor_findings(
        ["--watch", str(app / "server"), "--watch-mode", "inotify"], f"watch {app}/server"
    )
    assert finding.level == "fail"
    assert finding.finding == reason


def test_a_real_tmpfs_is_watched_with_inotify_and_doctor_says_ok(
    mount_tmpfs: Callable[[str], Path],
) -> None:
    """On a real tmpfs the watcher takes inotify (auto) and doctor's lines are all ok,
    naming the mount the watcher's fs_type names."""
    point = mount_tmpfs("size=1m")
    (point / "server").write_bytes(b"x")
    mode, _reason = watcher_mode(point / "server")
    assert mode == "auto"
    assert mountinfo.fs_type(str(point / "server")) == ("tmpfs", str(point))
    findings = doctor_findings(["--watch", str(point / "server")], "watch")
    assert [f.level for f in findings] == ["ok"]
    assert findings[0].finding.startswith(f"tmpfs mounted on {point} from tmpfs")
    (trial,) = doctor_findings(["--watch", str(point / "server")], "inotify")
    assert trial.level == "ok"


def test_blind_types_are_one_list() -> None:
    """Network, FUSE and VM-share types are blind; local ones are not (one rule)."""
    for blind in ("nfs", "smb3", "smbfs", "ceph", "grpcfuse", "fuse", "fuseblk", "fuse.gcsfuse"):
        assert fsfacts.is_blind(blind), blind
    for fine in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs"):
        assert not fsfacts.is_blind(fine), fine


# ---------------------------------------------------------------------- inotify limits


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("max_user_instances", "fs.inotify.max_user_instances=0 reached (EMFILE)"),
        ("max_user_watches", "fs.inotify.max_user_watches=0 exhausted (ENOSPC)"),
    ],
)
def test_inotify_limit_exhausted_same_reason_and_hint(
    tmp_path: Path, name: str, reason: str
) -> None:
    """An exhausted limit: the watcher's reason and refusal, and doctor's line, carry the
    same reason and the same sysctl hint (one value, from host.inotify_limits)."""
    (tmp_path / "server").write_bytes(b"x")
    hint = inotify_limits.raise_hint(name)
    with sysctl(name, 0):
        mode, watcher_reason = watcher_mode(tmp_path / "server")
        _, refusal = watcher_mode(tmp_path / "server", mode="inotify")
        (auto,) = doctor_findings(["--watch", str(tmp_path / "server")], "inotify")
        (strict,) = doctor_findings(
            ["--watch", str(tmp_path / "server"), "--watch-mode", "inotify"], "inotify"
        )
    assert (mode, watcher_reason) == ("poll", reason)
    assert refusal.startswith(f"--watch-mode inotify: {reason}; {hint}")
    assert (auto.level, strict.level) == ("warn", "fail")
    for finding in (auto, strict):
        assert finding.finding.startswith(f"{reason}; uid ")
        assert finding.fix == hint
    assert hint.endswith(f"fs.inotify.{name}={inotify_limits.SUGGESTED[name]}")


# ---------------------------------------------------------------------- mounts hiding files


def test_mount_over_the_program_directory_same_words_in_doctor_and_run_mode(
    tmp_path: Path,
) -> None:
    """A tmpfs over the program's directory: doctor's program line and the run mode's hint
    (shadow.program_hint on its exit-127 SpawnError) name the same mount, in the same words."""
    point = tmp_path / "mnt0"
    point.mkdir()
    (point / "server").write_bytes(b"#!/bin/sh\n")
    (point / "server").chmod(0o755)
    program = str(point / "server")
    with tmpfs_over(point):
        mount = shadow.hidden_by_mount(program)
        (line,) = doctor_findings(["--", program], "program")
        with pytest.raises(SpawnError) as raised:  # what the run mode meets at its first spawn
            resolve_program(program, os.environ)
        hint = shadow.program_hint(raised.value, [program])
    assert mount is not None
    assert (mount.point, mount.fstype) == (str(point), "tmpfs")
    finding, fix = shadow.hidden_finding(program, mount)
    assert (line.level, line.finding, line.fix) == ("fail", finding, fix)
    assert raised.value.exit_code == 127
    assert hint == f": {finding} ({fix})"
    assert shadow.missing_hint(str(tmp_path / "absent")) == ""
    assert shadow.program_hint(raised.value, ["server"]) == ""  # found through PATH: no mount


def test_run_mode_names_the_mount_hiding_its_program(tmp_path: Path) -> None:
    """hotswapd itself, not only doctor: exit 127 with one line naming the hiding mount."""
    point = tmp_path / "mnt0"
    point.mkdir()
    (point / "server").write_bytes(b"#!/bin/sh\n")
    (point / "server").chmod(0o755)
    program = str(point / "server")
    with tmpfs_over(point):
        mount = shadow.hidden_by_mount(program)
        assert mount is not None
        finding, fix = shadow.hidden_finding(program, mount)
        ran = subprocess.run(
            [sys.executable, "-m", "hotswapd", "--control-socket", "off", "--", program],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    assert ran.returncode == 127
    assert ran.stderr.splitlines() == [
        f"hotswapd: cannot run '{program}': No such file or directory: {finding} ({fix})"
    ]


def test_watched_directory_under_a_mount_hides_what_is_underneath(tmp_path: Path) -> None:
    """look_under lists what a mount hides without changing this process's view; doctor's
    watch finding counts exactly those entries."""
    point = tmp_path / "mnt0"
    point.mkdir()
    (point / "from-image.conf").write_text("shipped")
    with tmpfs_over(point):
        (point / "config.yaml").write_text("mounted")
        seen = shadow.look_under(str(point), (str(point / "from-image.conf"),))
        visible = sorted(os.listdir(point))
        findings = doctor_findings(["--watch", str(point / "config.yaml")], "watch")
    assert seen is not None
    assert seen.names == ("from-image.conf",)
    assert seen.present == (True,)
    assert visible == ["config.yaml"]  # this process still sees the tmpfs
    (hidden,) = [f for f in findings if "hides" in f.finding]
    assert "hides 1 entry underneath (from-image.conf)" in hidden.finding


def test_mountinfo_parser_decodes_escapes_and_picks_the_top_mount(tmp_path: Path) -> None:
    """Octal escapes are decoded, the longest mount point wins and, stacked, the last one."""
    spaced = tmp_path / "host files"
    (spaced / "app").mkdir(parents=True)
    escaped = str(spaced).replace(" ", "\\040")
    table = mountinfo.parse(
        "1 0 0:1 / / rw - ext4 /dev/vda rw\n"
        f"2 1 0:2 /src {escaped} rw shared:1 - fuse.grpcfuse grpcfuse rw\n"
        f"3 2 0:3 / {escaped} rw - tmpfs tmpfs rw\n"
        "malformed line\n"
    )
    assert len(table) == 3
    top = mountinfo.mount_of(str(spaced / "app"), table)
    assert top == mountinfo.Mount(str(spaced), "/", "tmpfs", "tmpfs")
    assert table[1].root == "/src"
    assert mountinfo.mount_of("/etc", table) == table[0]


# ---------------------------------------------------------------------- cgroup memory


def test_cgroup_reader_v2_v1_and_namespaced_fallback(tmp_path: Path) -> None:
    """v2 (with the namespace fallback to the root), v1 and "max": one reader's answers."""
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    root.mkdir()
    (root / "memory.max").write_text("536870912\n")
    (root / "memory.current").write_text("1048576\n")
    proc.write_text("0::/kubepods/pod1/ctr\n")  # not under this root: a cgroup namespace
    found = cgroup.memory(str(proc), str(root))
    assert found == cgroup.Memory(536870912, 1048576)
    assert found.headroom == 536870912 - 1048576
    (root / "memory.max").write_text("max\n")
    assert cgroup.memory(str(proc), str(root)) == cgroup.Memory(None, 1048576)
    v1 = root / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory.usage_in_bytes").write_text("4096\n")
    proc.write_text("12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n")
    assert cgroup.memory(str(proc), str(root)) == cgroup.Memory(None, 4096)
    assert cgroup.memory(str(tmp_path / "absent"), str(root)) is None


def test_memory_gate_and_doctor_read_the_same_cgroup_limit(tmp_path: Path) -> None:
    """Inside a real cgroup with a 512 MiB limit: the gate's headroom and doctor's line
    come from the same figures (limit minus usage)."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    parent = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/memory")
    group = parent / f"hotswapd-host-{os.getpid()}"
    group.mkdir()
    try:
        (group / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(512 << 20))
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - reports through the pipe
            code = 1
            try:
                (group / "cgroup.procs").write_text(str(os.getpid()))
                figures = cgroup.memory()
                (line,) = doctor.check_memory()
                report = [figures and figures.limit, memory.cgroup_headroom(), line.finding]
                os.write(write_fd, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            limit, headroom, line = json.loads(pipe.read())
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        group.rmdir()
    assert limit == 512 << 20
    assert 0 < headroom < limit
    assert line.startswith("cgroup limit 512.0 MiB, ")


# ---------------------------------------------------------------------- hashing


def test_one_hasher_for_watcher_status_and_deploy(tmp_path: Path) -> None:
    """The watcher's chunked hash, file_sha256 and status agree with hashlib; a file the
    watcher hashed is known to status by its identity, without reading it again."""
    binary = tmp_path / "server"
    binary.write_bytes(os.urandom(3 << 20) + b"tail")
    expected = hashlib.sha256(binary.read_bytes()).hexdigest()
    hashed = asyncio.run(decide.hash_file(str(binary)))
    assert hashed is not None
    assert hashed[0] == expected
    fd = os.open(binary, os.O_RDONLY | os.O_CLOEXEC)
    try:
        gen = SimpleNamespace(exe_fd=fd, executable=str(binary), sha256=None)
        assert status.executable_sha256(gen, hash_missing=False) == expected  # recalled
        assert hashing.file_sha256(str(binary)) == expected
    finally:
        os.close(fd)


def test_status_hashes_off_the_hot_path(tmp_path: Path) -> None:
    """hash_executables hashes a 64 MiB executable in chunks: the loop never stalls 100 ms;
    without it, build_status(hash_missing=False) reports null instead of hashing."""
    binary = tmp_path / "big-server"
    binary.write_bytes(os.urandom(1 << 20) * 64)
    fd = os.open(binary, os.O_RDONLY | os.O_CLOEXEC)
    gen = SimpleNamespace(exe_fd=fd, executable=str(binary), sha256=None)
    supervisor = SimpleNamespace(generations={1: gen})
    assert status.executable_sha256(gen, hash_missing=False) is None

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        done = asyncio.Event()

        async def heartbeat() -> None:
            last = loop.time()
            while not done.is_set():
                await asyncio.sleep(0.001)  # the heartbeat whose gaps are measured
                now = loop.time()
                gaps.append(now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0)
        await status.hash_executables(supervisor)
        done.set()
        await beat
        return gaps

    try:
        gaps = asyncio.run(scenario())
    finally:
        os.close(fd)
    assert gen.sha256 == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert max(gaps) < 0.1


def test_shadow_child_leaves_no_zombie_and_no_mount(tmp_path: Path) -> None:
    """look_under's child is reaped and its detach stays private to it."""
    before = Path("/proc/self/mountinfo").read_text()
    assert shadow.look_under(str(tmp_path)) is None  # not a mount point: detach refused
    assert Path("/proc/self/mountinfo").read_text() == before
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(os.getpid())],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert len(children) <= 1  # ps itself at most


# ---------------------------------------------------------------------- steering


@pytest.mark.parametrize("steering", ["auto", "off"])
def test_doctor_and_the_run_mode_agree_on_each_listeners_steering(
    steering: str, tmp_path: Path
) -> None:
    """doctor's `steering NAME` line is the mode the run mode logs for that listener."""
    listen = ["--listen", "http=tcp://127.0.0.1:0", "--listen", f"u=unix://{tmp_path}/u.sock"]
    options = [*listen, "--steering", steering, "--control-socket", "off"]
    findings = {f.check: f.finding for f in doctor_findings([*options, "--", "/bin/true"],
                                                            "steering")}  # fmt: skip
    ran = subprocess.run(
        [sys.executable, "-m", "hotswapd", *options, "--", "/bin/true"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HOTSWAPD_LOG_FORMAT": "json"},
    )  # fmt: skip
    logged = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
    modes = {e["name"]: e["mode"] for e in logged if e["event"] == "listening"}
    assert modes == {"http": "steered" if steering == "auto" else "shared", "u": "shared"}
    for name, mode in modes.items():
        assert findings[f"steering {name}"].startswith(f"{mode}: ")
