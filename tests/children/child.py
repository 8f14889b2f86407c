#!/usr/bin/env python3
"""A fake child for tests (after dumb-init's print_signals): says what it sees, line by line.

It prints `ready (pid: N)` once its handlers are in, then one line per signal
(`signal SIGHUP`), so tests read lines instead of sleeping.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exit", type=int, default=None, help="exit with this code at once")
    parser.add_argument("--die-by", default=None, help="kill itself with this signal")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--orphans", type=int, default=0, help="leave N orphaned grandchildren")
    parser.add_argument("--report", action="store_true", help="print fds, sigmask, env")
    parser.add_argument("--term-exit", type=int, default=0, help="exit code on TERM/INT")
    args = parser.parse_args()

    if args.report:
        dirfd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
        fds = sorted(int(fd) for fd in os.listdir(dirfd) if int(fd) != dirfd)
        os.close(dirfd)
        say("fds " + " ".join(str(fd) for fd in fds))
        with open("/proc/self/status") as handle:
            status = handle.read()
        for line in status.splitlines():
            if line.startswith(("SigBlk", "SigIgn")):
                say(line.replace("\t", " "))
        for key in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "NOTIFY_SOCKET"):
            say(f"env {key}={os.environ.get(key, '')}")
        say(f"pid {os.getpid()} pgid {os.getpgid(0)} uid {os.getuid()}")
    if args.orphans:
        for _ in range(args.orphans):
            if os.fork() == 0:
                if os.fork() == 0:
                    os._exit(0)  # the grandchild exits at once: an orphan zombie for PID 1
                os._exit(0)
            os.wait()
        say(f"orphans {args.orphans}")
    if args.exit is not None:
        return int(args.exit)
    if args.die_by:
        sig = getattr(signal, "SIG" + args.die_by)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)  # a default-action signal to self is delivered right here
        time.sleep(5)  # not reached unless the signal was blocked; then fail visibly
        return 99

    def handler(sig: int, _frame: object) -> None:
        rt = sig - signal.SIGRTMIN
        name = signal.Signals(sig).name if rt < 0 else f"SIGRTMIN+{rt}"
        say(f"signal {name}")
        if sig in (signal.SIGTERM, signal.SIGINT) and not args.ignore_term:
            sys.exit(args.term_exit)

    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            continue
        try:
            signal.signal(sig, handler)
        except (OSError, ValueError):
            continue
    say(f"ready (pid: {os.getpid()})")
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
