"""One generation of the server: its process, its private probe and notify sockets.

`launch()` is import-light on purpose: generation 1 is launched before asyncio and
the other heavy modules are imported, so PID 1 costs the server nothing at start.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hotswapd.config import Config
from hotswapd.errors import UsageError
from hotswapd.listeners import (
    SD_LISTEN_FDS_START,
    Listener,
    clean_environ,
    listen_env,
    make_probe_listener,
    probe_name,
)
from hotswapd.spawn import ChildSpec, Credentials, resolve_program, spawn
from hotswapd.states import GenState

if TYPE_CHECKING:
    import asyncio

    from hotswapd.notify import NotifySocket

_TEMPLATE = re.compile(r"\{(fd|port):([A-Za-z0-9_.\-]+)\}")


@dataclass(eq=False)
class Generation:
    """A running (or finished) generation; the supervisor alone changes `state`."""

    number: int
    pid: int
    argv: tuple[str, ...]
    executable: str
    started_at: float  # wall clock, for status
    started_mono: float
    probe: socket.socket | None = None
    notify: NotifySocket | None = None
    exe_fd: int | None = None  # the exact file this generation runs, for rollback
    state: GenState = GenState.CANDIDATE
    status: int | None = None  # raw wait status once exited
    exited: asyncio.Future[int] | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.status is None

    def probe_port(self) -> int | None:
        return int(self.probe.getsockname()[1]) if self.probe is not None else None

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


def check_templates(argv: Sequence[str], names: Sequence[str]) -> None:
    """Fail at start-up (exit 2) when an adapter template names an unknown listener."""
    known = set(names) | {probe_name()}
    for arg in argv:
        for match in _TEMPLATE.finditer(arg):
            if match.group(2) not in known:
                raise UsageError(f"'{arg}': no listener named '{match.group(2)}' "
                                 f"(known: {', '.join(sorted(known))})")  # fmt: skip


def _substitute(text: str, fds: Mapping[str, int], ports: Mapping[str, int]) -> str:
    def replace(match: re.Match[str]) -> str:
        table = fds if match.group(1) == "fd" else ports
        return str(table.get(match.group(2), match.group(0)))

    return _TEMPLATE.sub(replace, text)


def launch(
    config: Config,
    listeners: Sequence[Listener],
    number: int,
    environ: Mapping[str, str],
    credentials: Credentials | None,
    notify: NotifySocket | None = None,
    exec_fd: int | None = None,
    executable: str | None = None,
) -> Generation:
    """Spawn generation `number` on the shared listeners plus its own probe listener."""
    program = executable or resolve_program(config.command[0], environ)
    probe = make_probe_listener()
    try:
        names = [listener.name for listener in listeners] + [probe_name()]
        fds = {name: SD_LISTEN_FDS_START + index for index, name in enumerate(names)}
        ports = {listener.name: listener.port() for listener in listeners}
        ports[probe_name()] = int(probe.getsockname()[1])
        env = clean_environ(environ)
        env.update(listen_env(names))
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.address
        env = {key: _substitute(value, fds, ports) for key, value in env.items()}
        argv = tuple(_substitute(arg, fds, ports) for arg in config.command)
        spec = ChildSpec(
            program=program,
            argv=argv,
            env=env,
            fds=[listener.sock.fileno() for listener in listeners] + [probe.fileno()],
            credentials=credentials,
            no_new_privs=config.no_new_privs,
            exec_fd=exec_fd,
        )
        pid = spawn(spec)
    except BaseException:
        probe.close()
        raise
    return Generation(
        number=number,
        pid=pid,
        argv=argv,
        executable=program,
        started_at=time.time(),
        started_mono=time.monotonic(),
        probe=probe,
        notify=notify,
        exe_fd=_open_executable(pid, program),
    )


def _open_executable(pid: int, program: str) -> int | None:
    """Keep the exact file this generation runs open, so rollback survives a rebuild.

    /proc/PID/exe is the ELF that was exec'd even after the path is replaced; for a
    #! script it is the interpreter, so the script path itself is opened instead.
    """
    try:
        with open(program, "rb") as handle:
            is_script = handle.read(2) == b"#!"
        path = program if is_script else f"/proc/{pid}/exe"
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
