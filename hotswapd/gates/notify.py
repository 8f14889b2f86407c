"""sd_notify receiver: one AF_UNIX datagram socket per generation.

A socket per generation means a READY=1 can only come from that generation's
process tree (it alone was given the address); SO_PASSCRED adds the sender's pid
to the log line. Any fd that arrives with a message is closed at once:
`systemd-notify` sends BARRIER=1 with a pipe and blocks until the receiver closes it.
The socket is abstract (no file to clean up) and close-on-exec.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import struct
from collections.abc import Callable

from hotswapd.errors import EXIT_FAILURE, SpawnError

_MAX_FDS = 32
_CREDS = struct.calcsize("3i")


class NotifySocket:
    """Receives sd_notify datagrams for one generation."""

    def __init__(self, generation: int) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            # Autobind: the kernel picks a unique abstract name. A fixed name would collide
            # between containers of one pod (they share the network namespace, and each
            # hotswapd is pid 1 there), and a guessable one invites forged READY=1.
            self._sock.bind("")
        except OSError as exc:
            self._sock.close()
            raise SpawnError(f"--ready notify: cannot create the notify socket: {exc.strerror}",
                             EXIT_FAILURE, exc.errno or 0) from None  # fmt: skip
        name = self._sock.getsockname()
        raw = name if isinstance(name, bytes) else str(name).encode()
        self.address = "@" + raw.lstrip(b"\0").decode()
        self.generation = generation
        self.expected_pgid: int | None = None  # set once the generation's pid is known
        self._sock.setblocking(False)
        self.ready = False
        self.stopping = False
        self.status: str | None = None
        self.main_pid: int | None = None
        self._ready_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_message: Callable[[dict[str, str], int | None], None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready_event = asyncio.Event()
        if self.ready:
            self._ready_event.set()
        loop.add_reader(self._sock.fileno(), self._read)

    async def wait_ready(self) -> None:
        assert self._ready_event is not None
        await self._ready_event.wait()

    def _read(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(
                    4096,
                    socket.CMSG_SPACE(_MAX_FDS * 4) + socket.CMSG_SPACE(_CREDS),
                    socket.MSG_CMSG_CLOEXEC,
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sender: int | None = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
                    for fd in fds:
                        os.close(fd)  # BARRIER=1: closing the pipe releases the sender
                elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = struct.unpack("3i", payload[:_CREDS])[0]
            self._handle(data, sender)

    def _handle(self, data: bytes, sender: int | None) -> None:
        fields: dict[str, str] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value
        if not self._from_generation(sender):
            if self.on_message is not None:
                self.on_message({"IGNORED": "sender is not in this generation", **fields}, sender)
            return
        if fields.get("READY") == "1":
            self.ready = True
            if self._ready_event is not None:
                self._ready_event.set()
        if fields.get("STOPPING") == "1":
            self.stopping = True
        if "STATUS" in fields:
            self.status = fields["STATUS"]
        if fields.get("MAINPID", "").isdigit():
            self.main_pid = int(fields["MAINPID"])
        if self.on_message is not None:
            self.on_message(fields, sender)

    def _from_generation(self, sender: int | None) -> bool:
        """Only the generation's own process group may notify (a sender that already exited
        cannot be checked and is believed: systemd-notify exits right after sending)."""
        if sender is None or self.expected_pgid is None:
            return True
        try:
            return os.getpgid(sender) == self.expected_pgid
        except ProcessLookupError:
            return True

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
