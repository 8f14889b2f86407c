"""sd_notify receiver: one AF_UNIX datagram socket per generation, and whom it believes.

Who is believed (DESIGN rule 11). The socket's name is not a secret and cannot be one:
every abstract name is listed in /proc/net/unix for anyone in the network namespace (the
containers of a pod share one), and an autobound name is five hex digits. A random name
would only be harder to guess, never hidden. So the name only has to be unique (autobind:
no file, no collision between the containers of a pod), and the sender's credentials
decide. The kernel stamps each datagram with the sender's pid and uid (SCM_CREDENTIALS;
only root may stamp someone else's), and a datagram is believed only when, as it is read:

- the sender's uid is the generation's own (its leader's real or effective uid) or root;
- the sender pid is alive, not a zombie, and in the generation's process group or below
  its leader in the process tree.

A sender that has already exited cannot be checked, and is not believed: its pid tells
nothing any more, and "send, then exit before the read" is exactly how another user got
a forged READY=1 believed. systemd makes the same check through cgroup membership. The
real `systemd-notify` passes it: it follows READY=1 with BARRIER=1 and a pipe and waits
until the receiver closes that pipe, so it is alive when READY=1 is read (as root it even
stamps the datagram with its parent's pid: the server's). `systemd-notify --no-block`
exits at once and is ignored, with a reason that says so.

Bounds. What a generation sends is read within limits of size, shape and rate, and its
fields are data (one dict for the callback, never keyword arguments):

- a datagram is at most 4 KiB (a longer one is dropped whole), at most 16 fields, values
  cut at 256 characters; only sd_notify's own variable names and `X_…` pass, others are
  counted in `OTHER_FIELDS`;
- past 200 datagrams a second reading pauses (the kernel's queue then holds the sender
  back, so a flood costs PID 1 next to nothing), and at most 10 a second (bursts of 20)
  are passed on; the rest are counted and summarised every 2 s in one `DROPPED` record.

Keys a child cannot send mark hotswapd's own records: `IGNORED` (why a datagram was not
believed), `DROPPED` and `DROPPED_WHY` (the summary), `OTHER_FIELDS`. Any fd that
arrives is closed at once (closing BARRIER=1's pipe releases its sender). The socket is
close-on-exec. This module runs before generation 1 is forked, so it imports only
`_socket` and leaves asyncio to the loop that calls it.
"""

from __future__ import annotations

import _socket
import os
import struct

from hotswapd.errors import EXIT_FAILURE, SpawnError

TYPE_CHECKING = False  # see boot/config.py
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

MAX_DATAGRAM = 4096
MAX_FIELDS = 16
MAX_VALUE = 256
READ_RATE = 200.0  # datagrams per second read before reading pauses
PASS_RATE = 10.0  # records per second passed to on_message ...
PASS_BURST = 20.0  # ... with bursts up to this many
SUMMARY_S = 2.0  # how often what was not passed on is summarised
_PAUSE_S = 0.05
_MAX_FDS = 32
_CREDS = struct.calcsize("3i")
_TREE_DEPTH = 64  # how far up the process tree a sender is followed

# The variables sd_notify(3) defines; anything else a service wants to say is X_….
KNOWN_FIELDS = frozenset(
    {
        "READY",
        "RELOADING",
        "STOPPING",
        "STATUS",
        "ERRNO",
        "BUSERROR",
        "VARLINKERROR",
        "EXIT_STATUS",
        "MAINPID",
        "MONOTONIC_USEC",
        "NOTIFYACCESS",
        "WATCHDOG",
        "WATCHDOG_USEC",
        "EXTEND_TIMEOUT_USEC",
        "FDSTORE",
        "FDSTOREREMOVE",
        "FDNAME",
        "FDPOLL",
        "BARRIER",
    }
)
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class _Bucket:
    """A token bucket: `rate` per second, at most `burst` saved up."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at: float | None = None

    def take(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class NotifySocket:
    """Receives sd_notify datagrams for one generation."""

    def __init__(self, generation: int) -> None:
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        try:
            self._sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
            # Autobind: the kernel picks a unique abstract name. A fixed name would collide
            # between containers of one pod (they share the network namespace, and each
            # hotswapd is pid 1 there). Unique, not secret: see the module docstring.
            self._sock.bind("")
        except OSError as exc:
            self._sock.close()
            raise SpawnError(
                f"--ready notify: cannot create the notify socket: {exc.strerror}",
                EXIT_FAILURE,
                exc.errno or 0,
            ) from None
        name = self._sock.getsockname()
        raw = name if isinstance(name, bytes) else str(name).encode()
        self.address = "@" + raw.lstrip(b"\0").decode()
        self.generation = generation
        self.expected_pgid: int | None = None  # the leader's pid, set once it is known
        self._sock.setblocking(False)
        self.ready = False
        self.stopping = False
        self.status: str | None = None
        self.main_pid: int | None = None
        self._ready_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._read_budget = _Bucket(READ_RATE, READ_RATE)
        self._pass_budget = _Bucket(PASS_RATE, PASS_BURST)
        self._dropped: dict[str, int] = {}
        self._summary: asyncio.TimerHandle | None = None
        self.on_message: Callable[[dict[str, str], int | None], None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        import asyncio  # loaded long before this runs; not before generation 1's fork

        self._loop = loop
        self._ready_event = asyncio.Event()
        if self.ready:
            self._ready_event.set()
        self._resume()

    async def wait_ready(self) -> None:
        assert self._ready_event is not None
        await self._ready_event.wait()

    # ---------------------------------------------------------------- reading

    def _resume(self) -> None:
        if self._loop is not None and not self._reading and self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._read)
            self._reading = True

    def _pause(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._sock.fileno())
        self._reading = False
        self._loop.call_later(_PAUSE_S, self._resume)

    def _read(self) -> None:
        assert self._loop is not None
        while True:
            if not self._read_budget.take(self._loop.time()):
                self._pause()  # a flood waits in the kernel's queue, not in PID 1's CPU
                return
            try:
                data, ancdata, flags, _addr = self._sock.recvmsg(
                    MAX_DATAGRAM,
                    _socket.CMSG_SPACE(_MAX_FDS * 4) + _socket.CMSG_SPACE(_CREDS),
                    _socket.MSG_CMSG_CLOEXEC,
                )
            except OSError:  # BlockingIOError: all read; anything else: try next turn
                return
            sender: int | None = None
            uid: int | None = None
            fds: tuple[int, ...] = ()
            for level, kind, payload in ancdata:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    count = len(payload) // 4  # ints; `array` would import collections
                    fds = struct.unpack(f"{count}i", payload[: count * 4])
                elif level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS:
                    sender, uid, _gid = struct.unpack("3i", payload[:_CREDS])
            try:
                if flags & _socket.MSG_TRUNC:
                    self._drop(f"longer than {MAX_DATAGRAM} bytes")
                else:
                    self._handle(data, sender, uid)
            finally:
                # After the check: BARRIER=1's sender waits for this close, then exits.
                for fd in fds:
                    os.close(fd)

    def _handle(self, data: bytes, sender: int | None, uid: int | None) -> None:
        fields = parse(data)
        doubt = self.doubt(sender, uid)
        if doubt is not None:
            self._pass({"IGNORED": doubt, **fields}, sender, "not believed")
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
        self._pass(fields, sender, "over the rate limit")

    # ---------------------------------------------------------------- trust

    def doubt(self, sender: int | None, uid: int | None) -> str | None:
        """Why a datagram from `sender` (with `uid`) is not believed; None when it is."""
        leader = self.expected_pgid
        if leader is None:
            return "the generation's pid is not known yet"
        if sender is None or uid is None:
            return "no sender credentials"
        if sender <= 0:
            return "the sender is outside hotswapd's pid namespace"
        leader_uids = _uids(leader)
        if not leader_uids:
            return f"generation {self.generation} has exited"
        if uid != 0 and uid not in leader_uids:
            return f"sender uid {uid} is not the generation's ({leader_uids[0]}) nor root"
        stat = _stat(sender)
        if stat is None or stat[0] in ("Z", "X"):
            return (
                f"sender pid {sender} exited before its message was read (notify from "
                "the server's own process, or systemd-notify without --no-block)"
            )
        if sender == leader or stat[2] == leader or _descends(stat[1], leader):
            return None
        return f"sender pid {sender} is not in generation {self.generation}'s process group or tree"

    # ---------------------------------------------------------------- passing on

    def _pass(self, fields: dict[str, str], sender: int | None, why: str) -> None:
        assert self._loop is not None
        if self.on_message is None:
            return
        if not self._pass_budget.take(self._loop.time()):
            self._drop(why)
            return
        self.on_message(fields, sender)

    def _drop(self, why: str) -> None:
        self._dropped[why] = self._dropped.get(why, 0) + 1
        if self._summary is None and self._loop is not None:
            self._summary = self._loop.call_later(SUMMARY_S, self._summarise)

    def _summarise(self) -> None:
        self._summary = None
        if not self._dropped or self.on_message is None:
            return
        total = sum(self._dropped.values())
        why = ", ".join(f"{count} {reason}" for reason, count in self._dropped.items())
        self._dropped = {}
        self.on_message({"DROPPED": str(total), "DROPPED_WHY": why}, None)

    def close(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summarise()  # the last word on what was not passed on
        if self._sock.fileno() >= 0:
            if self._reading and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._reading = False
            self._sock.close()


def parse(data: bytes) -> dict[str, str]:
    """The fields of one datagram, bounded: known names and X_… only, values cut short."""
    fields: dict[str, str] = {}
    other = 0
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if len(fields) >= MAX_FIELDS or not _acceptable(key):
            other += 1
            continue
        fields[key] = value if len(value) <= MAX_VALUE else value[: MAX_VALUE - 1] + "…"
    if other:
        fields["OTHER_FIELDS"] = str(other)
    return fields


def _acceptable(key: str) -> bool:
    if key in KNOWN_FIELDS:
        return True
    return key.startswith("X_") and 2 < len(key) <= 64 and set(key) <= _NAME_CHARS


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of `pid` from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw.rpartition(b")")[2].split()  # the name may hold spaces and ')'
    if len(fields) < 3:
        return None
    return fields[0].decode(), int(fields[1]), int(fields[2])


def _descends(parent: int, ancestor: int) -> bool:
    """Is a process whose parent is `parent` below `ancestor` in the process tree?"""
    for _ in range(_TREE_DEPTH):
        if parent == ancestor:
            return True
        if parent <= 1:
            return False
        stat = _stat(parent)
        if stat is None:
            return False
        parent = stat[1]
    return False


def _uids(pid: int) -> tuple[int, ...]:
    """The real and effective uid of `pid`, or () when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Uid:"):
                    real, effective = line.split()[1:3]
                    return int(real), int(effective)
    except (OSError, ValueError):
        return ()
    return ()
