"""Benchmark the ways to ship hotswapd without a Python base image, against today's venv.

    python bench/bench_freeze.py [--quick] [--runs 40] [--reuse] [--json PATH]

The three numbers that choose the tool, for each candidate, in one run:

- bytes: what the candidate adds to a `FROM scratch` image (the apparent size of its
  files, as a layer's tar holds them). Today's venv cannot go into scratch at all: its
  figure is the venv alone (pip and setuptools included, as the old image had it),
  plus the interpreter it needs (Debian's python3.11 and its stdlib, measured here).
- start → exec: CLOCK_MONOTONIC before the start to the child's first instruction,
  with bench_startup's clock child and exec_stamp (median of --runs, variants
  interleaved round after round so machine noise hits all alike).
- steady RSS: VmRSS of the supervisor with a child that stays up, read after its
  `supervising` event and a settle time (median of rounds).

Candidates, each built here from the lock files with Debian's python3.11 (the one the
Dockerfile freezes with) under build/bench/freeze/ (--reuse keeps existing builds):

    venv              today: a venv's console script (pip install of the lock + hotswapd)
    pyinstaller       PyInstaller one-dir, modules as .pyc files (what the image ships)
    pyinstaller_pyz   the same with PyInstaller's default zlib-compressed module archive
    relocatable       Debian's python3.11 binary + its stdlib (pruned, .pyc only) + the
                      venv's packages in one directory, run as `python3.11 -I -S -m hotswapd`

The three frozen ones carry glibc and the dynamic loader (docker/freeze/build.sh) so
they really run in an empty root. Prints a table and writes JSON
(default bench/results/freeze.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_startup
import common

DEBIAN_PYTHON = "/usr/bin/python3.11"
FREEZE = common.REPO / "docker" / "freeze" / "build.sh"
OUT = common.BUILD / "freeze"
LISTEN = ["--listen", "http=tcp://127.0.0.1:0"]
# Never imported by hotswapd: what the relocatable candidate leaves out of the stdlib.
STDLIB_PRUNE = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
                "pydoc_data", "distutils", "unittest", "sqlite3", "config-3.11-x86_64-linux-gnu",
                "site-packages", "dist-packages")  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    key: str
    label: str
    argv: list[str]  # the supervisor's argv before its own options
    root: Path  # what it adds to an image
    extra_bytes: int = 0  # what it needs besides root (venv: the interpreter)


def run(argv: list[str], **env: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env})
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def tree_bytes(path: Path) -> int:
    """Apparent size of every regular file under `path` (symlinks not followed)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                total += os.lstat(full).st_size
    return total


def build_venv(dest: Path) -> Path:
    """Today's runtime: a venv with the locked dependencies and hotswapd (not editable)."""
    shutil.rmtree(dest, ignore_errors=True)
    run([DEBIAN_PYTHON, "-m", "venv", str(dest)])
    pip = [str(dest / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir"]
    run([*pip, "-r", str(common.REPO / "requirements.lock")])
    run([*pip, "--no-deps", str(common.REPO)])
    return dest


def build_frozen(dest: Path, archive: bool) -> Path:
    """docker/freeze/build.sh into `dest` (its final place: the loader path is absolute)."""
    check = "1" if os.geteuid() == 0 else "0"
    run(["bash", str(FREEZE), str(dest)], PYTHON=DEBIAN_PYTHON, FREEZE_CHECK=check,
        HOTSWAPD_FREEZE_ARCHIVE="1" if archive else "0")  # fmt: skip
    return dest


def build_relocatable(dest: Path, venv: Path) -> Path:
    """Debian's interpreter, its stdlib and the venv's packages, with glibc, in one tree."""
    shutil.rmtree(dest, ignore_errors=True)
    lib = dest / "lib"
    stdlib = lib / "python3.11"
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(os.path.realpath(DEBIAN_PYTHON), dest / "bin" / "python3.11")
    ignore = shutil.ignore_patterns(*STDLIB_PRUNE, "__pycache__")
    shutil.copytree("/usr/lib/python3.11", stdlib, ignore=ignore, symlinks=False)
    site = venv / "lib" / "python3.11" / "site-packages"
    skip = shutil.ignore_patterns("pip", "pip-*", "setuptools*", "_distutils_hack", "pkg_resources",
                                  "distutils-precedence.pth", "__pycache__")  # fmt: skip
    shutil.copytree(site, stdlib, ignore=skip, dirs_exist_ok=True)
    # Byte code only, next to where the source was (-b), as a frozen tree would ship it.
    run([DEBIAN_PYTHON, "-m", "compileall", "-q", "-b", "-j0", str(stdlib)])
    for source in stdlib.rglob("*.py"):
        source.unlink()
    # glibc and every library the interpreter and the extension modules need.
    elves = [dest / "bin" / "python3.11", *stdlib.rglob("*.so")]
    needed: set[str] = set()
    for elf in elves:
        ldd = subprocess.run(["ldd", str(elf)], capture_output=True, text=True).stdout
        for line in ldd.splitlines():
            parts = line.split()
            if "=>" in parts and parts[parts.index("=>") + 1].startswith("/"):
                needed.add(parts[parts.index("=>") + 1])
            elif parts and parts[0].startswith("/") and "ld-linux" in parts[0]:
                needed.add(parts[0])
    for path in needed:
        shutil.copy2(os.path.realpath(path), lib / os.path.basename(path))
    loader = next(lib.glob("ld-linux*"))
    # DT_RPATH (not RUNPATH): it also serves the extension modules' own dependencies.
    run(["patchelf", "--set-interpreter", str(loader), "--force-rpath", "--set-rpath", str(lib),
         str(dest / "bin" / "python3.11")])  # fmt: skip
    return dest


def interpreter_bytes() -> int:
    """What a venv needs beside it: Debian's python3.11 binary and its stdlib."""
    return os.path.getsize(os.path.realpath(DEBIAN_PYTHON)) + tree_bytes(
        Path("/usr/lib/python3.11")
    )


def candidates(reuse: bool) -> list[Candidate]:
    OUT.mkdir(parents=True, exist_ok=True)
    venv, frozen, pyz, reloc = (
        OUT / name for name in ("venv", "pyinstaller", "pyz", "relocatable")
    )
    if not (reuse and (venv / "bin" / "hotswapd").exists()):
        print("building the venv", file=sys.stderr)
        build_venv(venv)
    if not (reuse and (frozen / "hotswapd").exists()):
        print("freezing with PyInstaller (.pyc files)", file=sys.stderr)
        build_frozen(frozen, archive=False)
    if not (reuse and (pyz / "hotswapd").exists()):
        print("freezing with PyInstaller (archive)", file=sys.stderr)
        build_frozen(pyz, archive=True)
    if not (reuse and (reloc / "bin" / "python3.11").exists()):
        print("assembling the relocatable interpreter", file=sys.stderr)
        build_relocatable(reloc, venv)
    reloc_argv = [str(reloc / "bin" / "python3.11"), "-I", "-S", "-m", "hotswapd"]
    return [
        Candidate(
            "venv",
            "venv console script (today)",
            [str(venv / "bin" / "hotswapd")],
            venv,
            interpreter_bytes(),
        ),
        Candidate(
            "pyinstaller", "PyInstaller one-dir, .pyc files", [str(frozen / "hotswapd")], frozen
        ),
        Candidate("pyinstaller_pyz", "PyInstaller one-dir, archive", [str(pyz / "hotswapd")], pyz),
        Candidate("relocatable", "relocatable python3.11 -I -S -m", reloc_argv, reloc),
    ]


def measure_exec(cands: list[Candidate], child: Path, runs: int, warmup: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {c.key: [] for c in cands}
    env = common.python_env(True)
    for round_no in range(warmup + runs):
        shift = round_no % len(cands)
        for cand in cands[shift:] + cands[:shift]:
            argv = [*cand.argv, *LISTEN, "--", str(child)]
            started = time.monotonic_ns()
            line, err = bench_startup.exec_stamp(argv, env)
            if len(line) != 2:
                raise RuntimeError(f"{cand.key}: no timestamp from the child\n{err[-2000:]}")
            if round_no >= warmup:
                samples[cand.key].append((int(line[0]) - started) / 1e6)
            bench_startup.reap_orphans()
    return {key: common.summarize(values, 2) for key, values in samples.items()}


def measure_rss(cands: list[Candidate], child: Path, rounds: int, settle: float) -> dict[str, Any]:
    readings: dict[str, list[int]] = defaultdict(list)
    env = common.python_env(True)  # JSON logs: the supervising event is waited on
    for _ in range(rounds):
        procs = {c.key: common.Process([*c.argv, *LISTEN, "--", str(child), "hold"], env)
                 for c in cands}  # fmt: skip
        try:
            for proc in procs.values():
                proc.wait_event("supervising", timeout=30)
            time.sleep(settle)  # a measurement window: RSS once the loop has settled
            for key, proc in procs.items():
                readings[key].append(common.vm_status(proc.pid)["VmRSS"])
        finally:
            for proc in procs.values():
                proc.stop()
            bench_startup.reap_orphans()
    return {key: {"median_kib": statistics.median(values), "n": len(values)}
            for key, values in readings.items()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few runs only (smoke test)")
    parser.add_argument("--runs", type=int, default=None, help="runs per candidate (default 40)")
    parser.add_argument("--rss-rounds", type=int, default=None, help="default 3")
    parser.add_argument("--reuse", action="store_true", help="keep builds already there")
    parser.add_argument("--json", type=Path, default=common.default_json("freeze"))
    args = parser.parse_args(argv)
    runs = args.runs or (5 if args.quick else 40)
    rounds = args.rss_rounds or (1 if args.quick else 3)
    if not os.path.exists(DEBIAN_PYTHON) or shutil.which("patchelf") is None:
        print(f"needs {DEBIAN_PYTHON} with libpython3.11 and python3.11-dev, and patchelf "
              "(apt-get install python3.11-dev patchelf)", file=sys.stderr)  # fmt: skip
        return 1
    cands = candidates(args.reuse)
    child = bench_startup.build_child()
    bench_startup.become_subreaper()
    exec_ms = measure_exec(cands, child, runs, 1 if args.quick else 3)
    rss = measure_rss(cands, child, rounds, 0.3 if args.quick else 1.0)
    results: dict[str, Any] = {"machine": common.machine(), "quick": args.quick, "runs": runs,
                               "candidates": {}}  # fmt: skip
    rows = []
    for cand in cands:
        size = tree_bytes(cand.root)
        row = {"label": cand.label, "bytes": size, "needs_besides_bytes": cand.extra_bytes,
               "start_to_exec_ms": exec_ms[cand.key], "steady_rss_kib": rss[cand.key]}  # fmt: skip
        results["candidates"][cand.key] = row
        extra = f" + {cand.extra_bytes / 1e6:.1f} interpreter" if cand.extra_bytes else ""
        rows.append([cand.label, f"{size / 1e6:.1f}{extra}", f"{exec_ms[cand.key]['median']:.2f}",
                     f"{exec_ms[cand.key]['p90']:.2f}",
                     f"{rss[cand.key]['median_kib'] / 1024:.1f}"])  # fmt: skip
    print(common.table(["candidate", "MB added", "start→exec ms", "p90 ms", "RSS MiB"], rows))
    print(f"(start → exec: median of {runs} interleaved runs; RSS: median of {rounds} rounds)")
    common.write_json(args.json, results)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    common.reexec_in_venv()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
