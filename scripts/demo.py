"""The demo behind the README's first command.

hotswapd runs as PID 1 of a fresh pid namespace with the example Go server v1 on a
shared socket. Under keep-alive load it swaps to v2 (SIGUSR2), then to a bad build
whose /healthz fails (rolled back, v2 keeps serving), then stops. It prints what
happened and exits non-zero if any request failed or an outcome was unexpected.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import Hotswapd  # noqa: E402 - the repo root must be on sys.path first
from tests.helpers import build_go_server, wait_until  # noqa: E402
from tests.load import Load  # noqa: E402


def install(src: Path, dest: Path) -> None:
    """Put a new build in place the way `go build -o` does: a new file renamed over the old."""
    staged = dest.with_name(dest.name + ".new")
    shutil.copy2(src, staged)
    os.replace(staged, dest)


def passed(deadline: float) -> bool:
    return time.monotonic() >= deadline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument("--seconds", type=float, default=2.0, help="load before each swap")
    args = parser.parse_args()

    work = REPO / "build" / "demo"
    shutil.rmtree(work, ignore_errors=True)
    (work / "app").mkdir(parents=True)
    print("building the example Go server: v1, v2, and a bad build (/healthz fails) ...")
    builds = {
        "v1": build_go_server(work / "server-v1", "v1"),
        "v2": build_go_server(work / "server-v2", "v2"),
        "v3-bad": build_go_server(work / "server-v3-bad", "v3-bad", "-X main.healthz=fail"),
    }
    program = work / "app" / "server"
    install(builds["v1"], program)

    options = ["--listen", "http=tcp://127.0.0.1:0", "--health", "/healthz",
               "--health-timeout", "3s", "--settle", "500ms", "--drain-timeout", "10s"]  # fmt: skip
    print("starting: hotswapd " + " ".join(options) + f" -- {program}  (as PID 1)")
    run = Hotswapd(options, [str(program)])
    swaps: list[dict[str, Any]] = []
    try:
        port = run.port()
        run.wait_event("supervising")
        with Load(port, connections=8) as load:
            for step, version in enumerate(("v2", "v3-bad"), start=1):
                deadline = time.monotonic() + args.seconds
                wait_until(partial(passed, deadline), args.seconds + 5, "load")
                install(builds[version], program)
                print(f"swap {step}: installed {version}, sending SIGUSR2 ...")
                run.signal(signal.SIGUSR2)
                outcome = run.wait_event("swap_finished", count=step, timeout=30)
                swaps.append({"to": version, **outcome})
            deadline = time.monotonic() + args.seconds
            wait_until(partial(passed, deadline), args.seconds + 5, "load")
            result = load.stop()
        run.signal(signal.SIGTERM)
        exit_code = run.wait(30)
    finally:
        run.kill_tree()

    ok = result.ok
    failed = len(result.failures)
    print()
    print(f"{'requests':<22}{ok + failed:>10}")
    print(f"{'failed requests':<22}{failed:>10}")
    print(f"{'hotswapd exit code':<22}{exit_code:>10}")
    print()
    print(f"{'swap to':<9}{'outcome':<13}{'spawn':>8}{'ready':>8}{'settle':>8}{'memory':>8}"
          f"{'cutover':>9}{'drain':>8}  reason")  # fmt: skip
    for swap in swaps:
        phases = swap["phases"]

        def ms(*names: str, phases: dict[str, float] = phases) -> str:
            for name in names:
                if name in phases:
                    return f"{phases[name] * 1000:.1f}"
            return "-"

        print(f"{swap['to']:<9}{swap['outcome']:<13}{ms('spawned'):>8}"
              f"{ms('ready', 'gate_failed'):>8}{ms('settled'):>8}{ms('memory_ok'):>8}"
              f"{ms('cutover'):>9}{ms('old_exited', 'candidate_stopped'):>8}"
              f"  {swap['reason']}")  # fmt: skip
    print("  (milliseconds per phase; a rolled-back swap shows its failed gate under 'ready'")
    print("   and the candidate's stop under 'drain')")
    print()
    print("responses by version: " + ", ".join(f"{version} {count}" for version, count in
                                               sorted(result.versions.items())))  # fmt: skip
    expected = ["committed", "rolled_back"]
    good = failed == 0 and [swap["outcome"] for swap in swaps] == expected and exit_code == 0
    print("result: " + ("OK — zero failed requests, the bad build was rolled back"
                        if good else "FAILED"))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({
            "requests": ok + failed, "failed": failed, "exit_code": exit_code,
            "versions": result.versions, "swaps": swaps, "failures": result.failures[:20],
        }, indent=2))  # fmt: skip
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
