"""Benchmark the hot swap: failed requests under load, and the swap's own overhead.

    python bench/bench_swap.py [--quick] [--swaps 20] [--json PATH] [--png PATH]

Two runs, same example Go server, same keep-alive load (tests/load.py, one persistent
connection per worker), same schedule (one swap every --interval seconds after a
--warmup of steady load):

  hotswapd        SIGUSR2 → spawn on the shared socket, /healthz gate on the new
                  generation's probe listener, memory gate, cutover, drain of the old one
  naive restart   a plain supervisor: SIGTERM the server, wait for it to exit, start the
                  new one, which binds its own -addr port (what `docker restart` does)

Each swap installs the other build (v1 ↔ v2) at the program path first, by rename.

Reports requests, failures and error rate for each run, the longest time without a
successful response, and, from hotswapd's logs, the swap overhead: the time from the
candidate passing its last gate (swap_memory_ok, or swap_ready without the memory gate)
to the old generation being signalled (swap_cutover; goal <= 10 ms), SIGUSR2 → cutover,
and the median of every phase. Writes JSON (default bench/results/swap.json) and a chart
of requests/s and errors per 100 ms with the swaps marked (default bench/results/swap.png).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

from tests.load import Load, LoadResult

GOAL_GATE_TO_SIGNAL_MS = 10.0
BUCKET_S = 0.1
HOTSWAPD_OPTIONS = [
    "--listen",
    "http=tcp://127.0.0.1:0",
    "--health",
    "/healthz",
    "--health-timeout",
    "5s",
    "--settle",
    "0",
    "--drain-timeout",
    "10s",
    "--stop-timeout",
    "10s",
]

# The naive supervisor. It binds nothing: the server binds its own -addr port. On
# SIGUSR2 it stops the server (SIGTERM, wait for the exit) and starts the new one.
NAIVE_RESTART = """\
import json, os, signal, subprocess, sys, time

def log(event, **fields):
    os.write(2, (json.dumps({"event": event, "t": time.time(), **fields}) + "\\n").encode())

wake_read, wake_write = os.pipe()
os.set_blocking(wake_write, False)
signal.set_wakeup_fd(wake_write)
for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: None)
child = subprocess.Popen(sys.argv[1:])
log("started", pid=child.pid)
while True:
    for sig in os.read(wake_read, 64):
        if sig == signal.SIGUSR2:
            log("restart_requested", pid=child.pid)
            child.terminate()
            status = child.wait()
            log("stopped", pid=child.pid, status=status)
            child = subprocess.Popen(sys.argv[1:])
            log("started", pid=child.pid)
        elif sig in (signal.SIGTERM, signal.SIGINT):
            child.terminate()
            sys.exit(0 if child.wait() == 0 else 1)
"""


def install(src: Path, dest: Path) -> None:
    """Replace the program as a build does: a new file renamed into place."""
    temp = dest.with_name(dest.name + ".new")
    shutil.copy2(src, temp)
    os.replace(temp, dest)


def sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# --------------------------------------------------------------------------- one run


class Schedule:
    def __init__(self, swaps: int, interval: float, warmup: float, connections: int) -> None:
        self.swaps = swaps
        self.interval = interval
        self.warmup = warmup
        self.connections = connections


def drive(
    proc: common.Process,
    port: int,
    program: Path,
    builds: list[Path],
    schedule: Schedule,
    swap_once: Callable[[int, float], dict[str, Any]],
) -> tuple[LoadResult, list[float], list[dict[str, Any]], float]:
    """Load the server and swap on schedule; returns (load, swap times, records, duration)."""
    marks: list[float] = []
    records: list[dict[str, Any]] = []
    with Load(port, connections=schedule.connections) as load:
        for index in range(1, schedule.swaps + 1):
            install(builds[index % 2], program)
            sleep_until(load.started + schedule.warmup + (index - 1) * schedule.interval)
            marks.append(time.monotonic() - load.started)
            sent = time.time()
            proc.signal(signal.SIGUSR2)
            records.append(swap_once(index, sent))
        sleep_until(load.started + schedule.warmup + schedule.swaps * schedule.interval)
        result = load.stop()
        duration = time.monotonic() - load.started
    return result, marks, records, duration


def run_hotswapd(program: Path, builds: list[Path], schedule: Schedule) -> dict[str, Any]:
    argv = [common.project_python(), "-m", "hotswapd", *HOTSWAPD_OPTIONS, "--", str(program)]
    proc = common.Process(argv, common.python_env())
    try:
        listening = proc.wait_event("listening")
        port = int(str(listening["address"]).rsplit(":", 1)[1])
        proc.wait_stdout("ready pid=")
        proc.wait_event("supervising")  # signal handlers are in: a SIGUSR2 now is a swap
        rss_before = common.vm_status(proc.pid)

        def swap_once(index: int, sent: float) -> dict[str, Any]:
            finished = proc.wait_event("swap_finished", count=index, timeout=60)
            return hotswapd_record(proc, index, sent, finished)

        result, marks, records, duration = drive(proc, port, program, builds, schedule, swap_once)
        rss_after = common.vm_status(proc.pid)
    finally:
        exit_code = proc.stop()
    summary = load_summary(result, duration)
    committed = sum(1 for r in records if r["outcome"] == "committed")
    summary.update(
        swaps=len(records),
        swaps_committed=committed,
        exit_code=exit_code,
        hotswapd_rss_kib={"before_swaps": rss_before["VmRSS"], "after_swaps": rss_after["VmRSS"]},
        per_swap=records,
    )
    return {"summary": summary, "marks": marks, "timeline": result.timeline}


def hotswapd_record(
    proc: common.Process, index: int, sent: float, finished: dict[str, Any]
) -> dict[str, Any]:
    """One swap's figures, from its swap_* events and the time SIGUSR2 was sent."""

    def event(name: str) -> dict[str, Any] | None:
        return next((e for e in proc.events(name) if e.get("swap") == index), None)

    phases: dict[str, float] = dict(finished.get("phases", {}))
    record: dict[str, Any] = {
        "swap": index,
        "outcome": finished.get("outcome"),
        "reason": finished.get("reason"),
        "active_pid": finished.get("active_pid"),
        "phases_ms": {name: ms(value) for name, value in phases.items()},
    }
    requested = event("swap_requested")
    cutover = event("swap_cutover")
    if requested is not None:
        record["signal_to_requested_ms"] = ms(common.parse_timestamp(requested["timestamp"]) - sent)
    if "cutover" in phases and cutover is not None:
        names = list(phases)
        last_gate = names[names.index("cutover") - 1]
        gate = event("swap_" + last_gate)
        record["last_gate"] = last_gate
        record["gate_to_signal_ms"] = ms(phases["cutover"])
        if gate is not None:
            record["gate_to_signal_ms_log_timestamps"] = ms(
                common.parse_timestamp(cutover["timestamp"])
                - common.parse_timestamp(gate["timestamp"])
            )
        record["signal_to_cutover_ms"] = ms(common.parse_timestamp(cutover["timestamp"]) - sent)
    record["signal_to_finished_ms"] = ms(common.parse_timestamp(finished["timestamp"]) - sent)
    return record


def run_naive(program: Path, builds: list[Path], schedule: Schedule) -> dict[str, Any]:
    port = common.free_port()
    argv = [sys.executable, "-c", NAIVE_RESTART, str(program), "-addr", f"127.0.0.1:{port}"]
    proc = common.Process(argv, common.clean_env())
    try:
        proc.wait_stdout("ready pid=")

        def swap_once(index: int, sent: float) -> dict[str, Any]:
            ready_at = proc.wait_stdout("ready pid=", count=index + 1, timeout=60)
            stopped = proc.wait_event("stopped", count=index)
            return {
                "restart": index,
                "signal_to_old_exited_ms": ms(float(stopped["t"]) - sent),
                "signal_to_new_ready_ms": ms(ready_at - sent),
                "old_status": stopped.get("status"),
            }

        result, marks, records, duration = drive(proc, port, program, builds, schedule, swap_once)
    finally:
        exit_code = proc.stop()
    summary = load_summary(result, duration)
    summary.update(
        restarts=len(records),
        exit_code=exit_code,
        signal_to_new_ready_ms=common.summarize([r["signal_to_new_ready_ms"] for r in records]),
        per_restart=records,
    )
    return {"summary": summary, "marks": marks, "timeline": result.timeline}


def load_summary(result: LoadResult, duration: float) -> dict[str, Any]:
    """Requests, failures, error rate, failure kinds, longest gap between successes."""
    failures = len(result.failures)
    requests = result.ok + failures
    kinds = Counter(failure.split("(", 1)[0].split(":", 1)[0] for failure in result.failures)
    successes = sorted(at for at, ok in result.timeline if ok)
    gaps = [b - a for a, b in itertools.pairwise(successes)]
    return {
        "requests": requests,
        "ok": result.ok,
        "failures": failures,
        "error_rate_pct": round(100 * failures / requests, 4) if requests else 0.0,
        "failure_kinds": dict(kinds.most_common()),
        "longest_gap_without_success_ms": ms(max(gaps)) if gaps else None,
        "requests_per_s": round(requests / duration, 1) if duration else 0.0,
        "duration_s": round(duration, 2),
        "distinct_responding_pids": len(set(result.pids)),
    }


# --------------------------------------------------------------------------- figures


def overhead(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and max of the hotswapd swap overhead figures, and per-phase medians."""
    committed = [r for r in records if r["outcome"] == "committed"]
    out: dict[str, Any] = {
        "goal_gate_to_signal_ms": GOAL_GATE_TO_SIGNAL_MS,
        "swaps_measured": len(committed),
    }
    figures = (
        "gate_to_signal_ms",
        "gate_to_signal_ms_log_timestamps",
        "signal_to_requested_ms",
        "signal_to_cutover_ms",
        "signal_to_finished_ms",
    )
    for key in figures:
        values = [r[key] for r in committed if key in r]
        if values:
            out[key] = common.summarize(values)
    # Swap 1 has no generation from before the previous one to release in the commit;
    # every later swap does. Reported apart so a cost in that release shows up.
    first = [r["gate_to_signal_ms"] for r in committed[:1] if "gate_to_signal_ms" in r]
    later = [r["gate_to_signal_ms"] for r in committed[1:] if "gate_to_signal_ms" in r]
    if first:
        out["gate_to_signal_first_swap_ms"] = first[0]
    if later:
        out["gate_to_signal_later_swaps_ms"] = common.summarize(later)
    gates = Counter(r.get("last_gate") for r in committed)
    out["last_gate"] = dict(gates)
    phase_names: list[str] = []
    for record in committed:
        phase_names.extend(p for p in record["phases_ms"] if p not in phase_names)
    out["phase_ms"] = {
        name: common.summarize([r["phases_ms"][name] for r in committed if name in r["phases_ms"]])
        for name in phase_names
    }
    if "gate_to_signal_ms" in out:
        out["goal_met"] = out["gate_to_signal_ms"]["max"] <= GOAL_GATE_TO_SIGNAL_MS
    return out


def buckets(
    timeline: list[tuple[float, bool]], end: float
) -> tuple[list[float], list[int], list[int]]:
    """(bucket start times, successes, failures) per whole BUCKET_S before `end`."""
    count = max(1, int(end / BUCKET_S))
    ok = [0] * count
    bad = [0] * count
    for at, success in timeline:
        index = int(at / BUCKET_S)
        if index >= count:
            continue  # the last, partial bucket would read as a dip
        if success:
            ok[index] += 1
        else:
            bad[index] += 1
    return [i * BUCKET_S for i in range(count)], ok, bad


def chart(runs: dict[str, dict[str, Any]], labels: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"hotswapd": "#1f77b4", "naive_restart": "#d62728"}
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    for key, run in runs.items():
        summary = run["summary"]
        times, ok, bad = buckets(run["timeline"], summary["duration_s"])
        times.append(times[-1] + BUCKET_S)  # close the last step
        color = colors.get(key, "gray")
        top.stairs(
            [n / BUCKET_S for n in ok],
            times,
            baseline=None,
            color=color,
            linewidth=1.2,
            label=f"{labels[key]}: {summary['ok']} ok",
        )
        bottom.stairs(
            bad,
            times,
            baseline=None,
            color=color,
            linewidth=1.2,
            label=f"{labels[key]}: {summary['failures']} failed ({summary['error_rate_pct']:.3g}%)",
        )
    # Both runs follow the same schedule, so their swap marks coincide within a few ms.
    marks = [mark for run in runs.values() for mark in run["marks"]]
    for axis in (top, bottom):
        for index, mark in enumerate(marks):
            axis.axvline(
                mark,
                color="0.35",
                linestyle=":",
                linewidth=0.9,
                label="swap / restart signalled" if index == 0 else None,
            )
        axis.grid(True, alpha=0.25)
        axis.set_ylim(bottom=0)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    top.set_ylabel("successful requests/s\n(100 ms buckets)")
    top.set_title(
        "Keep-alive load across swaps: hotswapd vs a naive stop-then-start restart", fontsize=11
    )
    bottom.set_ylabel("failed requests\nper 100 ms")
    bottom.set_xlabel("seconds since the load started")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def bench(args: argparse.Namespace) -> dict[str, Any]:
    builds = [common.go_server("v1"), common.go_server("v2")]
    schedule = Schedule(args.swaps, args.interval, args.warmup, args.connections)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        for key, runner in (("hotswapd", run_hotswapd), ("naive_restart", run_naive)):
            program = Path(tmp) / key / "server"
            program.parent.mkdir()
            install(builds[0], program)
            runs[key] = runner(program, builds, schedule)
    labels = {
        "hotswapd": "hotswapd\n(SIGUSR2 swap, --health /healthz)",
        "naive_restart": "naive restart\n(TERM, wait for exit, start)",
    }
    chart(runs, labels, args.png)
    return {
        "machine": common.machine(),
        "config": {
            "swaps": args.swaps,
            "interval_s": args.interval,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "load": "tests/load.py Load: keep-alive HTTP/1.1 GET /, one connection per worker",
            "server": "example Go server (docker/server), builds v1 and v2 alternating",
            "hotswapd_options": HOTSWAPD_OPTIONS,
            "bucket_s": BUCKET_S,
        },
        "hotswapd": runs["hotswapd"]["summary"],
        "naive_restart": runs["naive_restart"]["summary"],
        "overhead": overhead(runs["hotswapd"]["summary"]["per_swap"]),
        "chart": str(args.png),
    }


def print_report(results: dict[str, Any]) -> None:
    config = results["config"]
    print(
        f"{config['swaps']} swaps under keep-alive load ({config['connections']} connections, "
        f"one swap every {config['interval_s']:g} s)"
    )
    rows = []
    for key, label in (("hotswapd", "hotswapd"), ("naive_restart", "naive restart")):
        run = results[key]
        rows.append(
            [
                label,
                run["requests"],
                run["failures"],
                f"{run['error_rate_pct']:.3f}%",
                f"{run['longest_gap_without_success_ms']:.1f}",
                run["requests_per_s"],
                run["distinct_responding_pids"],
            ]
        )
    print(
        common.table(
            ["run", "requests", "failed", "error rate", "longest gap ms", "req/s", "pids"], rows
        )
    )
    for key in ("hotswapd", "naive_restart"):
        if results[key]["failure_kinds"]:
            print(f"  {key} failures: {results[key]['failure_kinds']}")
    hot = results["hotswapd"]
    print(
        f"  hotswapd: {hot['swaps_committed']}/{hot['swaps']} swaps committed; "
        f"hotswapd VmRSS {hot['hotswapd_rss_kib']['before_swaps'] / 1024:.1f} MiB before, "
        f"{hot['hotswapd_rss_kib']['after_swaps'] / 1024:.1f} MiB after the swaps"
    )
    naive = results["naive_restart"]["signal_to_new_ready_ms"]
    print(
        f"  naive restart: signal → new server ready median {naive['median']:.1f} ms, "
        f"max {naive['max']:.1f} ms"
    )
    print()
    over = results["overhead"]
    print(
        f"hotswapd swap overhead, ms ({over['swaps_measured']} committed swaps; "
        f"last gate: {', '.join(str(g) for g in over['last_gate'])})"
    )
    labels = {
        "gate_to_signal_ms": "last gate passed → old generation signalled",
        "gate_to_signal_ms_log_timestamps": "  same, from the log timestamps",
        "signal_to_requested_ms": "SIGUSR2 → swap_requested",
        "signal_to_cutover_ms": "SIGUSR2 → cutover (old signalled)",
        "signal_to_finished_ms": "SIGUSR2 → swap finished (old exited)",
    }
    rows = [
        [label, *(f"{over[key][stat]:.2f}" for stat in ("median", "p90", "max"))]
        for key, label in labels.items()
        if key in over
    ]
    print(common.table(["figure", "median", "p90", "max"], rows))
    if "gate_to_signal_later_swaps_ms" in over:
        print(
            f"  gate → signal, swap 1: {over['gate_to_signal_first_swap_ms']:.2f} ms; "
            f"swaps 2..: median {over['gate_to_signal_later_swaps_ms']['median']:.2f} ms"
        )
    verdict = "met" if over.get("goal_met") else "MISSED"
    print(f"goal: gate → signal <= {GOAL_GATE_TO_SIGNAL_MS:g} ms (max over the swaps): {verdict}")
    print("per-phase durations, ms (each phase: from the previous phase's end)")
    print(
        common.table(
            ["phase", "median", "max"],
            [
                [name, f"{s['median']:.2f}", f"{s['max']:.2f}"]
                for name, s in over["phase_ms"].items()
            ],
        )
    )
    print(f"chart: {results['chart']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 swaps (smoke test)")
    parser.add_argument("--swaps", type=int, default=None, help="default 20 (quick: 3)")
    parser.add_argument("--interval", type=float, default=None, help="seconds between swaps (1.0)")
    parser.add_argument("--warmup", type=float, default=None, help="load before swap 1 (1.0 s)")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections")
    parser.add_argument("--json", type=Path, default=common.default_json("swap"))
    parser.add_argument("--png", type=Path, default=common.RESULTS / "swap.png")
    args = parser.parse_args(argv)
    args.swaps = args.swaps or (3 if args.quick else 20)
    args.interval = args.interval or (0.8 if args.quick else 1.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    results = bench(args)
    results["quick"] = args.quick
    print_report(results)
    common.write_json(args.json, results)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    common.reexec_in_venv()
    sys.exit(main())
