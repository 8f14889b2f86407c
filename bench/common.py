"""Helpers shared by bench_startup.py and bench_swap.py (not a benchmark itself).

Statistics, tables, JSON output, the project's interpreter, the example Go server
build, and `Process`: a subprocess whose stdout/stderr lines are pumped by threads so
the benchmark can wait on them with deadlines (hotswapd's JSON log events included).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
VENV_SCRIPT = REPO / ".venv" / "bin" / "hotswapd"
BUILD = REPO / "build" / "bench"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.load and tests.helpers


def project_python() -> str:
    """The interpreter hotswapd is installed in: the venv's, else the running one."""
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def reexec_in_venv() -> None:
    """Re-run this script with the venv's python when started with another interpreter."""
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (`fraction` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """median, p90, min, max and n of a non-empty sequence, rounded."""
    return {
        "median": round(statistics.median(values), digits),
        "p90": round(percentile(values, 0.9), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


# --------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` as indented JSON, creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def default_json(name: str) -> Path:
    return RESULTS / f"{name}.json"


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without socket-activation variables, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LISTEN_")
        and key != "NOTIFY_SOCKET"
        and not key.startswith("HOTSWAPD_")
    }
    env.update(extra)
    return env


def python_env(compiled: bool = True, **extra: str) -> dict[str, str]:
    """The environment for a Python program under test; `compiled` gives it a .pyc cache.

    This checkout is an editable install run with PYTHONDONTWRITEBYTECODE=1, so
    hotswapd's own modules would be compiled from source at every start, which a
    container built from docker/Dockerfile never does (`pip install` compiles them).
    With `compiled`, a cache under build/bench/pycache (PYTHONPYCACHEPREFIX) stands in
    for that, for every interpreter alike; the first run fills it.
    """
    env = clean_env(HOTSWAPD_LOG_FORMAT="json", **extra)
    if compiled:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(BUILD / "pycache")
    return env


def parse_timestamp(value: str) -> float:
    """structlog's ISO UTC timestamp → seconds since the epoch."""
    return datetime.fromisoformat(value).timestamp()


class Process:
    """A subprocess with its output lines collected by threads; JSON stderr lines parsed."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.stdout: list[tuple[float, str]] = []  # (time.time() when read, line)
        self.stderr: list[str] = []
        self.events_seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, False), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, True), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: IO[bytes], is_stderr: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                if not is_stderr:
                    self.stdout.append((time.time(), line))
                    continue
                self.stderr.append(line)
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        self.events_seen.append(json.loads(line))

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [event for event in self.events_seen if event.get("event") == name]

    def stdout_with(self, text: str) -> list[tuple[float, str]]:
        with self._lock:
            return [(at, line) for at, line in self.stdout if text in line]

    def tail(self, lines: int = 15) -> str:
        with self._lock:
            out = "\n".join(line for _, line in self.stdout[-lines:])
            return f"stderr:\n{chr(10).join(self.stderr[-lines:])}\nstdout:\n{out}"

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll `check` until it is truthy; fail with the process's output tail."""
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            value = check()
            if value:
                return value
            if self.proc.poll() is not None and not check():
                raise RuntimeError(
                    f"{self.argv[0]} exited ({self.proc.returncode}) before {what}\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}\n{self.tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    def wait_event(self, name: str, count: int = 1, timeout: float = 30.0) -> dict[str, Any]:
        found: list[dict[str, Any]] = self.wait_for(
            f"log event {name} x{count}",
            lambda: len(events := self.events(name)) >= count and events,
            timeout,
        )
        return found[count - 1]

    def wait_stdout(self, text: str, count: int = 1, timeout: float = 30.0) -> float:
        """Wait for the `count`-th stdout line containing `text`; returns when it was read."""
        found: list[tuple[float, str]] = self.wait_for(
            f"stdout {text!r} x{count}",
            lambda: len(lines := self.stdout_with(text)) >= count and lines,
            timeout,
        )
        return found[count - 1][0]

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, then SIGKILL the whole session; returns the exit status."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        code = self.proc.wait(10)
        for thread in self._threads:
            thread.join(5)
        return code


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of `pid` in KiB, from /proc/PID/status."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in wanted:
                found[key] = int(value.split()[0])
    return found


# --------------------------------------------------------------------------- builds


def go_server(version: str) -> Path:
    """The example Go server stamped with `version`, rebuilt only when its source changed."""
    from tests.helpers import GO_SERVER_SRC, build_go_server

    out = BUILD / f"server-{version}"
    sources = [p for p in GO_SERVER_SRC.iterdir() if p.suffix in (".go", ".mod", ".sum")]
    sources += [p for p in (REPO / "go").iterdir() if p.suffix in (".go", ".mod")]  # the package
    newest = max(p.stat().st_mtime for p in sources)
    if not out.exists() or out.stat().st_mtime < newest:
        BUILD.mkdir(parents=True, exist_ok=True)
        build_go_server(out, version)
    return out
