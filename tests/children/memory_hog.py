#!/usr/bin/env python3
"""A child that grows until the kernel's OOM killer ends it, once told to (SIGUSR1).

It makes itself the OOM killer's first choice (oom_score_adj 1000), so in a small
memory cgroup it is the one killed, never hotswapd; it prints `ready (pid: N)` once its
handler is in and `growing` when the signal arrives.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    with open("/proc/self/oom_score_adj", "w") as handle:
        handle.write("1000")
    grow = False

    def on_usr1(_sig: int, _frame: object) -> None:
        nonlocal grow
        grow = True

    signal.signal(signal.SIGUSR1, on_usr1)
    print(f"ready (pid: {os.getpid()})", flush=True)
    while not grow:
        signal.pause()
    print("growing", flush=True)
    held = []
    while True:
        held.append(bytearray(1 << 20))  # zero-filled: every page is really touched


if __name__ == "__main__":
    sys.exit(main())
