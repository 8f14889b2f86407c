"""Benchmark canary analysis: how fast a bad candidate is caught, and what a scrape costs.

    python bench/bench_canary.py [--seconds 6] [--rate 800] [--interval 0.25] [--json PATH]
    python bench/bench_canary.py --through-hotswapd [--seconds 6] [--rate 800] [--rounds 3]

By default this measures the building blocks: the traffic split is done by the client
(`--through-hotswapd` runs real swaps instead: hotswapd's selector gives the candidate
its weight of fresh connections, its analysis scrapes every 0.5 s, and the figure is
the time from the candidate's first 500 to the `swap_rolled_back` line): a
load generator sends each request to the candidate with the canary's
weight (1%, 5%, 25%) and to the serving generation otherwise, over keep-alive
connections on loopback. The candidate is tests/servers/flaky built with 5% errors,
the serving one with none. Every --interval both are scraped and the error-ratio rule
(<= 0.1% or <= 1.5x, minimum 100 requests) is looked at with `StepAnalysis.fail_fast`;
the moment it fails is the moment hotswapd would set the candidate's weight to 0.

Figures per weight: time from the candidate's first 500 (as the client saw it) to the
failing verdict, and the requests the candidate answered in between. Also the time of
one scrape of the flaky server and of parsing synthetic expositions of 1,000 and
10,000 series (the parse runs on hotswapd's event loop). Prints a table and writes
JSON (default bench/results/canary.json).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common

from hotswapd.gates import analysis, scrape

RULE = (
    'error-ratio=sum(http_requests_total{code=~"5.."}) / sum(http_requests_total) '
    "<= 0.1% or <= 1.5x"
)
WEIGHTS = (1, 5, 25)
CLIENTS = 4


def build_flaky(version: str, error_percent: str) -> Path:
    out = common.BUILD / f"flaky-{version}-{error_percent}"
    src = common.REPO / "tests" / "servers"
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOPROXY="off")
    env.setdefault("GOCACHE", str(common.REPO / "build" / "gocache"))
    env.setdefault("GOPATH", str(common.REPO / "build" / "gopath"))
    from tests.helpers import go_binary

    ldflags = f"-X main.version={version} -X main.errorPercent={error_percent}"
    subprocess.run(
        [go_binary(), "build", "-o", str(out), "-ldflags", ldflags, "./flaky"],
        cwd=src,
        env=env,
        check=True,
    )
    return out


class Server:
    """A flaky build on a socket this process bound, inherited as fd 3."""

    def __init__(self, binary: Path) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = int(self.listener.getsockname()[1])
        fd = self.listener.fileno()
        move = "" if fd == 3 else f"exec 3<&{fd} {fd}<&-; "
        script = f'{move}LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec "$0"'
        self.child = subprocess.Popen(
            ["bash", "-c", script, str(binary)],
            pass_fds=[fd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.child.poll() is None:
            self.child.terminate()
        self.child.wait(timeout=30)
        self.listener.close()


async def scrape_port(port: int) -> dict[analysis.SeriesKey, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return await scrape.scrape(reader, writer, "/metrics", f"127.0.0.1:{port}")


class Load:
    """Client threads: each request goes to the candidate with probability `weight`%."""

    def __init__(self, candidate: int, serving: int, weight: float, rate: float) -> None:
        self.ports = (candidate, serving)
        self.weight = weight / 100
        self.interval = CLIENTS / rate
        self.stop = threading.Event()
        self.candidate_off = threading.Event()  # weight 0: the verdict came
        self.lock = threading.Lock()
        self.first_error: float | None = None
        self.candidate_answers: list[float] = []  # times of the candidate's answers
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(CLIENTS)]

    def run(self) -> None:
        conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=10) for p in self.ports]
        chooser = random.Random()
        next_at = time.monotonic()
        while not self.stop.is_set():
            to_candidate = not self.candidate_off.is_set() and chooser.random() < self.weight
            conn = conns[0 if to_candidate else 1]
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            now = time.monotonic()
            if to_candidate:
                with self.lock:
                    self.candidate_answers.append(now)
                    if response.status >= 500 and self.first_error is None:
                        self.first_error = now
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)  # paced: a fixed request rate per client
        for conn in conns:
            conn.close()


async def catch(
    candidate: int, serving: int, weight: float, args: argparse.Namespace
) -> dict[str, Any]:
    """One run at `weight`%: the time from the first error to the verdict."""
    steps = analysis.StepAnalysis([analysis.parse_rule(RULE)], min_requests=100)
    steps.begin(await scrape_port(candidate), await scrape_port(serving))
    load = Load(candidate, serving, weight, args.rate)
    for thread in load.threads:
        thread.start()
    verdict_at: float | None = None
    reason = ""
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(args.interval)  # the scrape interval under test, not a sync
            failed = steps.fail_fast(await scrape_port(candidate), await scrape_port(serving))
            if failed is not None:
                load.candidate_off.set()
                verdict_at = time.monotonic()
                reason = failed.reason
                break
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(timeout=15)
    with load.lock:
        first = load.first_error
        answers = list(load.candidate_answers)
    result: dict[str, Any] = {"weight_percent": weight, "caught": verdict_at is not None}
    if first is not None and verdict_at is not None:
        result["first_error_to_verdict_ms"] = round((verdict_at - first) * 1000, 1)
        result["candidate_answers_meanwhile"] = sum(1 for t in answers if first < t <= verdict_at)
        result["candidate_answers_before_verdict"] = sum(1 for t in answers if t <= verdict_at)
    result["reason"] = reason
    return result


def synthetic(series: int) -> str:
    lines = ["# TYPE http_requests_total counter"]
    lines += [
        f'http_requests_total{{code="200",handler="/h{i}",method="get"}} {i}' for i in range(series)
    ]
    return "\n".join(lines) + "\n"


async def costs(port: int, rounds: int) -> dict[str, Any]:
    scrape_ms = []
    for _ in range(rounds):
        started = time.perf_counter()
        await scrape_port(port)
        scrape_ms.append((time.perf_counter() - started) * 1000)
    parse: dict[str, Any] = {}
    rule_metrics = analysis.parse_rule(RULE).metrics
    for series in (1000, 10000):
        text = synthetic(series)
        figures: dict[str, Any] = {"bytes": len(text)}
        for name, keep in (("parse_all_ms", None), ("parse_kept_ms", {"other_total"})):
            times = []
            for _ in range(max(3, rounds // 10)):
                started = time.perf_counter()
                scrape.parse(text, keep)
                times.append((time.perf_counter() - started) * 1000)
            figures[name] = common.summarize(times, 2)
        # the rule's own metric: every line is kept, the pre-filter saves nothing
        started = time.perf_counter()
        scrape.parse(text, rule_metrics)
        figures["parse_rule_metric_ms"] = round((time.perf_counter() - started) * 1000, 2)
        parse[str(series)] = figures
    return {"scrape_flaky_ms": common.summarize(scrape_ms, 2), "parse_synthetic": parse}


class FreshLoad:
    """Paced `Connection: close` clients through hotswapd's port: the selector splits them."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.interval = CLIENTS / rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[float, str, int]] = []  # (wall clock, X-Pid, status)
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(CLIENTS)]

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                response = conn.getresponse()
                response.read()
                with self.lock:
                    self.answers.append(
                        (time.time(), response.getheader("X-Pid", ""), response.status)
                    )
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.answers.append((time.time(), "", 0))
            finally:
                conn.close()
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)  # paced: a fixed request rate per client


def through_hotswapd(
    serving_bin: Path, candidate_bin: Path, weight: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One real swap at `weight`%: from the candidate's first 500 (as the client saw it)
    to the `swap_rolled_back` line, logged in the loop turn that sets its weight to 0."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-canary-"))
    program = tmp / "server"
    shutil.copy2(serving_bin, program)
    port = common.free_port()
    argv = [common.project_python(), "-m", "hotswapd", "--listen", f"http=tcp://127.0.0.1:{port}",
            "--health", "/healthz", "--settle", "0", "--canary", f"{weight}%:{args.seconds:g}s",
            "--analysis", RULE, "--", str(program)]  # fmt: skip
    proc = common.Process(argv, env=common.python_env())
    load = FreshLoad(port, args.rate)
    try:
        proc.wait_event("supervising")
        staged = tmp / "server.new"
        shutil.copy2(candidate_bin, staged)
        os.replace(staged, program)
        for thread in load.threads:
            thread.start()
        proc.signal(signal.SIGUSR2)
        finished = proc.wait_event("swap_finished", timeout=args.seconds + 30)
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(timeout=15)
        proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    candidate = str(proc.events("swap_spawned")[0]["pid"])
    rolled = proc.events("swap_rolled_back")
    result: dict[str, Any] = {"weight_percent": weight, "outcome": finished["outcome"],
                              "reason": finished["reason"]}  # fmt: skip
    with load.lock:
        answers = list(load.answers)
    errors = [at for at, pid, status in answers if pid == candidate and status >= 500]
    result["failed_requests"] = sum(1 for _, _, status in answers if status == 0)
    if rolled and errors:
        withdrawn = common.parse_timestamp(rolled[0]["timestamp"])
        first = min(errors)
        result["first_error_to_weight_0_ms"] = round((withdrawn - first) * 1000, 1)
        result["candidate_answers_meanwhile"] = sum(
            1 for at, pid, _ in answers if pid == candidate and first < at <= withdrawn
        )
    return result


def swap_main(args: argparse.Namespace) -> int:
    """--through-hotswapd: the wired path, a real swap per run."""
    serving_bin = build_flaky("v1", "0")
    candidate_bin = build_flaky("v2", "5")
    runs = {str(w): [through_hotswapd(serving_bin, candidate_bin, w, args)
                     for _ in range(args.rounds)] for w in WEIGHTS}  # fmt: skip
    rows = []
    for label, results in runs.items():
        caught = [r for r in results if "first_error_to_weight_0_ms" in r]
        latency = [r["first_error_to_weight_0_ms"] for r in caught]
        meanwhile = [r["candidate_answers_meanwhile"] for r in caught]
        rows.append([
            f"{label}%",
            f"{len(caught)}/{len(results)}",
            f"{statistics.median(latency):.0f}" if latency else "-",
            f"{max(latency):.0f}" if latency else "-",
            f"{statistics.median(meanwhile):.0f}" if meanwhile else "-",
            sum(r["failed_requests"] for r in results),
        ])  # fmt: skip
    print(f"through hotswapd: candidate flaky 5% errors, serving 0%; {args.rate:g} fresh "
          f"connections/s; rule {RULE}")  # fmt: skip
    print(common.table(["weight", "rolled back", "1st error→weight 0 ms (median)", "max",
                        "candidate answers meanwhile (median)", "failed requests"],
                       rows))  # fmt: skip
    common.write_json(args.json, {
        "machine": common.machine(),
        "settings": {"rate": args.rate, "seconds": args.seconds, "rounds": args.rounds,
                     "rule": RULE, "split": "hotswapd"},
        "runs": runs,
    })  # fmt: skip
    print(f"wrote {args.json}")
    return 0


def main() -> int:
    common.reexec_in_venv()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="longest run per weight")
    parser.add_argument("--rate", type=float, default=800.0, help="requests/s, both servers")
    parser.add_argument("--interval", type=float, default=0.25, help="scrape interval (s)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per weight")
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--through-hotswapd", action="store_true",
                        help="real swaps: hotswapd splits, its analysis judges")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 8.0  # 1%: the 20th candidate request is its first error
    if args.through_hotswapd:
        args.json = args.json or common.default_json("canary_swap")
        return swap_main(args)
    args.json = args.json or common.default_json("canary")
    serving_bin = build_flaky("v1", "0")
    candidate_bin = build_flaky("v2", "5")
    runs: dict[str, list[dict[str, Any]]] = {}
    for weight in WEIGHTS:
        for _ in range(args.rounds):
            # fresh servers per run: the 5% build's first error comes at its 20th request
            serving, candidate = Server(serving_bin), Server(candidate_bin)
            try:
                runs.setdefault(str(weight), []).append(
                    asyncio.run(catch(candidate.port, serving.port, weight, args))
                )
            finally:
                candidate.stop()
                serving.stop()
    serving = Server(serving_bin)
    try:
        cost = asyncio.run(costs(serving.port, 10 if args.quick else 50))
    finally:
        serving.stop()

    rows = []
    summary: dict[str, Any] = {}
    for label, results in runs.items():
        caught = [r for r in results if "first_error_to_verdict_ms" in r]
        latency = [r["first_error_to_verdict_ms"] for r in caught]
        meanwhile = [r["candidate_answers_meanwhile"] for r in caught]
        summary[label] = {
            "runs": len(results),
            "caught": len(caught),
            "first_error_to_verdict_ms": common.summarize(latency, 1) if latency else None,
            "candidate_answers_meanwhile": common.summarize(meanwhile, 1) if meanwhile else None,
        }
        rows.append([
            f"{label}%",
            f"{len(caught)}/{len(results)}",
            f"{statistics.median(latency):.0f}" if latency else "-",
            f"{max(latency):.0f}" if latency else "-",
            f"{statistics.median(meanwhile):.0f}" if meanwhile else "-",
        ])  # fmt: skip
    print(f"candidate: flaky 5% errors; serving: 0%; {args.rate:g} req/s; scrape every "
          f"{args.interval:g}s; rule {RULE}")  # fmt: skip
    print(common.table(["weight", "caught", "1st error→verdict ms (median)", "max",
                        "candidate answers meanwhile (median)"], rows))  # fmt: skip
    flaky_ms = cost["scrape_flaky_ms"]
    print(f"one scrape of the flaky server: {flaky_ms['median']} ms median, {flaky_ms['max']} max")
    for count, figures in cost["parse_synthetic"].items():
        print(f"parse {count} series ({figures['bytes']} bytes): "
              f"{figures['parse_all_ms']['median']} ms median; keeping one other metric "
              f"(lines pre-filtered): {figures['parse_kept_ms']['median']} ms")  # fmt: skip
    common.write_json(args.json, {
        "machine": common.machine(),
        "settings": {"rate": args.rate, "interval": args.interval, "seconds": args.seconds,
                     "rounds": args.rounds, "rule": RULE, "split": "client-side"},
        "weights": summary,
        "runs": runs,
        "costs": cost,
    })  # fmt: skip
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
