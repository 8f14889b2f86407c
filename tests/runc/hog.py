"""A child that grows without bound once told to (SIGHUP), as a leaking server does.

It prints `ready` once its handler is in, and `growing` when the signal arrives; then it
touches one MiB after another until the kernel's OOM killer ends it.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    grow = False

    def on_hup(_sig: int, _frame: object) -> None:
        nonlocal grow
        grow = True

    signal.signal(signal.SIGHUP, on_hup)
    print("ready", flush=True)
    while not grow:
        signal.pause()
    print("growing", flush=True)
    held = []
    while True:
        held.append(bytearray(1 << 20))  # zero-filled, so every page is really touched


if __name__ == "__main__":
    sys.exit(main())
