"""hotswapd.watch.watcher on real inotify, real mounts and real sysctls: every fact in issue 4.

Each scenario runs its own event loop (`run`). A change is made with plain blocking
filesystem calls (the kernel queues the events meanwhile), then the test waits on what the
watcher says: an on_change call, or `quiet()` — nothing queued in the kernel and no
debounce or check pending — before it asserts that nothing more fired.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from hotswapd.boot.values import WatchSpec
from hotswapd.host import fsfacts, mountinfo
from hotswapd.log import configure
from hotswapd.watch.watcher import Watcher, WatchError

DEBOUNCE = 0.05
TIMEOUT = 10.0
TRUE = Path(os.path.realpath("/bin/true")).read_bytes()
FALSE = Path(os.path.realpath("/bin/false")).read_bytes()
SLEEP = os.path.realpath("/bin/sleep")
TRUE_PATH = os.path.realpath("/bin/true")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and sysctls need root")


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> None:
    """JSON logs on stderr, as in a container (structlog's default would use stdout)."""
    configure("json", "info")


# ---------------------------------------------------------------------- harness


class Fires:
    """The on_change callback: records calls and wakes whoever waits for them."""

    def __init__(self) -> None:
        self.calls: list[tuple[WatchSpec, str]] = []
        self._event = asyncio.Event()

    def __call__(self, spec: WatchSpec, reason: str) -> None:
        self.calls.append((spec, reason))
        self._event.set()

    def __len__(self) -> int:
        return len(self.calls)

    async def wait(self, count: int = 1, within: float = TIMEOUT) -> None:
        async with asyncio.timeout(within):
            while len(self.calls) < count:
                self._event.clear()
                await self._event.wait()


def run(scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 60.0) -> None:
    """Run one scenario on a fresh event loop, bounded."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await scenario()

    asyncio.run(bounded())


async def eventually(predicate: Callable[[], object], what: str, within: float = TIMEOUT) -> None:
    """Deadline wait on the loop (tests/helpers.wait_until would block the watcher)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)


def queued_bytes(watcher: Watcher) -> int:
    fd = watcher.fileno()
    if fd is None:
        return 0
    size = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, size, True)
    return size[0]


def quiet(watcher: Watcher) -> bool:
    """Every queued event read and every debounce and check finished."""
    ticks = 0 if watcher.mode == "inotify" else 1
    return queued_bytes(watcher) == 0 and watcher.status()["timers"] == ticks


async def settle(watcher: Watcher) -> None:
    await eventually(lambda: quiet(watcher), "the watcher to go quiet")


def path_status(watcher: Watcher, index: int = 0) -> dict[str, str]:
    paths = watcher.status()["paths"]
    assert isinstance(paths, list)
    entry: dict[str, str] = paths[index]
    return entry


@contextlib.asynccontextmanager
async def watching(
    *specs: WatchSpec, mode: str = "inotify", debounce: float = DEBOUNCE, poll: float = 1.0
) -> AsyncIterator[tuple[Watcher, Fires]]:
    fires = Fires()
    watcher = Watcher(specs, mode=mode, debounce=debounce, poll_interval=poll, on_change=fires)
    await watcher.start()
    try:
        yield watcher, fires
    finally:
        await watcher.close()


def swap(path: Path) -> WatchSpec:
    return WatchSpec(path=str(path), action="swap")


# Blocking filesystem helpers: called from the scenarios on purpose (the kernel queues).


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write in place (same inode when it exists), as cp and editors without backups do."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic replace: a temp file in the same directory renamed over the path."""
    temp = path.with_name(path.name + ".tmp-new")
    write(temp, data, mode)
    os.chmod(temp, mode)
    os.rename(temp, path)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def unmount(target: Path) -> None:
    if sh("umount", str(target), check=False).returncode != 0:
        sh("umount", "-l", str(target), check=False)


@contextlib.contextmanager
def mounted(target: Path, *options: str) -> Iterator[Path]:
    """`mount OPTIONS TARGET`, unmounted afterwards if the test did not already."""
    sh("mount", *options, str(target))
    try:
        yield target
    finally:
        for _ in range(3):  # stacked mounts, or one the test already removed
            if not _is_mount_point(target):
                break
            unmount(target)


def _is_mount_point(target: Path) -> bool:
    points = Path("/proc/self/mountinfo").read_text().split("\n")
    return any(line.split()[4:5] == [str(target)] for line in points if line)


@contextlib.contextmanager
def sysctl(name: str, value: int) -> Iterator[int]:
    """Set fs.inotify.NAME for the block and always restore it."""
    knob = Path("/proc/sys/fs/inotify") / name
    old = int(knob.read_text())
    knob.write_text(f"{value}\n")
    try:
        yield old
    finally:
        knob.write_text(f"{old}\n")


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A directory holding `server` (an executable, /bin/false) and `config.yaml`."""
    directory = tmp_path / "app"
    directory.mkdir()
    write(directory / "server", FALSE, 0o755)
    write(directory / "config.yaml", b"port: 8080\n")
    return directory


# ---------------------------------------------------------------------- replacements


def test_atomic_rename_of_new_build_fires_once(app: Path) -> None:
    """A new build renamed over the binary fires exactly once, with a sha256 reason."""

    async def scenario() -> None:
        async with watching(swap(app / "server")) as (watcher, fires):
            replace(app / "server", TRUE, 0o755)
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1
            spec, reason = fires.calls[0]
            assert spec.path == str(app / "server")
            assert reason.startswith("content changed (sha256 ")
            assert path_status(watcher)["decision"] == "fired"

    run(scenario)


def test_cp_over_in_place_fires_once(app: Path) -> None:
    """`cp` over the binary keeps the inode and fires exactly once."""

    async def scenario() -> None:
        async with watching(swap(app / "server")) as (watcher, fires):
            inode = (app / "server").stat().st_ino
            sh("cp", TRUE_PATH, str(app / "server"))
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1
            assert (app / "server").stat().st_ino == inode

    run(scenario)


def test_sed_i_on_config_signals_once(app: Path) -> None:
    """`sed -i` (temp file, rename) on a config watched with signal:HUP fires once."""
    spec = WatchSpec(path=str(app / "config.yaml"), action="signal", signal=int(signal.SIGHUP))

    async def scenario() -> None:
        async with watching(spec) as (watcher, fires):
            sh("sed", "-i", "s/8080/9090/", str(app / "config.yaml"))
            await fires.wait(1)
            await settle(watcher)
            assert [call[0] for call in fires.calls] == [spec]
            assert path_status(watcher)["action"] == "signal:HUP"

    run(scenario)


def test_touch_fires_nothing(app: Path) -> None:
    """`touch` (what an up-to-date `go build` does: ATTRIB only) fires nothing."""

    async def scenario() -> None:
        async with watching(swap(app / "server"), swap(app / "config.yaml")) as (watcher, fires):
            sh("touch", str(app / "server"), str(app / "config.yaml"))
            await settle(watcher)
            assert len(fires) == 0
            assert path_status(watcher, 0)["decision"] == "ignored: touch only"
            assert path_status(watcher, 1)["decision"] == "ignored: touch only"

    run(scenario)


def test_identical_bytes_renamed_over_fire_nothing(app: Path) -> None:
    """An identical rebuild renamed into place (new inode, same bytes) fires nothing."""

    async def scenario() -> None:
        async with watching(swap(app / "server")) as (watcher, fires):
            inode = (app / "server").stat().st_ino
            replace(app / "server", FALSE, 0o755)
            await settle(watcher)
            assert (app / "server").stat().st_ino != inode
            assert len(fires) == 0
            assert path_status(watcher)["decision"] == "ignored: identical content"

    run(scenario)


def test_go_build_output_fires_once(app: Path, tmp_path: Path) -> None:
    """`go build -o`: the -go-tmp-umask probe is ignored, the rename fires once."""
    out = app / "server"
    work = tmp_path / "go-build" / "b001" / "exe"
    work.mkdir(parents=True)

    async def scenario() -> None:
        async with watching(swap(out)) as (watcher, fires):
            probe = out.with_name(out.name + "-go-tmp-umask")
            write(probe, b"", 0o777)
            probe.unlink()
            write(work / "a.out", TRUE, 0o755)
            os.rename(work / "a.out", out)
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1
            os.utime(out)  # the next build is up to date: it only touches the mtime
            await settle(watcher)
            assert len(fires) == 1

    run(scenario)


def test_reused_inode_number_still_fires(app: Path) -> None:
    """Delete then create reuses the inode number at once (ext4); the content still fires."""
    config = app / "config.yaml"

    async def scenario() -> None:
        async with watching(swap(config)) as (watcher, fires):
            inode = config.stat().st_ino
            config.unlink()
            write(config, b"port: 9090\n")
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1
            if mountinfo.fs_type(str(app))[0] in ("ext4", "xfs"):  # these hand the number out again
                assert config.stat().st_ino == inode

    run(scenario)


def test_incomplete_elf_waits_until_complete(app: Path) -> None:
    """A half-written binary is not fired (warning, state waiting) until it is complete."""
    server = app / "server"
    half = len(TRUE) // 2

    async def scenario() -> None:
        async with watching(swap(server)) as (watcher, fires):
            write(server, TRUE[:half], 0o755)
            await eventually(
                lambda: path_status(watcher)["decision"] == "waiting: incomplete binary",
                "the incomplete binary to be noticed",
            )
            await settle(watcher)
            assert len(fires) == 0
            assert path_status(watcher)["state"] == "waiting"
            with server.open("ab") as handle:
                handle.write(TRUE[half:])
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1

    with capture_logs() as logs:
        run(scenario)
    waiting = [
        entry
        for entry in logs
        if entry["event"] == "watch_waiting" and entry["cause"] == "incomplete_binary"
    ]
    assert waiting
    assert waiting[0]["log_level"] == "warning"
    assert str(server) in str(waiting[0]["reason"])


def test_write_unseen_by_inotify_restarts_the_settle_interval(app: Path) -> None:
    """A binary that grows after its change was seen (poll mode: no events) is only fired
    once its stat held still for a whole settle interval, with the final bytes."""
    server = app / "server"
    head, tail = b"#!/bin/sh\necho hel", b"lo\nexit 0\n"

    async def scenario() -> None:
        async with watching(swap(server), mode="poll", debounce=0.2, poll=0.5) as (watcher, fires):
            write(server, head, 0o755)
            await eventually(lambda: path_status(watcher)["state"] == "debouncing", "the tick")
            with server.open("ab") as handle:  # before the quiet period ends, and no tick
                handle.write(tail)
            await fires.wait(1)
            assert len(fires) == 1
            digest = hashlib.sha256(head + tail).hexdigest()
            assert fires.calls[0][1] == f"content changed (sha256 {digest[:12]}…)"

    with capture_logs() as logs:
        run(scenario)
    decisions = [(e["event"], e["cause"]) for e in logs if e.get("path") == str(server)]
    assert decisions == [("watch_waiting", "still_being_written"), ("watch_fired", "fired")]


def test_modify_only_change_fires(app: Path) -> None:
    """A change seen only as MODIFY (no create, rename or close, as some Docker Desktop
    bind mounts deliver) still fires."""
    config = app / "config.yaml"
    fd = os.open(config, os.O_WRONLY)  # opened before the watcher: no OPEN, no CLOSE later

    async def scenario() -> None:
        async with watching(swap(config)) as (watcher, fires):
            os.pwrite(fd, b"port: 9999\n", 0)
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1

    try:
        run(scenario)
    finally:
        os.close(fd)


def test_running_binary_cannot_be_copied_over(app: Path) -> None:
    """`cp` over a running binary fails with ETXTBSY and fires nothing; a rename works."""
    server = app / "server"
    write(server, Path(SLEEP).read_bytes(), 0o755)
    child = subprocess.Popen([str(server), "60"])

    async def scenario() -> None:
        async with watching(swap(server)) as (watcher, fires):
            copy = sh("cp", TRUE_PATH, str(server), check=False)
            assert copy.returncode != 0
            assert "Text file busy" in copy.stderr
            await settle(watcher)
            assert len(fires) == 0
            replace(server, TRUE, 0o755)
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1
            assert sh(str(server)).returncode == 0

    try:
        run(scenario)
    finally:
        child.kill()
        child.wait()


def test_exec_of_a_file_open_for_writing_fails_with_etxtbsy(tmp_path: Path) -> None:
    """A binary still open for writing cannot be exec'd (ETXTBSY): spawn must retry."""
    program = tmp_path / "server"
    fd = os.open(program, os.O_WRONLY | os.O_CREAT, 0o755)
    try:
        os.write(fd, TRUE)
        with pytest.raises(OSError, match="Text file busy") as raised:
            subprocess.run([str(program)], check=False)
        assert raised.value.errno == errno.ETXTBSY
    finally:
        os.close(fd)
    assert subprocess.run([str(program)], check=False).returncode == 0


# ---------------------------------------------------------------------- Kubernetes


def kubelet_volume(root: Path, content: bytes) -> Path:
    """The layout kubelet writes for a ConfigMap volume; returns the visible file."""
    first = root / "..2026_01_01_00_00_00.000000001"
    first.mkdir()
    write(first / "config.yaml", content)
    os.symlink(first.name, root / "..data")
    os.symlink("..data/config.yaml", root / "config.yaml")
    return root / "config.yaml"


def kubelet_update(root: Path, content: bytes, stamp: str) -> None:
    """kubelet's update: a new timestamped directory, ..data_tmp renamed over ..data."""
    old = os.readlink(root / "..data")
    new = root / f"..2026_01_01_00_00_00.{stamp}"
    new.mkdir()
    write(new / "config.yaml", content)
    os.symlink(new.name, root / "..data_tmp")
    os.rename(root / "..data_tmp", root / "..data")
    shutil.rmtree(root / old)


def test_kubelet_configmap_data_swap_fires_once(tmp_path: Path) -> None:
    """A ConfigMap update (no event names config.yaml, only ..data) fires exactly once."""
    volume = tmp_path / "config"
    volume.mkdir()
    visible = kubelet_volume(volume, b"level: info\n")
    spec = WatchSpec(path=str(visible), action="signal", signal=int(signal.SIGHUP))

    async def scenario() -> None:
        async with watching(spec) as (watcher, fires):
            kubelet_update(volume, b"level: debug\n", "000000002")
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1
            kubelet_update(volume, b"level: debug\n", "000000003")  # same data again
            await settle(watcher)
            assert len(fires) == 1
            assert path_status(watcher)["decision"] == "ignored: identical content"

    run(scenario)


@needs_root
def test_single_file_bind_mount_goes_stale(tmp_path: Path) -> None:
    """A single-file bind mount (a ConfigMap subPath) keeps the old inode (st_nlink == 0)
    after its source is replaced: nothing fires and the watcher says to mount the directory."""
    volume = tmp_path / "volume"
    volume.mkdir()
    kubelet_volume(volume, b"level: info\n")
    container = tmp_path / "container"
    container.mkdir()
    mount_point = container / "config.yaml"
    write(mount_point, b"")
    source = os.path.realpath(volume / "config.yaml")

    async def scenario() -> None:
        async with watching(swap(mount_point), mode="auto", poll=0.05) as (watcher, fires):
            kubelet_update(volume, b"level: debug\n", "000000002")
            await eventually(lambda: path_status(watcher)["state"] == "stale", "stale")
            await settle(watcher)
            assert mount_point.read_bytes() == b"level: info\n"
            assert os.stat(mount_point).st_nlink == 0
            assert len(fires) == 0

    with mounted(mount_point, "--bind", source), capture_logs() as logs:
        run(scenario)
    stale = [e for e in logs if e["event"] == "watch_file_unlinked"]
    assert stale
    assert stale[0]["log_level"] == "warning"
    assert stale[0]["path"] == str(mount_point)
    assert "st_nlink == 0" in stale[0]["hint"]
    assert "mount the directory instead" in stale[0]["hint"]


# ---------------------------------------------------------------------- re-arming


def test_directory_deleted_and_recreated_is_rearmed(app: Path) -> None:
    """The watched directory deleted (the ancestor is watched) then recreated: one fire."""
    config = app / "config.yaml"

    async def scenario() -> None:
        async with watching(swap(config)) as (watcher, fires):
            shutil.rmtree(app)
            await eventually(lambda: path_status(watcher)["state"] == "missing", "missing")
            os.mkdir(app)
            write(config, b"port: 9090\n")
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1
            assert watcher.mode == "inotify"
            write(config, b"port: 7070\n")  # and the new directory is watched
            await fires.wait(2)

    run(scenario)


def test_directory_missing_several_levels_comes_back(tmp_path: Path) -> None:
    """A path whose directories do not exist yet fires once they and the file appear."""
    config = tmp_path / "a" / "b" / "c" / "config.yaml"

    async def scenario() -> None:
        async with watching(swap(config)) as (watcher, fires):
            assert path_status(watcher)["state"] == "missing"
            (tmp_path / "a" / "b").mkdir(parents=True)
            await settle(watcher)
            (tmp_path / "a" / "b" / "c").mkdir()
            write(config, b"x: 1\n")
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1

    run(scenario)


def test_directory_renamed_away_is_rearmed(app: Path, tmp_path: Path) -> None:
    """The directory moved away (MOVE_SELF) and a new one put in its place: one fire."""
    config = app / "config.yaml"

    async def scenario() -> None:
        async with watching(swap(config)) as (watcher, fires):
            os.rename(app, tmp_path / "old-app")
            os.mkdir(app)
            write(config, b"port: 9090\n")
            await fires.wait(1)
            await settle(watcher)
            write(tmp_path / "old-app" / "config.yaml", b"port: 1\n")  # the old one: ignored
            await settle(watcher)
            assert len(fires) == 1

    run(scenario)


@needs_root
def test_tmpfs_mounted_over_directory_is_noticed_in_auto_mode(app: Path) -> None:
    """A tmpfs over the watched directory sends no event; auto's stat net notices it, logs
    watch_mount_changed and fires for the new content; unmounting fires back."""
    config = app / "config.yaml"

    async def scenario() -> None:
        async with watching(swap(config), mode="auto", poll=0.05) as (watcher, fires):
            with mounted(app, "-t", "tmpfs", "tmpfs"):
                write(config, b"port: 1111\n")
                await fires.wait(1)
                await settle(watcher)
                assert len(fires) == 1
            await fires.wait(2)  # UNMOUNT + IGNORED: back to the original file
            await settle(watcher)
            assert len(fires) == 2
            assert config.read_bytes() == b"port: 8080\n"

    with capture_logs() as logs:
        run(scenario)
    changed = [e for e in logs if e["event"] == "watch_mount_changed" and e["path"] == str(app)]
    assert len(changed) == 2
    assert all(e["log_level"] == "warning" for e in changed)


@needs_root
def test_mount_over_is_invisible_to_inotify_until_the_next_batch(tmp_path: Path) -> None:
    """In inotify mode a mount over a watched directory queues no event; the next batch
    (from any watched directory) re-checks (st_dev, st_ino) and re-watches it."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write(first / "config.yaml", b"a: 1\n")
    write(second / "config.yaml", b"b: 1\n")

    async def scenario() -> None:
        specs = (swap(first / "config.yaml"), swap(second / "config.yaml"))
        async with watching(*specs) as (watcher, fires):
            before = resolved(first)
            with mounted(first, "-t", "tmpfs", "tmpfs"):
                after = resolved(first)
                assert after[0] == before[0]  # realpath returns the same string...
                assert after[1] != before[1]  # ...while st_dev changed
                write(first / "config.yaml", b"a: 2\n")
                assert queued_bytes(watcher) == 0  # the old watch sees the hidden directory
                write(second / "unrelated.txt", b"")  # any batch triggers the re-check
                await fires.wait(1)
                await settle(watcher)
                assert [call[0].path for call in fires.calls] == [str(first / "config.yaml")]

    with capture_logs() as logs:
        run(scenario)
    assert any(e["event"] == "watch_mount_changed" and e["path"] == str(first) for e in logs)


def resolved(path: Path) -> tuple[str, int]:
    return os.path.realpath(path), os.stat(path).st_dev


@needs_root
def test_overlayfs_merged_path_changes_fire_once_each(tmp_path: Path) -> None:
    """On overlayfs, a change through the merged path (copy-up, then a rename) fires once each."""
    lower, upper, work, merged = (tmp_path / name for name in ("lower", "upper", "work", "merged"))
    for directory in (lower, upper, work, merged):
        directory.mkdir()
    write(lower / "config.yaml", b"port: 8080\n")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    config = merged / "config.yaml"

    async def scenario() -> None:
        async with watching(swap(config), mode="auto") as (watcher, fires):
            assert watcher.mode == "auto"
            write(config, b"port: 9090\n")  # copy-up of the lower file, then the write
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1
            assert (upper / "config.yaml").read_bytes() == b"port: 9090\n"
            replace(config, b"port: 7070\n")
            await fires.wait(2)
            await settle(watcher)
            assert len(fires) == 2

    with mounted(merged, "-t", "overlay", "overlay", "-o", options):
        assert mountinfo.fs_type(str(merged)) == ("overlay", str(merged))
        run(scenario)


# ---------------------------------------------------------------------- limits and modes


def test_blind_filesystem_falls_back_to_poll(
    app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On nfs4 (read from mountinfo) auto polls and says why; inotify mode refuses to start."""
    table = tmp_path / "mountinfo"
    table.write_text(
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        f"99 27 0:99 / {app} rw,relatime - nfs4 server:/export rw,vers=4.2\n"
    )
    monkeypatch.setattr(mountinfo, "MOUNTINFO", str(table))

    async def scenario() -> None:
        async with watching(swap(app / "config.yaml"), mode="auto", poll=0.05) as (watcher, fires):
            assert watcher.mode == "poll"
            assert watcher.fileno() is None
            assert f"{app} is on nfs4" in watcher.mode_reason
            replace(app / "config.yaml", b"port: 1\n")
            await fires.wait(1)
        with pytest.raises(WatchError, match=r"nfs4.*--watch-mode poll"):
            await Watcher([swap(app / "config.yaml")], mode="inotify", on_change=Fires()).start()

    run(scenario)


def test_fs_type_parses_mountinfo_and_blind_types(tmp_path: Path) -> None:
    """Longest mount point wins, octal escapes are decoded, FUSE and network types are blind."""
    spaced, share = tmp_path / "host files", tmp_path / "host"
    (spaced / "app").mkdir(parents=True)
    (share / "x").mkdir(parents=True)
    (tmp_path / "hostile").mkdir()
    table = tmp_path / "mountinfo"
    escaped = str(spaced).replace(" ", "\\040")
    table.write_text(
        "1 0 0:1 / / rw - ext4 /dev/vda rw\n"
        f"2 1 0:2 / {escaped} rw shared:1 - fuse.grpcfuse grpcfuse rw\n"
        f"3 1 0:3 / {share} rw - virtiofs share rw\n"
    )
    info = str(table)
    assert mountinfo.fs_type(str(spaced / "app" / "server"), info) == ("fuse.grpcfuse", str(spaced))
    assert mountinfo.fs_type(str(share / "x" / "missing" / "f"), info) == ("virtiofs", str(share))
    assert mountinfo.fs_type(str(tmp_path / "hostile"), info) == ("ext4", "/")
    for blind in ("nfs", "nfs4", "cifs", "smb3", "fuse", "fuse.sshfs", "fuseblk", "virtiofs", "9p"):
        assert fsfacts.is_blind(blind), blind
    for fine in ("ext4", "xfs", "btrfs", "tmpfs", "overlay"):
        assert not fsfacts.is_blind(fine), fine


@needs_root
def test_max_user_watches_exhausted_falls_back_to_poll(app: Path) -> None:
    """ENOSPC from add_watch: auto polls and names the sysctl and its value; inotify raises."""
    config = app / "config.yaml"

    async def scenario() -> None:
        with sysctl("max_user_watches", 0):
            auto = Watcher(
                [swap(config)],
                mode="auto",
                debounce=DEBOUNCE,
                poll_interval=0.05,
                on_change=(fires := Fires()),
            )
            await auto.start()
            with pytest.raises(WatchError) as raised:
                await Watcher([swap(config)], mode="inotify", on_change=Fires()).start()
        try:
            assert auto.mode == "poll"
            assert auto.fileno() is None
            assert auto.mode_reason == "fs.inotify.max_user_watches=0 exhausted (ENOSPC)"
            message = str(raised.value)
            assert "fs.inotify.max_user_watches=0" in message
            assert "sysctl -w fs.inotify.max_user_watches=" in message
            assert "\n" not in message
            replace(config, b"port: 1\n")
            await fires.wait(1)
        finally:
            await auto.close()

    with capture_logs() as logs:
        run(scenario)
    watching_line = next(e for e in logs if e["event"] == "watching")
    assert watching_line["mode"] == "poll"
    assert "max_user_watches" in str(watching_line["reason"])


@needs_root
def test_enospc_while_rearming_switches_to_poll(app: Path) -> None:
    """A running auto watcher refused a re-arm (ENOSPC) switches to poll and still fires."""
    config = app / "config.yaml"

    async def scenario() -> None:
        async with watching(swap(config), mode="auto", poll=0.05) as (watcher, fires):
            with sysctl("max_user_watches", 0):
                shutil.rmtree(app)
                await eventually(lambda: watcher.mode == "poll", "the switch to poll")
            assert "max_user_watches" in watcher.mode_reason
            assert watcher.fileno() is None
            os.mkdir(app)
            write(config, b"port: 9090\n")
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1

    run(scenario)


@needs_root
def test_max_user_instances_exhausted_falls_back_to_poll(app: Path) -> None:
    """EMFILE at init: auto polls naming fs.inotify.max_user_instances; inotify raises."""

    async def scenario() -> None:
        spec = swap(app / "config.yaml")
        with sysctl("max_user_instances", 0):
            async with watching(spec, mode="auto") as (watcher, _):
                assert watcher.mode == "poll"
                assert watcher.mode_reason == "fs.inotify.max_user_instances=0 reached (EMFILE)"
            with pytest.raises(WatchError, match="max_user_instances=0 reached"):
                await Watcher([spec], mode="inotify", on_change=Fires()).start()

    run(scenario)


@needs_root
def test_queue_overflow_rescans_and_loses_nothing(app: Path) -> None:
    """A burst past max_queued_events gives IN_Q_OVERFLOW: a rescan still finds the change."""
    config = app / "config.yaml"

    async def scenario() -> None:
        with sysctl("max_queued_events", 16):
            watcher = Watcher(
                [swap(config)], mode="inotify", debounce=DEBOUNCE, on_change=(fires := Fires())
            )
            await watcher.start()  # the queue limit is taken when the instance is created
        try:
            for number in range(64):
                write(app / f"noise-{number}", b"")
            replace(config, b"port: 9090\n")  # its events are past the limit: dropped
            await fires.wait(1)
            await settle(watcher)
            assert len(fires) == 1
            assert watcher.status()["rescans"] == 1
        finally:
            await watcher.close()

    with capture_logs() as logs:
        run(scenario)
    rescans = [e for e in logs if e["event"] == "watch_rescan"]
    assert "max_queued_events" in str(rescans[0]["reason"])


def test_non_utf8_name_does_not_lose_the_batch(app: Path) -> None:
    """A file named b"\\xff\\xfe" in the same batch as a change, and a watched path that is
    not UTF-8, are both handled."""
    odd = os.fsdecode(os.fsencode(str(app)) + b"/conf\xff.yaml")
    write(Path(odd), b"a: 1\n")

    async def scenario() -> None:
        async with watching(swap(app / "config.yaml"), swap(Path(odd))) as (watcher, fires):
            fd = os.open(os.fsencode(str(app)) + b"/\xff\xfe", os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
            replace(app / "config.yaml", b"port: 1\n")
            await fires.wait(1)
            write(Path(odd), b"a: 2\n")
            await fires.wait(2)
            await settle(watcher)
            assert sorted(call[0].path for call in fires.calls) == sorted(
                [str(app / "config.yaml"), odd]
            )
            assert watcher.status()["rescans"] == 0

    run(scenario)


def test_poll_mode_detects_changes_and_ignores_touch(app: Path) -> None:
    """Poll mode has no inotify fd, fires on a content change and not on a touch."""
    config = app / "config.yaml"

    async def scenario() -> None:
        async with watching(swap(config), mode="poll", poll=0.02) as (watcher, fires):
            assert watcher.fileno() is None
            assert watcher.mode_reason == "--watch-mode poll"
            replace(config, b"port: 1\n")
            await fires.wait(1)
            os.utime(config, ns=(1, 1))
            await eventually(
                lambda: path_status(watcher)["decision"] == "ignored: touch only", "the touch"
            )
            assert len(fires) == 1

    run(scenario)


# ---------------------------------------------------------------------- the fd and its traps


def test_inotify_fd_is_cloexec_and_nonblocking(app: Path) -> None:
    """The one inotify fd is close-on-exec and non-blocking."""

    async def scenario() -> None:
        async with watching(swap(app / "server"), swap(app / "config.yaml")) as (watcher, _):
            fd = watcher.fileno()
            assert fd is not None
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
            assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
            inotify_fds = [
                name
                for name in os.listdir("/proc/self/fd")
                if _readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify"
            ]
            assert inotify_fds == [str(fd)]  # one instance for both paths

    run(scenario)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_child_does_not_inherit_the_inotify_fd(app: Path) -> None:
    """A fork+exec child (even with close_fds=False) does not see the inotify fd."""

    async def scenario() -> None:
        async with watching(swap(app / "server"), mode="auto") as (watcher, _):
            assert watcher.fileno() is not None
            listing = sh_keep_fds("ls", "-l", "/proc/self/fd")
            assert "inotify" not in listing
            assert "anon_inode:inotify" in _readlink(f"/proc/self/fd/{watcher.fileno()}")

    run(scenario)


def sh_keep_fds(*argv: str) -> str:
    return subprocess.run(argv, close_fds=False, capture_output=True, text=True, check=True).stdout


def test_close_closes_the_fd_exactly_once(app: Path) -> None:
    """close() is idempotent and never closes a file that reused the inotify fd's number."""

    async def scenario() -> None:
        watcher = Watcher([swap(app / "server")], mode="inotify", on_change=Fires())
        await watcher.start()
        fd = watcher.fileno()
        await watcher.close()
        assert watcher.fileno() is None
        reused = os.open(os.devnull, os.O_RDONLY)
        try:
            assert reused == fd
            await watcher.close()
            os.fstat(reused)  # still open
        finally:
            os.close(reused)

    run(scenario)


def test_nothing_reaches_stdout(app: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """No event is printed to stdout and pyinotify's own stderr handler is gone."""
    configure("json", "info")  # bind the log output to the stderr capfd just installed

    async def scenario() -> None:
        async with watching(swap(app / "config.yaml")) as (watcher, fires):
            replace(app / "config.yaml", b"port: 1\n")
            await fires.wait(1)
            await settle(watcher)

    run(scenario)
    out, err = capfd.readouterr()
    assert out == ""
    assert '"event": "watch_fired"' in err
    handlers = logging.getLogger("pyinotify").handlers
    assert not any(isinstance(h, logging.StreamHandler) for h in handlers)


def test_inotify_mode_has_no_wakeups_when_idle(app: Path) -> None:
    """Idle in inotify mode: no timer scheduled and no callback over 0.5 s; auto ticks."""

    async def scenario() -> None:
        async with watching(swap(app / "server"), swap(app / "config.yaml")) as (watcher, _):
            await settle(watcher)
            before = watcher.status()["wakeups"]
            await asyncio.sleep(0.5)  # the measurement window, not a synchronisation
            assert watcher.status()["wakeups"] == before
            assert watcher.status()["timers"] == 0
        async with watching(swap(app / "server"), mode="auto", poll=0.1) as (watcher, _):
            await asyncio.sleep(0.5)  # the measurement window: ticks counted over 0.5 s
            ticks = watcher.status()["wakeups"]
            assert isinstance(ticks, int)
            assert 2 <= ticks <= 6

    run(scenario)


def test_hashing_a_big_file_does_not_block_the_loop(tmp_path: Path) -> None:
    """A 64 MiB file is hashed in chunks: the loop never stalls for more than 100 ms."""
    big = tmp_path / "big.bin"
    write(big, os.urandom(1 << 20) * 64)

    async def scenario() -> None:
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
        async with watching(swap(big), debounce=0.0) as (_, fires):
            with big.open("r+b") as handle:
                handle.write(b"changed")
            await fires.wait(1)
        done.set()
        await beat
        assert max(gaps) < 0.1

    run(scenario)


@pytest.mark.slow
def test_thousand_change_cycles_keep_the_fd_count_flat(app: Path) -> None:
    """1000 change-to-fire cycles leave this process's fd count where it started."""
    config = app / "config.yaml"

    async def scenario() -> None:
        async with watching(swap(config), debounce=0.001) as (watcher, fires):
            before = len(os.listdir("/proc/self/fd"))
            for cycle in range(1000):
                replace(config, b"cycle %d\n" % cycle)
                await fires.wait(cycle + 1)
            await settle(watcher)
            assert len(fires) == 1000
            assert len(os.listdir("/proc/self/fd")) == before

    started = time.monotonic()
    run(scenario)
    assert time.monotonic() - started < 20
