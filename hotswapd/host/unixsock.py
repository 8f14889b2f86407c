"""What is at a unix socket path: one answer for the listeners, the control socket and doctor.

A path whose connect is refused (or that vanished) is stale: its server is gone and the
file may be replaced. Any other failure (EACCES, EAGAIN on a full backlog) means someone
may still be serving there, so the file is kept.
"""

from __future__ import annotations

# _socket, not socket: the listeners call this before the first fork (see boot/listeners.py)
import _socket
import errno
import os
import stat


def socket_state(path: str) -> str:
    """absent | live | stale | not-a-socket: what is at `path` now."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISSOCK(mode):
        return "not-a-socket"
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.settimeout(1.0)  # a connect waits only when a live server's backlog is full
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return "stale"
    except OSError as exc:
        return "stale" if exc.errno == errno.ENOENT else "live"
    finally:
        probe.close()
    return "live"
