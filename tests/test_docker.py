"""The example image in a real Docker engine, checked from outside as its users would.

docker/Dockerfile is built from a clean copy of the checkout (the files git knows, as
they are in the work tree; the context is the repository root), with the stand-in base
images scripts/docker.sh imports when no registry is reachable. Then containers run
with `--network none` and the test reaches them through their network namespace (its
worker threads `setns` into it), so no host port is ever taken or shared: all traffic
stays on the container's own loopback.

Skipped only when no Docker engine answers here; CI starts one (scripts/docker.sh).
The image is built once per module and Docker's layer cache keeps rebuilds cheap.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import build_go_server, wait_until
from tests.load import Load

REPO = Path(__file__).resolve().parent.parent
IMAGE = "hotswapd-example:test"
MAX_IMAGE_BYTES = 60_000_000  # the budget: 60 MB, as `docker images` counts
HEALTHY_WITHIN_S = 40.0
# The stand-ins scripts/docker.sh builds; used only when they exist, else the
# Dockerfile's defaults (the real images) are pulled as for any user.
STAND_INS = {
    "BUILDER_IMAGE": "hotswapd-ci/debian:bookworm",
    "GO_IMAGE": "hotswapd-ci/golang:bookworm",
}
CLONE_NEWNET = 0x40000000
IMAGE_UID = 10001

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


# --------------------------------------------------------------------------- docker


def docker(
    *args: str, timeout: float = 60.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; a failure shows what docker said."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} → {done.returncode}\n{done.stderr[-3000:]}")
    return done


def docker_problem() -> str | None:
    """Why no container can run here, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI (CI installs docker.io and starts dockerd: scripts/docker.sh)"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=20)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "docker info timed out: the daemon does not answer"
    if info.returncode != 0:
        return (
            f"no Docker daemon answers (start one: bash scripts/docker.sh): {info.stderr.strip()}"
        )
    return None


def clean_context(dest: Path) -> Path:
    """The files git knows (tracked, or new and not ignored), copied as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """docker/Dockerfile built from a clean copy of the checkout; its size is printed."""
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    context = clean_context(tmp_path_factory.mktemp("context"))
    args = ["build", "--network", "host", "-f", "docker/Dockerfile", "--build-arg", "VERSION=v1"]
    for arg, stand_in in STAND_INS.items():
        if docker("image", "inspect", stand_in, check=False).returncode == 0:
            args += ["--build-arg", f"{arg}={stand_in}"]
    started = time.monotonic()
    # The classic builder: it honours --network host (apt and pip in the build) on a
    # daemon without bridge networking, where BuildKit would need an entitlement.
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    done = subprocess.run(["docker", *args, "-t", IMAGE, str(context)], capture_output=True,
                          text=True, timeout=1200, env=env)  # fmt: skip
    assert done.returncode == 0, (
        f"docker build failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    )
    size = int(docker("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    print(f"\n{IMAGE}: {size / 1e6:.1f} MB, built in {time.monotonic() - started:.0f} s")
    return IMAGE


class Container:
    """One running container, looked at from outside."""

    def __init__(self, name: str) -> None:
        self.name = name

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()

    @property
    def pid(self) -> int:
        """The host pid of the container's PID 1."""
        return int(self.inspect("{{.State.Pid}}"))

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def logs(self) -> str:
        done = docker("logs", self.name)
        return done.stdout + done.stderr

    def events(self, name: str) -> list[dict[str, Any]]:
        """hotswapd's JSON log events called `name` (the server's plain lines skipped)."""
        found = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == name:
                        found.append(event)
        return found

    def exec(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        as_user = ["-u", user] if user else []
        return docker("exec", *as_user, self.name, *argv, check=False)

    def get(self, path: str, port: int = 8080) -> tuple[int, dict[str, str], bytes]:
        """One HTTP GET to the container's own loopback, from inside its network namespace."""
        with netns(self.pid):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            finally:
                conn.close()

    def serving(self, port: int = 8080) -> bool:
        try:
            return self.get("/healthz", port)[0] == 200
        except OSError:
            return False

    def wait_serving(self, port: int = 8080, timeout: float = 30.0) -> None:
        """The server answers /healthz and hotswapd's control socket is up (it comes after)."""
        wait_until(lambda: self.serving(port) or not self.running(), timeout,
                   lambda: f"{self.name} serving on :{port}\n{self.logs()[-3000:]}")  # fmt: skip
        wait_until(lambda: self.events("control_listening") or not self.running(), timeout,
                   lambda: f"{self.name}'s control socket\n{self.logs()[-3000:]}")  # fmt: skip
        assert self.running(), f"{self.name} exited:\n{self.logs()[-3000:]}"

    def health(self) -> str:
        return self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def wait_healthy(self) -> None:
        """Healthy within 40 s, or fail with what the HEALTHCHECK printed."""
        wait_until(lambda: self.health() == "healthy" or not self.running(), HEALTHY_WITHIN_S,
                   lambda: f"healthy, is {self.health()!r}; the checks said: "
                   f"{self.inspect('{{json .State.Health.Log}}')[-1500:]}")  # fmt: skip
        assert self.health() == "healthy", self.logs()[-3000:]


@pytest.fixture
def run(image: str) -> Iterator[Callable[..., Container]]:
    """Start containers of the image (`run(*docker_run_options, *image_args)`), removed after."""
    names: list[str] = []
    volumes: list[str] = []

    def start(*options: str, args: tuple[str, ...] = (), volume: str | None = None) -> Container:
        name = f"hotswapd-test-{uuid.uuid4().hex[:10]}"
        names.append(name)
        if volume:
            volumes.append(volume)
        docker("run", "-d", "--name", name, "--network", "none",
               "-e", "HOTSWAPD_LOG_FORMAT=json", *options, image, *args)  # fmt: skip
        return Container(name)

    yield start
    for name in names:
        docker("rm", "-f", "-v", name, check=False)
    for volume in volumes:
        docker("volume", "rm", "-f", volume, check=False)


# --------------------------------------------------------------------------- network namespaces

_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(pid: int) -> None:
    """Move the calling thread (only it) into the network namespace of `pid`."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into the network namespace of pid {pid}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def netns(pid: int) -> Iterator[None]:
    """This thread in `pid`'s network namespace for the block; sockets made there stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(pid)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's network namespace")
    finally:
        os.close(own)


class ContainerLoad(Load):
    """tests.load's keep-alive load, every worker thread inside the container's netns."""

    def __init__(self, pid: int, port: int = 8080, connections: int = 4) -> None:
        self.netns_pid = pid
        super().__init__(port, connections=connections, max_seconds=60.0)

    def _worker(self) -> None:
        enter_netns(self.netns_pid)
        super()._worker()


# --------------------------------------------------------------------------- the checks


def test_image_is_small(image: str) -> None:
    """The example image (hotswapd, its libraries and the Go server) stays within 60 MB."""
    size = int(docker("image", "inspect", image, "--format", "{{.Size}}").stdout)
    print(f"image size: {size} bytes ({size / 1e6:.1f} MB)")
    assert size <= MAX_IMAGE_BYTES, f"{size / 1e6:.1f} MB > {MAX_IMAGE_BYTES / 1e6:.0f} MB"


def test_hotswapd_is_pid1_as_the_image_user(run: Callable[..., Container]) -> None:
    """hotswapd runs as the container's PID 1, uid 10001 group 0, and the server as its child."""
    app = run()
    app.wait_serving()
    status = Path(f"/proc/{app.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["NSpid"].split()[-1] == "1"
    assert fields["Uid"].split()[0] == str(IMAGE_UID)
    assert fields["Gid"].split()[0] == "0"
    assert Path(f"/proc/{app.pid}/exe").resolve().name == "hotswapd"
    children = Path(f"/proc/{app.pid}/task/{app.pid}/children").read_text().split()
    assert [Path(f"/proc/{c}/exe").resolve().name for c in children] == ["server"]


def test_healthy_within_40s(run: Callable[..., Container]) -> None:
    """The HEALTHCHECK (`hotswapd health`) reports the container healthy within 40 s."""
    run().wait_healthy()


def test_usr2_under_load_loses_nothing(run: Callable[..., Container]) -> None:
    """`docker kill -s USR2` swaps under keep-alive load: 0 failed requests, a new server pid."""
    app = run()
    app.wait_serving()
    with ContainerLoad(app.pid) as load:
        wait_until(lambda: load.count() >= 200, 20, "requests before the swap")
        before = set(load.result.pids)
        docker("kill", "-s", "USR2", app.name)
        finished = wait_until(lambda: app.events("swap_finished"), 40,
                              lambda: f"swap_finished\n{app.logs()[-3000:]}")  # fmt: skip
        served = load.count()
        wait_until(lambda: load.count() >= served + 200, 20, "requests after the swap")
    result = load.result
    assert finished[0]["outcome"] == "committed", finished[0]
    assert not result.failures, f"{len(result.failures)} of {load.count()}: {result.failures[:5]}"
    new_pid = str(finished[0]["active_pid"])
    assert new_pid not in before
    assert result.pids[-1] == new_pid, "the last requests were answered by the new server"
    print(f"USR2 under load: {result.ok} requests, 0 failed")


@pytest.mark.parametrize(
    "options",
    [("--user", "12345:0"), ("--read-only", "--tmpfs", "/run/hotswapd"),
     ("--user", "12345:0", "--read-only", "--tmpfs", "/run/hotswapd")],
    ids=["arbitrary-uid", "read-only", "both"],
)  # fmt: skip
def test_any_uid_and_read_only_root_serve(
    run: Callable[..., Container], options: tuple[str, ...]
) -> None:
    """An arbitrary uid in group 0 and a read-only root (with the documented tmpfs) serve."""
    app = run(*options)
    app.wait_serving()
    status = app.exec("hotswapd", "ctl", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    logs = app.logs()
    assert "Traceback" not in logs, logs[-3000:]
    assert app.events("control_listening"), logs[-3000:]


def test_port_override_stays_healthy(run: Callable[..., Container]) -> None:
    """The docs' port override serves on 9000 and the HEALTHCHECK follows it."""
    argv = ("--listen", "http=tcp://0.0.0.0:9000", "--health", "/healthz", "--", "/app/server")
    app = run("--entrypoint", "hotswapd", args=argv)
    app.wait_serving(port=9000)
    app.wait_healthy()


def test_metrics_serve_from_the_image(run: Callable[..., Container]) -> None:
    """`--metrics` works in the frozen image: everything /metrics needs was bundled."""
    argv = ("--listen", "http=tcp://0.0.0.0:8080", "--health", "/healthz",
            "--metrics", "127.0.0.1:9100", "--", "/app/server")  # fmt: skip
    app = run("--entrypoint", "hotswapd", args=argv)
    app.wait_serving()
    wait_until(lambda: _metrics_answer(app), 20, lambda: f"/metrics\n{app.logs()[-3000:]}")
    status, _, body = app.get("/metrics", port=9100)
    assert status == 200
    assert b"hotswapd_active_generation" in body


def _metrics_answer(app: Container) -> bool:
    try:
        return app.get("/metrics", port=9100)[0] == 200
    except OSError:
        return False


def test_docker_stop_exits_0_within_10s(run: Callable[..., Container]) -> None:
    """`docker stop` ends the container within its 10 s grace, with exit status 0."""
    app = run()
    app.wait_serving()
    started = time.monotonic()
    docker("stop", app.name, timeout=30)
    took = time.monotonic() - started
    assert app.inspect("{{.State.ExitCode}}") == "0", app.logs()[-3000:]
    assert took < 10.0, f"docker stop took {took:.1f} s"
    assert app.events("stopped") or "stopped" in app.logs()


def test_ctl_status_as_the_image_user(run: Callable[..., Container]) -> None:
    """`docker exec … hotswapd ctl status` works as the image's user, without flags."""
    app = run()
    app.wait_serving()
    done = app.exec("hotswapd", "ctl", "status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PID 1" in done.stdout, done.stdout
    assert "active" in done.stdout, done.stdout


@pytest.fixture(scope="module")
def server_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example server stamped v2, static like the image's."""
    return build_go_server(tmp_path_factory.mktemp("v2") / "server", "v2")


def test_deploy_recipe_on_a_volume(
    run: Callable[..., Container], image: str, server_v2: Path
) -> None:
    """Program on a volume: `hotswapd deploy` as the image's user installs and commits v2."""
    volume = f"hotswapd-test-bin-{uuid.uuid4().hex[:10]}"
    # Seed the volume with the image's build (the image's /app/bin gives it owner and mode).
    seed = docker("run", "--rm", "--network", "none", "-v", f"{volume}:/app/bin",
                  "--entrypoint", "hotswapd", image, "deploy", "--no-reload", "/app/server",
                  "/app/bin/server", check=False)  # fmt: skip
    argv = ("--listen", "http=tcp://0.0.0.0:8080", "--health", "/healthz", "--", "/app/bin/server")
    app = run("-v", f"{volume}:/app/bin", "--entrypoint", "hotswapd", volume=volume, args=argv)
    assert seed.returncode == 0, seed.stdout + seed.stderr
    app.wait_serving()
    docker("cp", str(server_v2), f"{app.name}:/app/bin/server.new")
    done = app.exec("hotswapd", "deploy", "/app/bin/server.new")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installed /app/bin/server.new as /app/bin/server" in done.stdout, done.stdout
    assert app.get("/version")[1].get("X-Version") == "v2" or b"v2" in app.get("/version")[2]


def test_deploy_recipe_as_root(run: Callable[..., Container], server_v2: Path) -> None:
    """Root installs over the image's /app/server, the image's user swaps: v2 is committed."""
    app = run()
    app.wait_serving()
    docker("cp", str(server_v2), f"{app.name}:/tmp/server-v2")
    # Root may write /app, but as a client trusts only a root hotswapd: the swap is
    # asked for as the image's user, whose hotswapd it is.
    done = app.exec("hotswapd", "deploy", "--no-reload", "/tmp/server-v2", "/app/server",
                    user="root")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    reload = app.exec("hotswapd", "ctl", "reload", "--wait")
    assert reload.returncode == 0, reload.stdout + reload.stderr
    assert b"v2" in app.get("/version")[2]
