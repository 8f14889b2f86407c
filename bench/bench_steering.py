"""Benchmark steered generations against one shared socket, side by side in one run.

    python bench/bench_steering.py [--swaps 20] [--interval 0.5] [--seconds 5] [--json PATH]

Both modes run the same hotswapd and the same example Go server (docker/server) with
`--health /healthz --settle 0`: *steered* binds its own listener (one socket per
generation, a cBPF selector); *shared* adopts one socket from systemd-socket-activate
(what --steering off, unix:// or a refusing kernel gives: every generation accepts from
it). Per mode:

- 20 swaps under wrk keep-alive load (requests/s, failed requests) plus a Python
  fresh-connection client (`Connection: close`) that records which pid answered and when;
- signal → the new generation takes every new connection: from SIGUSR2 to the last fresh
  answer from the old pid (median/max over the swaps);
- signal → old generation exited (swap_old_exited in the log);
- the candidate's share of fresh connections answered before its verdict (swap_ready);
- new connections/s, steady state, wrk with `Connection: close`, both modes up at once and
  taking turns for --rounds runs (median; the selector's cost: goal ≥ 0.98× shared).

tableflip is benchmarked by bench/bench_servers.py (same wrk load, same example-server
drain) and not repeated here. Prints a table and writes JSON (bench/results/steering.json).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common

WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout))
end
"""
OPTIONS = ["--health", "/healthz", "--health-timeout", "10s", "--settle", "0",
           "--drain-timeout", "10s", "--stop-timeout", "10s"]  # fmt: skip


class Fresh:
    """Fresh connections in a loop; (time.time(), X-Pid) per answer, failures counted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[float, str]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                response = conn.getresponse()
                response.read()
                self.answers.append((time.time(), response.getheader("X-Pid", "")))
            except (OSError, http.client.HTTPException):
                self.failures += 1
            finally:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def wrk(port: int, seconds: int, script: Path, close: bool) -> subprocess.Popen[str]:
    argv = [shutil.which("wrk") or "wrk", "-t", "2", "-c", "16", "-d", f"{seconds}s",
            "--timeout", "5s", "-s", str(script)]  # fmt: skip
    if close:
        argv += ["-H", "Connection: close"]
    return subprocess.Popen([*argv, f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wrk_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=600)
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {err}\n{out}")
    figures: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    figures["per_s"] = round(figures["requests"] / (figures["duration_us"] / 1e6), 1)
    return figures


def start(mode: str, program: Path) -> tuple[common.Process, int]:
    argv = [common.project_python(), "-m", "hotswapd", *OPTIONS]
    if mode == "steered":
        port = common.free_port()
        argv += ["--listen", f"http=tcp://127.0.0.1:{port}"]
    else:
        port = common.free_port()
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise SystemExit("bench_steering: needs systemd-socket-activate for shared mode")
        argv = [activate, "-l", f"127.0.0.1:{port}", "--fdname=http", *argv]
    tmp = tempfile.mkdtemp(prefix="bench-steering-")
    argv += ["--control-socket", f"{tmp}/control.sock", "--", str(program)]
    proc = common.Process(argv, env=common.python_env())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # systemd-socket-activate starts hotswapd on a connection
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            conn.getresponse().read()
            break
        except OSError:
            time.sleep(0.05)
    proc.wait_event("supervising")
    return proc, port


def stamp(events: list[dict[str, Any]]) -> float | None:
    return common.parse_timestamp(events[0]["timestamp"]) if events else None


def steady_rounds(ports: dict[str, int], seconds: int, rounds: int,
                  script: Path) -> dict[str, dict[str, Any]]:  # fmt: skip
    """New connections/s under Connection: close, the modes taking turns round by round
    (the order alternating), so the machine's own noise hits both alike."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in ports}
    for index in range(rounds):
        order = list(ports) if index % 2 == 0 else list(ports)[::-1]
        for mode in order:
            runs[mode].append(wrk_result(wrk(ports[mode], seconds, script, close=True)))
    return {
        mode: {
            "per_s": round(statistics.median(r["per_s"] for r in results), 1),
            "errors": sum(r["errors"] for r in results),
            "rounds": [r["per_s"] for r in results],
        }
        for mode, results in runs.items()
    }


def run_mode(mode: str, proc: common.Process, port: int, program: Path, builds: list[Path],
             swaps: int, interval: float, script: Path,
             steady: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    tmp = program.parent
    try:
        load = wrk(port, int(swaps * (interval + 0.3)) + 4, script, close=False)
        fresh = Fresh(port)
        time.sleep(1.0)  # warm-up under load before the first swap
        records = []
        for index in range(1, swaps + 1):
            new = tmp / "server.new"
            shutil.copy2(builds[index % 2], new)
            new.replace(program)
            sent = time.time()
            proc.signal(signal.SIGUSR2)
            finished = proc.wait_event("swap_finished", count=index, timeout=60)
            ready = [e for e in proc.events("swap_ready") if e["swap"] == index]
            gone = [e for e in proc.events("swap_old_exited") if e["swap"] == index]
            records.append(
                {
                    "sent": sent,
                    "finished": common.parse_timestamp(finished["timestamp"]),
                    "old_exited": stamp(gone),
                    "ready": stamp(ready),
                    "outcome": finished["outcome"],
                    "new": str(finished["active_pid"]),
                }
            )
            time.sleep(interval)
        fresh.stop()
        keepalive = wrk_result(load)
    finally:
        proc.stop()
    first = str(proc.events("spawned")[0]["pid"])
    return summarize(mode, records, fresh, keepalive, steady, first)


def summarize(mode: str, records: list[dict[str, Any]], fresh: Fresh, keepalive: dict[str, Any],
              steady: dict[str, Any], first: str) -> dict[str, Any]:  # fmt: skip
    takes_all: list[float] = []
    exited: list[float] = []
    candidate_share: list[float] = []
    answers = sorted(fresh.answers)
    previous_new: str | None = first
    for record in records:
        old = previous_new
        previous_new = record["new"]
        if old:
            last_old = max((at for at, pid in answers
                            if pid == old and record["sent"] <= at <= record["finished"] + 1),
                           default=record["sent"])  # fmt: skip
            takes_all.append((last_old - record["sent"]) * 1000)
        if record["old_exited"] is not None:
            exited.append((record["old_exited"] - record["sent"]) * 1000)
        if record["ready"] is not None:
            before = [pid for at, pid in answers if record["sent"] <= at <= record["ready"]]
            if before:
                candidate_share.append(before.count(record["new"]) / len(before))
    return {
        "mode": mode,
        "swaps": len(records),
        "committed": sum(r["outcome"] == "committed" for r in records),
        "failed_requests": keepalive["errors"] + fresh.failures,
        "keepalive_errors": keepalive["errors"],
        "fresh_failures": fresh.failures,
        "requests_per_s": keepalive["per_s"],
        "new_connections_per_s": steady["per_s"],
        "new_connection_errors": steady["errors"],
        "new_connections_per_s_rounds": steady["rounds"],
        "signal_to_all_new_ms": common.summarize(takes_all) if takes_all else None,
        "signal_to_old_exited_ms": common.summarize(exited),
        "candidate_share_before_verdict": round(statistics.mean(candidate_share), 4)
        if candidate_share
        else 0.0,
        "fresh_answers": len(answers),
    }


def main(argv: list[str] | None = None) -> int:
    common.reexec_in_venv()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--seconds", type=int, default=3, help="one Connection: close run")
    parser.add_argument("--rounds", type=int, default=4, help="Connection: close runs per mode")
    parser.add_argument("--json", type=Path, default=common.default_json("steering"))
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("bench_steering: wrk is not installed (apt-get install wrk)")
    builds = [common.go_server("v1"), common.go_server("v2")]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "summary.lua"
        script.write_text(WRK_SCRIPT)
        started = {}
        for mode in ("steered", "shared"):
            program = Path(tempfile.mkdtemp(prefix="bench-steering-app-")) / "server"
            shutil.copy2(builds[0], program)
            started[mode] = (*start(mode, program), program)
        try:
            steady = steady_rounds({mode: port for mode, (_, port, _) in started.items()},
                                   args.seconds, args.rounds, script)  # fmt: skip
        except BaseException:
            for proc, _, _ in started.values():
                proc.stop()
            raise
        results = {mode: run_mode(mode, proc, port, program, builds, args.swaps, args.interval,
                                  script, steady[mode])
                   for mode, (proc, port, program) in started.items()}  # fmt: skip
    steered, shared = results["steered"], results["shared"]
    ratio = steered["new_connections_per_s"] / shared["new_connections_per_s"]
    rows = []
    for mode, r in results.items():
        takes = r["signal_to_all_new_ms"] or {}
        rows.append([mode, f"{r['committed']}/{r['swaps']}", r["failed_requests"],
                     f"{takes.get('median', 0):.1f} / {takes.get('max', 0):.1f}",
                     f"{r['signal_to_old_exited_ms']['median']:.1f} / "
                     f"{r['signal_to_old_exited_ms']['max']:.1f}",
                     r["requests_per_s"], r["new_connections_per_s"],
                     f"{r['candidate_share_before_verdict'] * 100:.1f}%"])  # fmt: skip
    print(common.table(["mode", "committed", "failed", "signal→all new ms (med/max)",
                        "signal→old exited ms (med/max)", "keep-alive req/s",
                        "new conn/s (close)", "candidate share before verdict"], rows))  # fmt: skip
    print(f"new connections/s steered/shared: {ratio:.3f} (goal >= 0.98)")
    common.write_json(args.json, {"machine": common.machine(), "results": results,
                                  "new_connections_ratio": round(ratio, 4)})  # fmt: skip
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
