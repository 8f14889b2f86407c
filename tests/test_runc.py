"""hotswapd as PID 1 of a real OCI container, run by runc (issue 6, item 4).

No image is downloaded: the container's rootfs is an overlay whose lower layer is a
read-only bind of this machine's own `/` and whose upper layer is a tmpfs, so the venv and
the repository are visible at their usual paths; what a test puts into the "image" (the Go
server at /app/server, config files) goes into the upper layer before the start. The
bundle's config.json is `runc spec` edited here: the host's network namespace is shared
(the test reaches the server on loopback), PID 1 gets Docker's default capabilities, the
runtime mounts a tmpfs on /tmp, and /proc, /dev, /sys come from the spec's defaults.

Teardown always runs: `runc delete --force`, the container's cgroups, then the mounts in
reverse order; the fixture fails the test if a mount or a cgroup is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Hotswapd
from tests.helpers import REPO, wait_until
from tests.load import Load

RUNC = shutil.which("runc") or shutil.which("runc", path="/usr/sbin:/sbin")

pytestmark = [
    pytest.mark.runc,
    pytest.mark.skipif(RUNC is None, reason="runc is not installed (Debian: apt-get install runc)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc, overlayfs and bind mounts need root"),
]

PYTHON = sys.executable  # the venv's python: the container's rootfs is this machine's /
SERVER = "/app/server"  # where the image has the Go server
CHILD = str(REPO / "tests" / "children" / "child.py")
HOG = str(REPO / "tests" / "runc" / "hog.py")
# What `docker run` gives PID 1 by default (no CAP_SYS_ADMIN, no CAP_SYS_RESOURCE).
DOCKER_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
GATED = ["--settle", "0", "--drain-timeout", "5s", "--health", "/healthz", "--health-timeout", "5s"]
STOP_TIMEOUT = 5.0


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


def is_mount_point(path: Path) -> bool:
    with open("/proc/self/mountinfo") as handle:
        return any(line.split()[4] == str(path) for line in handle)


def cgroup_version() -> str:
    kind = sh("stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip()
    return "v2" if kind == "cgroup2fs" else f"v1 (/sys/fs/cgroup is {kind})"


def cgroup_dirs_of(pid: int) -> list[Path]:
    """The directories of every cgroup `pid` is in (each v1 hierarchy, or the v2 one)."""
    found = []
    with open(f"/proc/{pid}/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers:
                bases = [Path("/sys/fs/cgroup") / controllers.replace("name=", "")]
            else:
                bases = [Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")]
            for base in bases:
                if (base / "cgroup.procs").exists():
                    found.append(base / path.lstrip("/"))
                    break
    return found


def nofile_limit() -> int:
    """RLIMIT_NOFILE for the container: this host's hard limit. Above it, setrlimit in the
    container's init needs CAP_SYS_RESOURCE, which a sandboxed root may lack, and `runc run`
    then fails ("error setting rlimit type 7: operation not permitted")."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


class Container:
    """One runc container: the overlay rootfs, the bundle, `runc run`, and its teardown."""

    def __init__(self, base: Path) -> None:
        self.id = f"hotswapd-test-{uuid.uuid4().hex[:12]}"
        self.lower, self.layers, self.merged = base / "lower", base / "layers", base / "merged"
        self.bundle, self.state = base / "bundle", base / "runc-state"
        self.cgroups: list[Path] = []  # learned from the container's init once it runs
        self.mounts: list[Path] = []
        self.run: RuncRun | None = None
        for path in (self.lower, self.layers, self.merged, self.bundle, self.state):
            path.mkdir(parents=True)

    # ------------------------------------------------------------ the image

    def mount(self, target: Path, *options: str) -> None:
        sh("mount", *options, str(target))
        self.mounts.append(target)

    def build_rootfs(self) -> None:
        self.mount(self.lower, "--bind", "/")
        sh("mount", "-o", "remount,bind,ro", str(self.lower))
        self.mount(self.layers, "-t", "tmpfs", "-o", "size=256m,mode=755", "tmpfs")
        upper, work = self.layers / "upper", self.layers / "work"
        upper.mkdir()
        work.mkdir()
        # The image's /tmp is empty but for what a test puts there (not this host's /tmp).
        (upper / "tmp").mkdir(mode=0o1777)
        os.setxattr(upper / "tmp", "trusted.overlay.opaque", b"y")
        options = f"lowerdir={self.lower},upperdir={upper},workdir={work}"
        self.mount(self.merged, "-t", "overlay", "-o", options, "overlay")

    def put(self, inside: str, src: Path | None = None, text: str = "") -> None:
        """Put a file into the image, or replace one by a rename as a build does."""
        target = self.merged / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        new = target.with_name(target.name + ".new")
        if src is not None:
            shutil.copy2(src, new)
        else:
            new.write_text(text)
        os.replace(new, target)

    # ------------------------------------------------------------ the bundle

    def write_config(self, args: list[str], memory_limit: int | None = None) -> None:
        sh(str(RUNC), "spec", "--bundle", str(self.bundle))
        path = self.bundle / "config.json"
        spec: dict[str, Any] = json.loads(path.read_text())
        process = spec["process"]
        process.update(terminal=False, args=args, env=[
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"PYTHONPATH={REPO}", "HOTSWAPD_LOG_FORMAT=json", "HOME=/root",
        ])  # fmt: skip
        process["capabilities"] = {kind: list(DOCKER_CAPS)
                                   for kind in ("bounding", "effective", "permitted")}  # fmt: skip
        nofile = nofile_limit()
        process["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]
        spec["root"] = {"path": str(self.merged), "readonly": False}
        spec["hostname"] = "hotswapd-runc"
        tmp = ["nosuid", "nodev", "mode=1777", "size=64m"]
        spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                               "options": tmp})  # fmt: skip
        if REPO.is_relative_to("/tmp"):
            # A checkout under /tmp (a CI clone) is hidden by that tmpfs: bring it back.
            spec["mounts"].append({"destination": str(REPO), "type": "bind",
                                   "source": str(REPO), "options": ["rbind", "ro"]})  # fmt: skip
        linux = spec["linux"]
        # No network namespace: the container shares the host's, loopback included.
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
        linux["cgroupsPath"] = f"hotswapd-test/{self.id}"  # relative: below the test's own
        if memory_limit is not None:
            linux["resources"]["memory"] = {"limit": memory_limit}
        path.write_text(json.dumps(spec, indent=2))

    def start(self, args: list[str], memory_limit: int | None = None) -> RuncRun:
        self.write_config(args, memory_limit)
        self.run = RuncRun(self)
        self.cgroups = cgroup_dirs_of(self.run.pid)
        return self.run

    # ------------------------------------------------------------ acting on it

    def runc(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(str(RUNC), "--root", str(self.state), *argv, check=check)

    def exec(self, *argv: str, caps: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """`runc exec`: the config's env and capabilities, plus `caps`."""
        return self.runc("exec", *(f"--cap={cap}" for cap in caps), self.id, *argv, check=False)

    def kill(self, sig: str) -> None:
        self.runc("kill", self.id, sig)

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in the container's memory cgroup."""
        for path in self.cgroups:
            for name in ("memory.oom_control", "memory.events"):  # cgroup v1, v2
                if (path / name).exists():
                    for line in (path / name).read_text().splitlines():
                        key, value = line.split()
                        if key == "oom_kill":
                            return int(value)
        raise AssertionError(f"no memory cgroup among {self.cgroups}")

    # ------------------------------------------------------------ teardown

    def destroy(self) -> None:
        self.runc("delete", "--force", self.id, check=False)
        if self.run is not None:
            self.run.reap()
        for path in self.cgroups:  # runc delete removes them; this is the safety net
            for parent in (path, path.parent):  # the container's, then hotswapd-test
                with contextlib.suppress(OSError):  # gone, or used by another container
                    parent.rmdir()
        for target in reversed(self.mounts):
            for _ in range(4):  # mounts stacked on the target, innermost first
                if not is_mount_point(target):
                    break
                if sh("umount", str(target), check=False).returncode != 0:
                    sh("umount", "-l", str(target), check=False)


class RuncRun(Hotswapd):
    """`runc run --keep ID` in the foreground, as `docker run` does: the container's stdio
    are its stdio (terminal false), and it exits with the container's status. It reads
    hotswapd's JSON log lines with `Hotswapd`'s methods; `pid` is hotswapd's host pid."""

    def __init__(self, container: Container) -> None:  # no super(): there is no unshare here
        self.container = container
        # --keep: the stopped container and its cgroups stay until `runc delete`, so a test
        # can still read the memory cgroup's OOM count after the exit.
        self.argv = [str(RUNC), "--root", str(container.state), "run", "--keep", "--bundle",
                     str(container.bundle), container.id]  # fmt: skip
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)  # fmt: skip
        self.pid1 = True
        self._read_output()
        self.pid = wait_until(self._init_pid, 15, lambda: f"the container to run\n{self.tail()}")

    def _init_pid(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"runc run exited {self.proc.returncode}\n{self.tail()}")
        state = self.container.runc("state", self.container.id, check=False)
        if state.returncode != 0:
            return None
        info = json.loads(state.stdout)
        return int(info["pid"]) if info.get("status") == "running" else None

    def signal(self, sig: int) -> None:
        self.container.kill(signal.Signals(sig).name)

    def reap(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Container]:
    made = Container(tmp_path / "runc")
    try:
        made.build_rootfs()
        yield made
    finally:
        made.destroy()
    left = [str(path) for path in made.cgroups if path.exists()]
    left += [str(path) for path in made.mounts if is_mount_point(path)]
    assert left == [], f"left behind: {left}"


def hotswapd(*options: str, program: tuple[str, ...] = (SERVER,)) -> list[str]:
    return [PYTHON, "-m", "hotswapd", "--listen", "http=tcp://127.0.0.1:0", *options,
            "--stop-timeout", f"{STOP_TIMEOUT:g}s", "--", *program]  # fmt: skip


def answered_by(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return str(response.headers.get("X-Pid", ""))


def flowing(load: Load, beyond: int) -> bool:
    return load.count() > beyond


def start_server(container: Container, *options: str) -> tuple[RuncRun, int]:
    run = container.start(hotswapd(*options))
    port = run.port()
    run.wait_stdout("ready pid=")
    run.wait_event("supervising")  # signal handlers are in
    return run, port


# ----------------------------------------------------------------------------- tests


def test_usr2_from_runc_kill_swaps_with_zero_failures(container: Container,
                                                      go_server: Any) -> None:  # fmt: skip
    """`runc kill ID USR2` swaps the Go server under keep-alive load, 0 failed requests;
    each swap's new pid answers. The binary is replaced in the container's layer first, as
    a rebuild would, so the responding version changes too."""
    container.put(SERVER, go_server("v1"))
    run, port = start_server(container, *GATED)
    pids = [str(run.wait_event("spawned")["pid"])]
    with Load(port, connections=6) as load:
        for index in range(1, 5):
            container.put(SERVER, go_server(f"v{index % 2 + 1}"))
            container.kill("USR2")
            outcome = run.wait_event("swap_finished", count=index, timeout=30)
            assert outcome["outcome"] == "committed", outcome
            pids.append(str(outcome["active_pid"]))
            assert answered_by(port) == pids[-1]
            wait_until(partial(flowing, load, load.count() + 50), 10, "load still flowing")
        result = load.stop()
    print(f"\nrunc swap: 4 swaps, {result.ok} requests, {len(result.failures)} failed, "
          f"versions {result.versions}, pids {pids}")  # fmt: skip
    assert result.failures == []
    assert result.ok > 400
    assert len(set(pids)) == 5
    assert set(result.versions) == {"v1", "v2"}
    assert set(pids) <= set(result.pids)


def test_term_from_runc_kill_stops_within_grace(container: Container, go_server: Any) -> None:
    """`runc kill ID TERM`: the Go server drains and `runc run` exits 0, well within
    --stop-timeout. PID 1 has the open-files limit the config gave it."""
    container.put(SERVER, go_server("v1"))
    run, _ = start_server(container, *GATED)
    limits = Path(f"/proc/{run.pid}/limits").read_text().splitlines()
    nofile = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
    assert nofile == [str(nofile_limit())] * 2
    sent = time.monotonic()
    container.kill("TERM")
    code = run.wait(STOP_TIMEOUT + 10)
    elapsed = time.monotonic() - sent
    print(f"\nrunc stop: exit {code} after {elapsed * 1000:.0f} ms, --stop-timeout {STOP_TIMEOUT}")
    assert code == 0, run.tail()
    assert run.wait_event("stopped")["exit_code"] == 0
    assert elapsed < STOP_TIMEOUT


def test_term_ignored_is_killed_after_stop_timeout(container: Container) -> None:
    """A child that ignores TERM is SIGKILLed after --stop-timeout 500ms: `runc run` exits 137."""
    run = container.start([PYTHON, "-m", "hotswapd", "--stop-timeout", "500ms", "--",
                           PYTHON, CHILD, "--ignore-term"])  # fmt: skip
    run.wait_stdout("ready (pid:")
    run.wait_event("supervising")
    sent = time.monotonic()
    container.kill("TERM")
    run.wait_stdout("signal SIGTERM")  # forwarded, and ignored
    code = run.wait(15)
    elapsed = time.monotonic() - sent
    print(f"\nrunc stop, TERM ignored: exit {code} after {elapsed * 1000:.0f} ms")
    assert code == 137, run.tail()
    assert run.wait_event("stopped")["exit_code"] == 137
    assert 0.5 <= elapsed < 5


def test_oom_killed_child_gives_137(container: Container) -> None:
    """Under a 64 MiB cgroup memory limit a growing child is OOM-killed; hotswapd (PID 1)
    is not the victim: it logs the SIGKILL and exits 137, and the kernel killed one process.

    The child grows only once hotswapd is idle. A child that allocates at once (the Go
    server with -X main.allocMiB=200) races hotswapd's own start-up imports: the kernel
    kills the child, then, in about half the runs, hotswapd too, a few ms later, while the
    child's memory is still being freed. `runc run` exits 137 either way, but then nothing
    says why (no child_exited, no stopped)."""
    run = container.start(hotswapd(program=(PYTHON, HOG)), memory_limit=64 << 20)
    run.wait_stdout("ready")
    run.wait_event("supervising")
    container.kill("HUP")  # forwarded to the child, which starts growing
    code = run.wait(30)
    kills = container.oom_kills()
    exited = run.events("child_exited")
    print(f"\nrunc OOM (cgroup {cgroup_version()}): exit {code}, {kills} OOM kill(s), {exited}")
    assert code == 137, run.tail()
    assert run.stdout_matching(lambda line: line == "growing")
    assert "SIGKILL" in str(run.wait_event("child_exited")["status"])
    assert run.wait_event("stopped")["exit_code"] == 137  # hotswapd lived to say so
    assert kills == 1  # the child, and only the child


def test_doctor_reports_tmpfs_hiding_watched_path(container: Container, go_server: Any) -> None:
    """The image has /tmp/cfg/app.conf and the runtime's tmpfs on /tmp hides it: `hotswapd
    doctor`, run in the container with the entrypoint's options, names what is hidden.

    Looking underneath a mount needs CAP_SYS_ADMIN (given to this exec only); with Docker's
    default capabilities doctor cannot look and says only that a tmpfs is on /tmp."""
    container.put(SERVER, go_server("v1"))
    container.put("/tmp/cfg/app.conf", text="from the image\n")
    watch = ["--watch", "/tmp/cfg/app.conf=signal:HUP"]
    start_server(container, *watch)
    doctor = [PYTHON, "-m", "hotswapd", "doctor", *watch, "--", SERVER]
    result = container.exec(*doctor, caps=("CAP_SYS_ADMIN",))
    print("\ndoctor in the container:\n" + result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    assert "ok    init: PID 1 is hotswapd" in result.stdout
    hidden = [line for line in lines if "the tmpfs mount on /tmp hides" in line]
    assert hidden, result.stdout + result.stderr
    assert hidden[0].startswith("warn  watch /tmp/cfg/app.conf: ")
    assert "hides 1 entry underneath (cfg)" in hidden[0]


def test_watcher_warns_when_tmpfs_is_mounted_over_watched_dir(container: Container,
                                                              go_server: Any) -> None:  # fmt: skip
    """A tmpfs mounted over the watched directory while hotswapd runs (`runc exec ... mount`):
    the watcher logs a `watch_mount_changed` warning for that directory."""
    container.put(SERVER, go_server("v1"))
    container.put("/srv/cfg/app.conf", text="from the image\n")
    run, port = start_server(container, "--watch", "/srv/cfg/app.conf=signal:HUP",
                             "--poll-interval", "100ms")  # fmt: skip
    watching = run.wait_event("watching")
    mounted = container.exec("mount", "-t", "tmpfs", "tmpfs", "/srv/cfg", caps=("CAP_SYS_ADMIN",))
    assert mounted.returncode == 0, mounted.stderr
    warning = wait_until(
        lambda: [
            e for e in run.events("watch_mount_changed", path="/srv/cfg") if e["level"] == "warning"
        ],
        10,
        lambda: (
            f"the watcher's mount warning (watch mode {watching['mode']}: "
            f"{watching['reason']})\n{run.tail()}"
        ),
    )
    print(f"\nwatcher: {warning[0]}")
    assert warning[0]["path"] == "/srv/cfg"
    assert answered_by(port)  # still serving
