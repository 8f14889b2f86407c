"""Content hashes of executables, for status, metrics and deploy (one copy of the rule)."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | int) -> str | None:
    """The executable's hash for status; reads through an fd when given one."""
    try:
        fd = os.dup(path) if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    digest = hashlib.sha256()
    try:
        offset = 0
        while True:
            chunk = os.pread(fd, 1 << 20, offset)
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()
