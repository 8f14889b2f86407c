#!/usr/bin/env python3
"""A child that speaks sd_notify, politely or not.

It prints `ready (pid: N)` once its handlers are in; SIGTERM ends it. SIGUSR1 makes it
send READY=1 to NOTIFY_SOCKET from its own process — with `--flood SECONDS`, only after
flooding NOTIFY_SOCKET for that long, as fast as it can, with datagrams whose fields
collide with log keys (GENERATION, EVENT, EXC_INFO, PID, LEVEL); it then prints
`flooded sent=N refused=M` first.
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
    told: list[bool] = []
    signal.signal(signal.SIGUSR1, lambda *_: told.append(True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    say(f"ready (pid: {os.getpid()})")
    while True:
        signal.pause()
        while told:
            told.pop()
            if args.flood:
                sent, refused = flood(args.flood)
                say(f"flooded sent={sent} refused={refused}")
            notify("READY=1\nSTATUS=told to")


if __name__ == "__main__":
    sys.exit(main())
