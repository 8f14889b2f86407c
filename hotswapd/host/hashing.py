"""Content hashes of files: one hasher for the watcher, status, metrics and deploy.

PID 1 has no threads, so a large file must never be hashed in one go on the event loop:
`sha256_steps` reads one chunk per step and the caller decides what happens between steps
(the watcher and the status endpoint yield to the loop through `sha256_cooperative`;
`file_sha256`, for the client commands, just runs it to the end). A digest is remembered
under the file's identity (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): the build
the watcher hashed before asking for a swap is the very file the new generation runs, and
is not read twice.

Stdlib only (no asyncio here: the host modules stay light).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator

CHUNK = 1 << 20
FileKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns
_REMEMBERED = 32  # a handful of generations and watched files; old entries are dropped
_known: OrderedDict[FileKey, str] = OrderedDict()


def file_key(st: os.stat_result) -> FileKey:
    """The identity of a file's content as far as stat can tell."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sha256_steps(fd: int, chunk: int = CHUNK) -> Generator[None, None, str]:
    """The sha256 of everything behind `fd` (read with pread), one chunk per step."""
    digest = hashlib.sha256()
    offset = 0
    while data := os.pread(fd, chunk, offset):
        digest.update(data)
        offset += len(data)
        yield
    return digest.hexdigest()


def finish(steps: Generator[None, None, str]) -> str:
    """Run the steps to the end, without pausing."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: str = done.value
            return result


async def sha256_cooperative(fd: int, pause: Callable[[float], Awaitable[object]]) -> str:
    """The steps driven on an event loop: `await pause(0)` (asyncio.sleep) after each chunk.

    The loop is passed in rather than imported, so this module stays free of asyncio.
    """
    steps = sha256_steps(fd)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            digest: str = done.value
            return digest
        await pause(0)


def remember(key: FileKey, digest: str) -> None:
    _known[key] = digest
    _known.move_to_end(key)
    while len(_known) > _REMEMBERED:
        _known.popitem(last=False)


def recall(key: FileKey) -> str | None:
    """A digest computed earlier for exactly this file identity, or None."""
    return _known.get(key)


def file_sha256(path: str | int) -> str | None:
    """The sha256 of a file, read through an fd when given one; None when unreadable."""
    try:
        fd = os.dup(path) if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        key = file_key(os.fstat(fd))
        digest = recall(key) or finish(sha256_steps(fd))
    except OSError:
        return None
    finally:
        os.close(fd)
    remember(key, digest)
    return digest
