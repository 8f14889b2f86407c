"""The watcher end to end: real builds and edits under a running hotswapd as PID 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.harness import fd_links
from tests.helpers import GO_SERVER_SRC, REPO, go_binary, wait_until
from tests.load import Load

Start = Any
OPTIONS = [
    "--listen",
    "http=tcp://127.0.0.1:0",
    "--health",
    "/healthz",
    "--settle",
    "0",
    "--debounce",
    "100ms",
    "--drain-timeout",
    "5s",
]


def source_snapshot(root: Path) -> Path:
    """A copy of the example server and the Go package it imports, so that two builds in
    one test see the same sources even while the checkout is being edited."""
    shutil.copytree(GO_SERVER_SRC, root / "docker" / "server")
    shutil.copytree(REPO / "go", root / "go")  # go.mod: replace ... => ../../go
    return root / "docker" / "server"


def go_build(out: Path, version: str, src: Path) -> None:
    """`go build -o` straight into the watched path, as a developer's rebuild does."""
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    env.setdefault("GOCACHE", str(REPO / "build" / "gocache"))
    subprocess.run(
        [go_binary(), "build", "-o", str(out), "-ldflags", f"-X main.version={version}", "."],
        cwd=src,
        env=env,
        check=True,
    )


def test_go_build_into_the_watched_path_under_load(
    hotswapd: Start, go_server: Any, tmp_path: Path
) -> None:
    """`go build -o` over the running binary: exactly one swap, 0 failed requests."""
    program = tmp_path / "bin" / "server"
    program.parent.mkdir()
    shutil.copy2(go_server("v1"), program)
    src = source_snapshot(tmp_path / "src")
    run = hotswapd([*OPTIONS, "--watch", str(program)], [str(program)])
    port = run.port()
    run.wait_event("supervising")
    with Load(port, connections=4) as load:
        go_build(program, "v2", src)
        finished = run.wait_event("swap_finished", timeout=30)
        count = load.count()
        wait_until(lambda: load.count() > count + 50, 10, "load after the swap")
        result = load.stop()
    assert finished["outcome"] == "committed"
    assert result.failures == []
    assert set(result.versions) == {"v1", "v2"}
    assert len(run.events("swap_requested", source="watch")) == 1
    before = program.stat()
    go_build(program, "v2", src)  # up to date: go touches the file's mtime, or leaves it alone
    after = program.stat()
    touched = (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) != (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
    if touched:  # a change the watcher saw: it must be judged and ignored
        wait_until(
            lambda: (
                run.events("watch_ignored", path=str(program), cause="touch_only")
                or run.events("watch_ignored", path=str(program), cause="identical_content")
            ),
            15,
            lambda: f"the identical rebuild to be ignored\n{run.tail()}",
        )
    assert len(run.events("swap_requested")) == 1


def test_sed_i_on_a_config_sends_one_hup_and_no_swap(
    hotswapd: Start, go_server: Any, tmp_path: Path
) -> None:
    """`sed -i` on a config watched with =signal:HUP: one SIGHUP per change, never a swap."""
    config = tmp_path / "etc" / "app.conf"
    config.parent.mkdir()
    config.write_text("port: 1\n")
    run = hotswapd(
        [*OPTIONS, "--watch", f"{config}=signal:HUP"],
        [str(go_server("v1")), "-config", str(config)],
    )
    run.wait_event("supervising")
    run.wait_stdout("ready pid=")
    subprocess.run(["sed", "-i", "s/port: 1/port: 22/", str(config)], check=True)
    run.wait_stdout("config reloaded 9 bytes")
    subprocess.run(["sed", "-i", "s/port: 22/port: 333/", str(config)], check=True)
    run.wait_stdout("config reloaded 10 bytes")
    assert len(run.stdout_matching(lambda line: line == "SIGHUP received")) == 2
    assert run.events("swap_requested") == []


def test_inotify_fd_never_reaches_the_child(
    hotswapd: Start, go_server: Any, tmp_path: Path
) -> None:
    """The watcher's inotify fd is close-on-exec: the child holds only stdio and listeners."""
    program = tmp_path / "server"
    shutil.copy2(go_server("v1"), program)
    run = hotswapd([*OPTIONS, "--watch", str(program)], [str(program)])
    run.wait_event("supervising")
    first = run.wait_event("spawned")

    assert "anon_inode:inotify" in fd_links(run.pid)
    child = run.outside_pid(int(first["pid"]))
    assert "anon_inode:inotify" not in fd_links(child)


def _wakeups(pid: int) -> int:
    """Times the process went to sleep and woke up (voluntary context switches)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_idle_hotswapd_in_inotify_mode_never_wakes_up(hotswapd: Start, tmp_path: Path) -> None:
    """With --watch-mode inotify an idle hotswapd has no timer at all; auto mode does tick."""
    program = tmp_path / "prog"
    shutil.copy2("/bin/sleep", program)
    counts = {}
    for mode in ("inotify", "auto"):
        # A control socket of its own: anything that probes the shared default path
        # (another hotswapd starting on this host) would wake this one up.
        own = ["--control-socket", str(tmp_path / f"{mode}.sock")]
        run = hotswapd(
            [*own, "--watch-mode", mode, "--poll-interval", "200ms", "--watch", str(program)],
            [str(program), "300"],
            pid1=False,
        )
        run.wait_event("supervising")
        wait_until(lambda: run.events("watching"), 10, "the watcher")  # noqa: B023
        before = _wakeups(run.pid)
        time.sleep(1.5)  # the measurement window itself, not a synchronisation
        counts[mode] = _wakeups(run.pid) - before
        run.kill_tree()
    assert counts["inotify"] == 0
    assert counts["auto"] >= 3  # the 200 ms safety-net stat: the measure can see wake-ups
