"""Benchmark the selector: new connections/s with hotswapd's program attached vs none.

    python bench/bench_steer.py [--rounds 15] [--seconds 0.4] [--json PATH]

Connection: close style load, as plain TCP on loopback: the client connects, the
listener accepts and closes first (the server side keeps the TIME_WAIT, as an HTTP
server closing after its answer does), the client reads the FIN and closes. One loop
does both ends, the same code for every variant; only the kernel's work per SYN
differs:

    shared               one listener, no program (today's shared socket)
    steered, probing     two members; the probing program: every SYN is checked for
                         the probe source (version nibble, source address) -> active
    steered, canary 20%  the same plus SKF_AD_RANDOM % 100 < 20 -> candidate

Variants run interleaved, round after round, so machine noise hits all alike; the
figure per variant is the median over rounds, and "paired" is the median of each
round's rate over the shared socket's rate in the same round. Wall-clock rates swing with whatever
else the machine runs; this process's CPU time per connection (user + system, which
includes the loopback's softirq work done on its behalf) is the steadier figure.
Prints a table and writes JSON (default bench/results/steer.json).
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import common

from hotswapd.steer.bpf import Plan, attach, build
from hotswapd.steer.probe import ProbeSource

BACKLOG = 1024


class Variant:
    """One way the port is served: its members and the program (if any) on the group."""

    def __init__(self, name: str, members: int, plan: Plan | None) -> None:
        self.name, self.plan = name, plan
        self.socks: list[socket.socket] = []
        port = 0
        for _ in range(members):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
            port = sock.getsockname()[1]
            self.socks.append(sock)
        self.port = port
        if plan is not None:
            attach(self.socks[0], build(plan))
        self.rates: list[float] = []
        self.cpu_us: list[float] = []  # this process's CPU (user + system) per connection
        self.landed = [0] * members

    def run(self, seconds: float) -> None:
        """Connect, accept, close for `seconds`; record connections/s and CPU per connection."""
        count, start, cpu = 0, time.perf_counter(), time.process_time()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            client = socket.create_connection(("127.0.0.1", self.port))
            readable, _, _ = select.select(self.socks, [], [], 5.0)
            if not readable:
                raise RuntimeError(f"{self.name}: no member accepted within 5 s")
            conn, _ = readable[0].accept()
            conn.close()
            client.recv(1)  # the FIN
            client.close()
            self.landed[self.socks.index(readable[0])] += 1
            count += 1
        self.rates.append(count / (time.perf_counter() - start))
        self.cpu_us.append((time.process_time() - cpu) / count * 1e6)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def bench(rounds: int, seconds: float) -> dict[str, Any]:
    source = ProbeSource()
    match = source.match
    variants = [
        Variant("shared", 1, None),
        Variant("steered, probing", 2, Plan(active=0, candidate=1, probe=match)),
        Variant("steered, canary 20%", 2, Plan(0, 1, probe=match, candidate_percent=20)),
    ]
    try:
        for variant in variants:
            variant.run(seconds / 5)  # warm-up, not recorded
            variant.rates.clear()
            variant.cpu_us.clear()
            variant.landed = [0] * len(variant.socks)
        for round_ in range(rounds):
            for variant in variants[round_ % 3 :] + variants[: round_ % 3]:
                variant.run(seconds)
    finally:
        for variant in variants:
            variant.close()
        source.close()
    shared = statistics.median(variants[0].rates)
    shared_cpu = statistics.median(variants[0].cpu_us)
    rows = {}
    for variant in variants:
        median = statistics.median(variant.rates)
        rows[variant.name] = {
            "connections_per_s": common.summarize(variant.rates, 0),
            "vs_shared": round(median / shared, 3),
            # each round's rate over the shared socket's in the same round: drifts cancel
            "paired_vs_shared": round(
                statistics.median(
                    r / s for r, s in zip(variant.rates, variants[0].rates, strict=True)
                ),
                3,
            ),
            "cpu_us_per_connection": common.summarize(variant.cpu_us, 2),
            "cpu_vs_shared": round(statistics.median(variant.cpu_us) / shared_cpu, 3),
            "landed_per_member": variant.landed,
            "candidate_share": round(variant.landed[-1] / sum(variant.landed), 4)
            if len(variant.landed) > 1
            else None,
        }
    return {
        "machine": common.machine(),
        "rounds": rounds,
        "seconds_per_round": seconds,
        "variants": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=0.4)
    parser.add_argument("--json", type=Path, default=common.default_json("steer"))
    args = parser.parse_args(argv)
    data = bench(args.rounds, args.seconds)
    headers = ["variant", "conn/s median", "min", "max", "vs shared", "paired", "CPU µs/conn",
               "vs shared", "candidate share"]  # fmt: skip
    table = []
    for name, row in data["variants"].items():
        rates, cpu, share = (
            row["connections_per_s"],
            row["cpu_us_per_connection"],
            row["candidate_share"],
        )
        ratios = [f"{row[key]:.3f}" for key in ("vs_shared", "paired_vs_shared", "cpu_vs_shared")]
        table.append([name, rates["median"], rates["min"], rates["max"], *ratios[:2], cpu["median"],
                      ratios[2], "-" if share is None else f"{share:.1%}"])  # fmt: skip
    print(common.table(headers, table))
    common.write_json(args.json, data)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    common.reexec_in_venv()
    sys.exit(main())
