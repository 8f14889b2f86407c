"""One generation of the server as the supervisor tracks it, from spawn to reap."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hotswapd.core.states import GenState

if TYPE_CHECKING:
    import _socket
    import asyncio

    from hotswapd.boot.launch import Spawned
    from hotswapd.gates.notify import NotifySocket


@dataclass(eq=False)
class Generation:
    """A running (or finished) generation; the supervisor alone changes `state`."""

    number: int
    pid: int
    argv: tuple[str, ...]
    executable: str
    started_at: float  # wall clock, for status
    started_mono: float
    probe: _socket.socket | None = None
    notify: NotifySocket | None = None
    exe_fd: int | None = None  # the exact file this generation runs, for rollback
    state: GenState = GenState.CANDIDATE
    status: int | None = None  # raw wait status once exited
    exited: asyncio.Future[int] | None = None
    sha256: str | None = None
    sockets: tuple[_socket.socket, ...] = ()  # its --listen sockets (fd 3..), hotswapd's fds
    public_port: int | None = None  # steered: the port a plain 127.0.0.1 client reaches

    @classmethod
    def from_spawned(cls, spawned: Spawned) -> Generation:
        return cls(
            number=spawned.number,
            pid=spawned.pid,
            argv=spawned.argv,
            executable=spawned.executable,
            started_at=spawned.started_at,
            started_mono=spawned.started_mono,
            probe=spawned.probe,
            notify=spawned.notify,
            exe_fd=spawned.exe_fd,
            sockets=spawned.sockets,
        )

    @property
    def alive(self) -> bool:
        return self.status is None

    def probe_port(self) -> int | None:
        """Where a loopback GET reaches this generation's server: its private probe
        listener (shared mode), else the public port when steered (the selector sends a
        plain client to the active generation: right for hotswapd's own /healthz)."""
        if self.probe is not None:
            return int(self.probe.getsockname()[1])
        return self.public_port

    def close_resources(self) -> None:
        """Close what hotswapd holds for this generation (not the exe fd: rollback)."""
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def close_exe(self) -> None:
        if self.exe_fd is not None:
            os.close(self.exe_fd)
            self.exe_fd = None
