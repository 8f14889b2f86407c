"""Benchmark how servers drain: failed requests and requests/s across swaps, side by side.

    python bench/bench_servers.py [--swaps 20] [--rounds 10] [--connections 32]
                                  [--interval 1.0] [--only NAME ...] [--json PATH]

Each server gets --swaps swaps under wrk load (keep-alive HTTP/1.1, --connections
connections, --threads threads), in --rounds rounds: per round, one wrk run per server
with --warmup seconds of load, then a swap every --interval seconds, then --interval
more. The servers take turns round after round, the order rotating (plain and drained
always back to back), so that the machine's own noise (other processes, frequency
changes) hits all of them alike; the requests/s ratio of the package's server to the
plain one is also given per round.
A failed request is one wrk counts as an error: a connection refused, reset or closed
before the response (connect/read/write), a timeout, or a non-2xx answer.

The servers (sources under tests/servers/ and docker/server/):

  plain              net/http with http.Server.Shutdown on SIGTERM, under hotswapd
  drained            the same server, hotswap.Serve instead (the package's drain)
  example            the example server (docker/server), under hotswapd
  tableflip          cloudflare/tableflip's README pattern, no hotswapd: SIGHUP forks a
                     copy that inherits the socket, the old one Shutdown()s once it is ready
  tableflip+window   the same with the package's drain (-drain-window 300ms)

Under hotswapd a swap is SIGUSR2 (--ready notify: the servers say READY=1) until
swap_finished (the old generation exited); under tableflip it is SIGHUP to the pid in
its pid file until a new pid is there and the old process is gone.

Goal: the package's server 0 failed requests, within 2% of the plain server's requests/s.
Prints a table and writes JSON (default bench/results/servers.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

from tests.helpers import go_binary, wait_until

SERVERS_SRC = common.REPO / "tests" / "servers"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GOAL_RPS_RATIO = 0.98
HOTSWAPD_OPTIONS = [
    "--listen",
    "http=tcp://127.0.0.1:0",
    "--ready",
    "notify",
    "--settle",
    "0",
    "--drain-timeout",
    "10s",
    "--stop-timeout",
    "10s",
]
# wrk's summary as one JSON line: done() runs once, after the load, so it costs nothing
# per request (a request or response hook would slow wrk down).
WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Schedule:
    swaps: int
    interval: float
    warmup: float
    connections: int
    threads: int

    @property
    def duration(self) -> int:
        """Whole seconds: wrk takes no fractions."""
        return math.ceil(self.warmup + (self.swaps + 1) * self.interval)


# --------------------------------------------------------------------------- builds


def go_build(module: Path, package: str, out: Path) -> Path:
    """Build one Go main package statically, offline, into build/bench/servers."""
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOPROXY="off")
    env.setdefault("GOCACHE", str(common.REPO / "build" / "gocache"))
    env.setdefault("GOPATH", str(common.REPO / "build" / "gopath"))
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([go_binary(), "build", "-o", str(out), package], cwd=module, env=env, check=True)
    return out


def builds() -> dict[str, Path]:
    out = common.BUILD / "servers"
    return {
        "plain": go_build(SERVERS_SRC, "./plain", out / "plain"),
        "drained": go_build(SERVERS_SRC, "./drained", out / "drained"),
        "example": common.go_server("v1"),
        "tableflip": go_build(SERVERS_SRC / "tableflip", ".", out / "tableflip"),
    }


# --------------------------------------------------------------------------- load


class Wrk:
    """wrk against loopback for the schedule's duration, started when constructed."""

    def __init__(self, port: int, schedule: Schedule, script: Path) -> None:
        wrk = shutil.which("wrk")
        if wrk is None:
            raise SystemExit("bench_servers: wrk is not installed (apt-get install wrk)")
        self.argv = [
            wrk,
            "-t",
            str(schedule.threads),
            "-c",
            str(schedule.connections),
            "-d",
            f"{schedule.duration}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/",
        ]
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.started = time.monotonic()

    def result(self, timeout: float) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
        if self.proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({self.proc.returncode}): {err.strip()}\n{out}")
        figures: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
        return figures

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def drive(
    port: int, schedule: Schedule, script: Path, swap: Callable[[int], float]
) -> tuple[dict[str, Any], list[float]]:
    """Load the server with wrk and swap on schedule; returns (wrk figures, swap seconds)."""
    wrk = Wrk(port, schedule, script)
    swap_s: list[float] = []
    try:
        for index in range(1, schedule.swaps + 1):
            sleep_until(wrk.started + schedule.warmup + (index - 1) * schedule.interval)
            swap_s.append(swap(index))
        figures = wrk.result(timeout=schedule.duration + 30)
    finally:
        wrk.stop()
    return figures, swap_s


# --------------------------------------------------------------------------- runs


def run_hotswapd(program: Path, schedule: Schedule, script: Path, tmp: Path) -> dict[str, Any]:
    """The server as hotswapd's child; a swap is SIGUSR2 until swap_finished."""
    control = tmp / f"control-{program.name}.sock"
    argv = [
        common.project_python(),
        "-m",
        "hotswapd",
        *HOTSWAPD_OPTIONS,
        "--control-socket",
        str(control),
        "--",
        str(program),
    ]
    proc = common.Process(argv, common.python_env())
    try:
        listening = proc.wait_event("listening")
        port = int(str(listening["address"]).rsplit(":", 1)[1])
        proc.wait_event("supervising")  # the handlers are in: SIGUSR2 now is a swap

        def swap(index: int) -> float:
            sent = time.monotonic()
            proc.signal(signal.SIGUSR2)  # our own child: proc.pid
            proc.wait_event("swap_finished", count=index, timeout=30)
            return time.monotonic() - sent

        figures, swap_s = drive(port, schedule, script, swap)
        finished = proc.events("swap_finished")
        outcomes = [event.get("outcome") for event in finished]
        # The generations' CPU: hotswapd reaped every old one (their time is its
        # children's), and the one serving now is alive.
        _, reaped = cpu_ticks(proc.pid)
        serving, _ = cpu_ticks(int(finished[-1]["active_pid"]))
        cpu_s = (reaped + serving) / CLOCK_TICKS
    finally:
        proc.stop()
    return summary(figures, swap_s, outcomes.count("committed"), cpu_s)


def run_tableflip(
    program: Path, schedule: Schedule, script: Path, tmp: Path, window: str
) -> dict[str, Any]:
    """tableflip on its own: a swap is SIGHUP to the serving pid until the old one is gone."""
    port = common.free_port()
    pid_file = tmp / f"tableflip-{window}.pid"
    argv = [
        str(program),
        "-addr",
        f"127.0.0.1:{port}",
        "-pid-file",
        str(pid_file),
        "-drain-window",
        window,
    ]
    proc = common.Process(argv, common.clean_env())

    def serving_pid() -> int:
        try:
            return int(pid_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def gone(pid: int) -> bool:
        proc.proc.poll()  # reaps the first process, our own child
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    try:
        proc.wait_stdout("ready")
        proc.wait_for("the pid file", serving_pid)

        def swap(index: int) -> float:
            old = serving_pid()
            # Signal only a process of the session this benchmark started.
            if os.getsid(old) != proc.pid:
                raise RuntimeError(f"pid {old} in {pid_file} is not tableflip's")
            sent = time.monotonic()
            os.kill(old, signal.SIGHUP)
            # Not proc.wait_for: the first process exits at the first upgrade.
            wait_until(lambda: serving_pid() not in (0, old), 30, "the new process")
            wait_until(lambda: gone(old), 30, f"pid {old} to exit")
            return time.monotonic() - sent

        figures, swap_s = drive(port, schedule, script, swap)
        upgrades = len(proc.stdout_with("ready")) - 1
    finally:
        proc.stop()
    return summary(figures, swap_s, upgrades, None)  # the old processes are init's to reap


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def summary(
    figures: dict[str, Any], swap_s: list[float], committed: int, cpu_s: float | None
) -> dict[str, Any]:
    errors = {key: int(figures[key]) for key in ("connect", "read", "write", "status", "timeout")}
    seconds = figures["duration_us"] / 1e6
    return {
        "server_cpu_s": cpu_s,
        "server_cpu_us_per_request": per_request(cpu_s, int(figures["requests"])),
        "requests": int(figures["requests"]),
        "failed": sum(errors.values()),
        "errors": errors,
        "requests_per_s": round(figures["requests"] / seconds, 1),
        "duration_s": round(seconds, 2),
        "latency_p50_ms": figures["p50_us"] / 1000,
        "latency_p99_ms": figures["p99_us"] / 1000,
        "swaps": len(swap_s),
        "swaps_done": committed,
        "swap_ms": common.summarize([s * 1000 for s in swap_s], 1) if swap_s else None,
    }


def per_request(cpu_s: float | None, requests: int) -> float | None:
    return round(cpu_s * 1e6 / requests, 2) if cpu_s is not None and requests else None


def add_up(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over rounds: failures and swaps add up, requests/s is the whole run's."""
    if len(rounds) == 1:
        return rounds[0]
    requests = sum(r["requests"] for r in rounds)
    seconds = sum(r["duration_s"] for r in rounds)
    errors = {key: sum(r["errors"][key] for r in rounds) for key in rounds[0]["errors"]}
    cpus = [r["server_cpu_s"] for r in rounds]
    cpu_s = None if None in cpus else sum(cpus)
    return {
        "server_cpu_s": cpu_s,
        "server_cpu_us_per_request": per_request(cpu_s, requests),
        "requests": requests,
        "failed": sum(errors.values()),
        "errors": errors,
        "requests_per_s": round(requests / seconds, 1),
        "requests_per_s_rounds": [r["requests_per_s"] for r in rounds],
        "duration_s": round(seconds, 2),
        "swaps": sum(r["swaps"] for r in rounds),
        "swaps_done": sum(r["swaps_done"] for r in rounds),
        "rounds": rounds,
    }


# --------------------------------------------------------------------------- main

LABELS = {
    "plain": "plain Shutdown (hotswapd)",
    "drained": "hotswap.Serve (hotswapd)",
    "example": "example server (hotswapd)",
    "tableflip": "tableflip README",
    "tableflip+window": "tableflip + hotswap drain",
}


def turn_order(chosen: list[str], round_index: int) -> list[str]:
    """This round's order: rotated by one each round, plain and drained back to back
    (first one, then the other), so their ratio compares runs a few seconds apart."""
    paired = "plain" in chosen and "drained" in chosen
    base = [key for key in chosen if not (paired and key == "drained")]
    turn = round_index % len(base)
    order = base[turn:] + base[:turn]
    if paired:
        at = order.index("plain") + (1 if round_index % 2 == 0 else 0)
        order.insert(at, "drained")
    return order


def bench(args: argparse.Namespace) -> dict[str, Any]:
    programs = builds()
    per_round_swaps = args.swaps // args.rounds
    schedule = Schedule(per_round_swaps, args.interval, args.warmup, args.connections, args.threads)
    runners: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
        "plain": lambda s, t: run_hotswapd(programs["plain"], schedule, s, t),
        "drained": lambda s, t: run_hotswapd(programs["drained"], schedule, s, t),
        "example": lambda s, t: run_hotswapd(programs["example"], schedule, s, t),
        "tableflip": lambda s, t: run_tableflip(programs["tableflip"], schedule, s, t, "0s"),
        "tableflip+window": lambda s, t: run_tableflip(
            programs["tableflip"], schedule, s, t, "300ms"
        ),
    }
    chosen = [key for key in runners if not args.only or key in args.only]
    per_round: dict[str, list[dict[str, Any]]] = {key: [] for key in chosen}
    with tempfile.TemporaryDirectory(prefix="bench-servers-") as tmp:
        script = Path(tmp) / "summary.lua"
        script.write_text(WRK_SCRIPT)
        for round_index in range(args.rounds):
            for key in turn_order(chosen, round_index):
                result = runners[key](script, Path(tmp))
                per_round[key].append(result)
                print(
                    f"round {round_index + 1} {key}: {result['failed']} failed of "
                    f"{result['requests']}, {result['requests_per_s']:.0f} req/s",
                    flush=True,
                )
    servers = {key: add_up(results) for key, results in per_round.items()}
    out: dict[str, Any] = {
        "machine": common.machine(),
        "config": {
            "swaps": args.swaps,
            "swaps_per_round": args.swaps // args.rounds,
            "interval_s": args.interval,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "rounds": args.rounds,
            "load": "wrk, keep-alive HTTP/1.1 GET /, loopback",
            "hotswapd_options": HOTSWAPD_OPTIONS,
        },
        "servers": servers,
    }
    if "plain" in servers and "drained" in servers:
        ratio = servers["drained"]["requests_per_s"] / servers["plain"]["requests_per_s"]
        by_round = [
            d["requests_per_s"] / p["requests_per_s"]
            for d, p in zip(per_round["drained"], per_round["plain"], strict=True)
        ]
        cpu = (
            servers["drained"]["server_cpu_us_per_request"]
            / servers["plain"]["server_cpu_us_per_request"]
        )
        out["goal"] = {
            "drained_failed": servers["drained"]["failed"],
            "drained_vs_plain_cpu_per_request": round(cpu, 4),
            "drained_vs_plain_requests_per_s": round(ratio, 4),
            "drained_vs_plain_by_round": [round(r, 4) for r in by_round],
            "met": servers["drained"]["failed"] == 0 and ratio >= GOAL_RPS_RATIO,
        }
    return out


def print_report(results: dict[str, Any]) -> None:
    config = results["config"]
    print()
    print(
        f"{config['swaps']} swaps per server in {config['rounds']} rounds under wrk load "
        f"({config['connections']} keep-alive connections, {config['threads']} threads, "
        f"one swap every {config['interval_s']:g} s)"
    )
    rows = []
    for key, run in results["servers"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in run["errors"].items() if v) or "-"
        rows.append(
            [
                LABELS[key],
                run["requests"],
                run["failed"],
                kinds,
                f"{run['requests_per_s']:.0f}",
                run["server_cpu_us_per_request"] or "-",
                f"{run['swaps_done']}/{run['swaps']}",
            ]
        )
    headers = ["server", "requests", "failed", "failures", "req/s", "CPU µs/req", "swaps"]
    print(common.table(headers, rows))
    if "goal" in results:
        goal = results["goal"]
        verdict = "met" if goal["met"] else "MISSED"
        print(
            f"goal: hotswap.Serve 0 failed ({goal['drained_failed']}) and >= "
            f"{GOAL_RPS_RATIO:.0%} of plain's req/s "
            f"({goal['drained_vs_plain_requests_per_s']:.1%}): {verdict}"
        )
        print(
            "  server CPU per request, hotswap.Serve / plain: "
            f"{goal['drained_vs_plain_cpu_per_request']:.1%}"
        )
        rounds = ", ".join(f"{r:.1%}" for r in goal["drained_vs_plain_by_round"])
        print(f"  hotswap.Serve / plain req/s, round by round: {rounds}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--swaps", type=int, default=20, help="per server, over all rounds")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between swaps")
    parser.add_argument("--warmup", type=float, default=1.0, help="load before swap 1 (s)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=10, help="turns per server (divides --swaps)")
    parser.add_argument("--only", nargs="*", choices=list(LABELS), help="a subset of servers")
    parser.add_argument("--json", type=Path, default=common.default_json("servers"))
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.swaps % args.rounds:
        parser.error("--rounds must divide --swaps")
    results = bench(args)
    print_report(results)
    common.write_json(args.json, results)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    common.reexec_in_venv()
    sys.exit(main())
