#!/usr/bin/env python3
"""A server that answers exactly one request on its inherited listeners, then exits 3:
it passes a health probe and is gone by the next gate."""

from __future__ import annotations

import os
import select
import socket
import sys


def main() -> int:
    count = int(os.environ.get("LISTEN_FDS", "0"))
    listeners = [socket.socket(fileno=3 + index) for index in range(count)]
    ready, _, _ = select.select(listeners, [], [], 60)
    if not ready:
        return 4
    conn, _ = ready[0].accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    conn.close()
    sys.stdout.flush()
    os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
