#!/usr/bin/env python3
"""A child that speaks sd_notify, politely or not.

It prints `ready (pid: N)` once its handlers are in. SIGUSR1 makes it send READY=1 to
NOTIFY_SOCKET from its own process; SIGTERM ends it. With `--flood SECONDS` it first
floods NOTIFY_SOCKET as fast as it can with datagrams whose fields collide with log
keys (GENERATION, EVENT, EXC_INFO, PID), prints `flooded sent=N refused=M` and then
sends one real READY=1.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time

HOSTILE = "GENERATION=99\nEVENT=forged\nEXC_INFO=1\nPID=7\nLEVEL=critical\nSTATUS=flood {n}\n"


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def address() -> str:
    name = os.environ["NOTIFY_SOCKET"]
    return "\0" + name[1:] if name.startswith("@") else name


def notify(text: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(text.encode(), address())


def flood(seconds: float) -> tuple[int, int]:
    sent = refused = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        target = address()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                sock.sendto(HOSTILE.format(n=sent).encode(), target)
                sent += 1
            except BlockingIOError:  # the receiver's queue is full: it is reading slowly
                refused += 1
    return sent, refused


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood", type=float, default=0.0, help="flood for this many seconds")
    args = parser.parse_args()
    signal.signal(signal.SIGUSR1, lambda *_: notify("READY=1\nSTATUS=told to"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    say(f"ready (pid: {os.getpid()})")
    if args.flood:
        sent, refused = flood(args.flood)
        say(f"flooded sent={sent} refused={refused}")
        notify("READY=1\nSTATUS=after the flood")
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
