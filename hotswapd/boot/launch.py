"""Launch one generation: its sockets at fd 3.., its argv and env, the fork+exec.

Import-light on purpose: generation 1 is launched before asyncio and the other heavy
modules are imported, so PID 1 costs the server nothing at start. The supervisor
wraps what this returns into a `Generation` once the event loop runs.
"""

from __future__ import annotations

import os
import time

from hotswapd.boot.listeners import (
    SD_LISTEN_FDS_START,
    clean_environ,
    listen_env,
    make_probe_listener,
    needs_probe_listener,
)
from hotswapd.boot.spawn import ChildSpec, resolve_program, spawn
from hotswapd.boot.values import PROBE_LISTENER_NAME
from hotswapd.errors import EXIT_FAILURE, SpawnError, UsageError

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    import _socket
    from collections.abc import Iterator, Mapping, Sequence

    from hotswapd.boot.config import Config
    from hotswapd.boot.listeners import Listener
    from hotswapd.boot.spawn import Credentials
    from hotswapd.gates.notify import NotifySocket


class Spawned:
    """What a launch produced: the process and the resources hotswapd holds for it."""

    __slots__ = (
        "number",
        "pid",
        "argv",
        "executable",
        "started_at",
        "started_mono",
        "probe",
        "notify",
        "exe_fd",
        "sockets",
    )

    def __init__(
        self,
        number: int,
        pid: int,
        argv: tuple[str, ...],
        executable: str,
        probe: _socket.socket | None,
        notify: NotifySocket | None,
        exe_fd: int | None,
        sockets: tuple[_socket.socket, ...] = (),
    ) -> None:
        self.number = number
        self.pid = pid
        self.argv = argv
        self.executable = executable
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.probe = probe
        self.notify = notify
        self.exe_fd = exe_fd
        self.sockets = sockets  # what it got at fd 3.., one per --listen, in order


def _templates(text: str) -> Iterator[tuple[int, int, str, str]]:
    """Each `{fd:NAME}` / `{port:NAME}` in text: (start, end, kind, name)."""
    start = text.find("{")
    while start >= 0:
        end = text.find("}", start)
        if end < 0:
            return
        kind, colon, name = text[start + 1 : end].partition(":")
        if colon and kind in ("fd", "port") and name:
            yield start, end + 1, kind, name
            start = text.find("{", end + 1)
        else:
            start = text.find("{", start + 1)


def check_templates(argv: Sequence[str], names: Sequence[str]) -> None:
    """Fail at start-up (exit 2) when an adapter template names an unknown listener."""
    known = set(names) | {PROBE_LISTENER_NAME}
    for arg in argv:
        for _, _, _, name in _templates(arg):
            if name not in known:
                raise UsageError(
                    f"'{arg}': no listener named '{name}' (known: {', '.join(sorted(known))})"
                )


def resolve_health_url(url: str | None, listeners: Sequence[Listener]) -> str | None:
    """`--health-url` with `{port:NAME}` filled in from the bound listeners (exit 2 on an
    unknown name). The probe listener's port differs per generation, so it cannot be named."""
    if url is None or "{" not in url:
        return url
    ports = {listener.name: listener.port() for listener in listeners}
    for _, _, kind, name in _templates(url):
        if kind != "port" or name not in ports:
            known = ", ".join(f"{{port:{n}}}" for n in sorted(ports)) or "none (no --listen)"
            raise UsageError(
                f"--health-url {url}: no listener port named '{name}' (known: {known})"
            )
    return substitute(url, {}, ports)


def substitute(text: str, fds: Mapping[str, int], ports: Mapping[str, int]) -> str:
    """Replace adapter templates, so servers that take `--fd N` work unmodified."""
    out = []
    last = 0
    for start, end, kind, name in _templates(text):
        table = fds if kind == "fd" else ports
        if name in table:
            out.append(text[last:start])
            out.append(str(table[name]))
            last = end
    out.append(text[last:])
    return "".join(out)


def launch(
    config: Config,
    listeners: Sequence[Listener],
    number: int,
    environ: Mapping[str, str],
    credentials: Credentials | None,
    notify: NotifySocket | None = None,
    exec_fd: int | None = None,
    executable: str | None = None,
    sockets: Sequence[_socket.socket] | None = None,
) -> Spawned:
    """Spawn generation `number` with exactly its sockets at fd 3.., as systemd would.

    `sockets` are this generation's, one per listener (default: each listener's
    first socket). A private probe listener is added only for a shared-mode
    `--health PATH`; with no socket at all the child gets no LISTEN_* variable.
    """
    program = executable or os.path.abspath(resolve_program(config.command[0], environ))
    own = tuple(sockets) if sockets is not None else tuple(each.sock for each in listeners)
    probe: _socket.socket | None = None
    if needs_probe_listener(config.health, config.health_url, listeners):
        try:
            probe = make_probe_listener()
        except OSError as exc:
            raise SpawnError(
                f"cannot create the probe listener: {exc.strerror}", EXIT_FAILURE, exc.errno or 0
            ) from None
    try:
        names = [listener.name for listener in listeners]
        passed = [sock.fileno() for sock in own]
        ports = {listener.name: listener.port() for listener in listeners}
        if probe is not None:
            names.append(PROBE_LISTENER_NAME)
            passed.append(probe.fileno())
            ports[PROBE_LISTENER_NAME] = int(probe.getsockname()[1])
        fds = {name: SD_LISTEN_FDS_START + index for index, name in enumerate(names)}
        env = clean_environ(environ)
        if names:
            env.update(listen_env(names))
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.address
        env = {key: substitute(value, fds, ports) for key, value in env.items()}
        argv = tuple(substitute(arg, fds, ports) for arg in config.command)
        spec = ChildSpec(
            program=program,
            argv=argv,
            env=env,
            fds=passed,
            credentials=credentials,
            no_new_privs=config.no_new_privs,
            exec_fd=exec_fd,
        )
        pid = spawn(spec)
    except BaseException:
        if probe is not None:
            probe.close()
        raise
    return Spawned(number, pid, argv, program, probe, notify, _open_executable(pid, program), own)


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
