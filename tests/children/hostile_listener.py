#!/usr/bin/env python3
"""A hostile generation for the steering tests: it misuses the sockets it inherits.

--shutdown: shutdown(SHUT_RD) every inherited listener at start, then idle.
--daemon:   fork a setsid daemon that keeps fd 3 and answers on it (`daemon PID`),
            while this process serves too; both answer `X-Pid: <own pid>`.
--serve:    answer HTTP on fd 3 (every path: 200, X-Pid) until SIGTERM.
--shutdown-once FILE: like --shutdown, if FILE exists (it is removed): a restart serves.
--sleeper:  leave a setsid grandchild that holds no socket and sleeps (`sleeper PID`).
--answer redirect|huge: with --serve, every answer is a 302 to another local service, or
            a 200 whose body is 1.5 GB (sent until the peer closes).
It prints one line per step, so tests read lines instead of sleeping.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


ANSWER = "ok"


def serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(65536)
                if ANSWER == "redirect":
                    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/x\r\n"
                                 b"Content-Length: 0\r\n\r\n")  # fmt: skip
                    continue
                if ANSWER == "huge":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1500000000\r\n\r\n")
                    chunk = b"x" * 65536
                    for _ in range(1500000000 // len(chunk)):
                        conn.sendall(chunk)
                    continue
                body = f"{os.getpid()}\n".encode()
                head = f"HTTP/1.1 200 OK\r\nX-Pid: {os.getpid()}\r\nContent-Length: {len(body)}\r\n"
                conn.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
            except OSError:
                continue


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shutdown", action="store_true")
    parser.add_argument("--daemon", action="store_true")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--shutdown-once", default=None)
    parser.add_argument("--answer", default="ok")
    parser.add_argument("--sleeper", action="store_true")
    args = parser.parse_args()
    global ANSWER
    ANSWER = args.answer
    if args.shutdown_once and os.path.exists(args.shutdown_once):
        os.unlink(args.shutdown_once)
        args.shutdown = True
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    count = int(os.environ.get("LISTEN_FDS", "0"))
    listeners = [socket.socket(fileno=3 + index) for index in range(count)]
    if args.shutdown:
        for listener in listeners:
            listener.shutdown(socket.SHUT_RD)
        say(f"shut down {count} pid {os.getpid()}")
    if args.daemon:
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
                say(f"daemon {os.getpid()}")
                serve(listeners[0])
                os._exit(0)
            os._exit(0)
        os.wait()
    if args.sleeper and os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.closerange(3, 64)  # holds none of the generation's sockets
            say(f"sleeper {os.getpid()}")
            time.sleep(300)
            os._exit(0)
        os._exit(0)
    say(f"ready pid {os.getpid()}")
    if args.serve and listeners:
        serve(listeners[0])
        return 0
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
