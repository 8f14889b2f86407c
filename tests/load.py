"""A small keep-alive HTTP load generator for swap tests (loopback only, bounded in time).

Each worker holds a persistent connection, as real clients and load balancers do,
so a server that closes idle keep-alive connections under their feet shows up as
failed requests. It records which pid answered each request (the X-Pid header).
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    pids: list[str] = field(default_factory=list)  # responding pid, in order of completion
    versions: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, bool]] = field(default_factory=list)  # (time, ok)


class Load:
    """`with Load(port) as load: ...` drives requests until the block ends."""

    def __init__(self, port: int, connections: int = 4, path: str = "/",
                 host: str = "127.0.0.1", max_seconds: float = 300.0) -> None:  # fmt: skip
        self.port = port
        self.host = host
        self.path = path
        self.connections = connections
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._worker, daemon=True)
                         for _ in range(connections)]  # fmt: skip
        self.started = 0.0

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        return self.result

    def count(self) -> int:
        with self._lock:
            return self.result.ok + len(self.result.failures)

    def _worker(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read()
                pid = response.getheader("X-Pid", "")
                version = response.getheader("X-Version", "")
                ok = response.status == 200
                with self._lock:
                    now = time.monotonic() - self.started
                    self.result.timeline.append((now, ok))
                    if ok:
                        self.result.ok += 1
                        self.result.pids.append(pid)
                        self.result.versions[version] = self.result.versions.get(version, 0) + 1
                    else:
                        self.result.failures.append(f"HTTP {response.status}: {body[:80]!r}")
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.result.timeline.append((time.monotonic() - self.started, False))
                    self.result.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()
