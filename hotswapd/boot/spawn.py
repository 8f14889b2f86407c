"""fork+exec of one generation, with its listeners at fd 3, 4, ... and a clean slate.

Design note: fork+exec, not posix_spawn or subprocess. `LISTEN_PID` must be the
child's *own* pid — gunicorn and go-systemd ignore the sockets otherwise — and only
code running in the child after fork knows it. A precomputed environment cannot.

Exec failures travel back through a close-on-exec pipe: EOF means exec succeeded,
bytes mean it failed and say why. The parent then reaps that child itself, so the
error is reported once, with tini's exit codes (127 not found, 126 not executable).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource

# Imported here, not in the child: an import after fork runs again at every spawn.
import prctl

from hotswapd.boot import sigbits, signals
from hotswapd.boot.listeners import SD_LISTEN_FDS_START
from hotswapd.errors import EXIT_FAILURE, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, SpawnError

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class Credentials:
    """The user a child runs as (resolved in the parent: no NSS calls after fork)."""

    __slots__ = ("uid", "gid", "groups", "name")

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...], name: str) -> None:
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.name = name


class ChildSpec:
    """Everything one fork+exec needs; built per generation by the caller."""

    __slots__ = ("program", "argv", "env", "fds", "credentials", "no_new_privs", "exec_fd")

    def __init__(
        self,
        program: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        fds: Sequence[int],
        credentials: Credentials | None = None,
        no_new_privs: bool = False,
        exec_fd: int | None = None,
    ) -> None:
        self.program = program  # the resolved path
        self.argv = argv
        self.env = env  # without inherited LISTEN_*; with this generation's LISTEN_FDS/FDNAMES
        self.fds = fds  # placed at 3, 4, ... in this order
        self.credentials = credentials
        self.no_new_privs = no_new_privs
        self.exec_fd = exec_fd  # exec this open file instead of the path (rollback)


def resolve_program(name: str, environ: Mapping[str, str]) -> str:
    """Find PROGRAM as execvp would, raising SpawnError with 127/126 as tini does."""
    if "/" in name:
        return _check_path(name, name)
    for directory in environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SpawnError(
        f"cannot run '{name}': not found in PATH (give an absolute path after '--')",
        EXIT_NOT_FOUND,
        errno.ENOENT,
    )


def _check_path(path: str, shown: str) -> str:
    if not os.path.exists(path):
        raise SpawnError(
            f"cannot run '{shown}': No such file or directory", EXIT_NOT_FOUND, errno.ENOENT
        )
    if os.path.isdir(path):
        raise SpawnError(f"cannot run '{shown}': is a directory", EXIT_NOT_EXECUTABLE, errno.EISDIR)
    if not os.access(path, os.X_OK):
        raise SpawnError(
            f"cannot run '{shown}': Permission denied (is it executable? chmod +x)",
            EXIT_NOT_EXECUTABLE,
            errno.EACCES,
        )
    return path


def resolve_user(text: str) -> Credentials:
    """Resolve `NAME[:GROUP]` (or numeric ids) before any fork.

    `text` passed values.parse_user, so numeric ids are ASCII digits in uid_t's range.
    """
    import grp
    import pwd

    user, _, group = text.partition(":")
    numeric_user = user.isascii() and user.isdigit()
    try:
        entry = pwd.getpwuid(int(user)) if numeric_user else pwd.getpwnam(user)
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    except KeyError:
        if not numeric_user:
            raise SpawnError(f"--user: no user '{user}' in /etc/passwd", EXIT_FAILURE) from None
        uid, gid, name = int(user), int(user), user
    if group:
        try:
            numeric_group = group.isascii() and group.isdigit()
            gid = int(group) if numeric_group else grp.getgrnam(group).gr_gid
        except KeyError:
            raise SpawnError(f"--user: no group '{group}' in /etc/group", EXIT_FAILURE) from None
    try:
        groups = tuple(os.getgrouplist(name, gid))
    except (KeyError, OSError):
        groups = (gid,)
    return Credentials(uid=uid, gid=gid, groups=groups, name=name)


_STEP_EXEC = 1
_STEP_USER = 2
_STEP_SETUP = 3
_STEP_NAMES = {_STEP_EXEC: "exec", _STEP_USER: "dropping privileges", _STEP_SETUP: "setting up"}


def spawn(spec: ChildSpec) -> int:
    """Fork and exec one child; returns its pid or raises SpawnError (child reaped)."""
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
    except OSError as exc:
        raise _resource_error(spec, "creating the exec-error pipe", exc) from None
    parent_pid = os.getpid()
    # Block every signal across fork: a signal landing in the child before exec would
    # run the parent's Python handler there, which writes to the event loop's wake-up
    # fd that parent and child share, and the parent would act on a phantom signal.
    old_mask = sigbits.block(sigbits.valid_signals())
    try:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _child(spec, write_end, parent_pid)
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        raise _resource_error(spec, "fork", exc) from None
    finally:
        if os.getpid() == parent_pid:
            sigbits.set_mask(old_mask)
    os.close(write_end)
    try:
        report = b""
        while True:
            chunk = os.read(read_end, 512)  # returns at exec (EOF) or after the error write
            if not chunk:
                break
            report += chunk
    finally:
        os.close(read_end)
    if not report:
        return pid
    os.waitpid(pid, 0)  # the failed child is ours to reap: the error is reported once
    step, err = int.from_bytes(report[:4], "little"), int.from_bytes(report[4:8], "little")
    reason = os.strerror(err)
    if step == _STEP_EXEC:
        code = EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_NOT_EXECUTABLE
        hint = {
            errno.ENOENT: " (or its #! interpreter or ELF loader is missing)",
            errno.ENOEXEC: " (not an executable for this machine: a truncated or foreign binary?)",
            errno.ETXTBSY: " (a writer still has the file open; wait for the copy to finish)",
        }.get(err, "")
        raise SpawnError(f"cannot run '{spec.argv[0]}': {reason}{hint}", code, err)
    raise SpawnError(
        f"cannot start '{spec.argv[0]}': {_STEP_NAMES.get(step, 'setup')} failed: {reason}",
        EXIT_FAILURE,
        err,
    )


def _resource_error(spec: ChildSpec, step: str, exc: OSError) -> SpawnError:
    """Out of processes, fds or memory: a SpawnError like any other, never a crash of PID 1."""
    return SpawnError(
        f"cannot start '{spec.argv[0]}': {step} failed: {exc.strerror} (a process, file or "
        "memory limit of the container?)",
        EXIT_FAILURE,
        exc.errno or errno.EAGAIN,
    )


def _child(spec: ChildSpec, error_fd: int, parent_pid: int) -> None:
    step = _STEP_SETUP
    try:
        # Before setpgid, while still in hotswapd's group: does that group hold the terminal?
        take_terminal = signals.hands_terminal() and signals.foreground_is_ours()
        os.setpgid(0, 0)  # its own group: stop and kill reach all it spawned, nothing else
        if take_terminal:
            # The server in the terminal's foreground, as tini does (boot/signals.py, "The
            # terminal"). Every signal is blocked here, SIGTTOU too, so a background group
            # may take the foreground without being stopped for it.
            signals.take_terminal()
        sigbits.reset_dispositions()  # SigIgn = 0: also undoes Python's SIGPIPE ignore
        error_fd, exec_fd = _place_fds(spec, error_fd)
        if spec.credentials is not None:
            step = _STEP_USER
            creds = spec.credentials
            os.setgroups(list(creds.groups))
            os.setgid(creds.gid)
            os.setuid(creds.uid)
            step = _STEP_SETUP
        # After the credential change: the kernel clears the parent-death signal whenever
        # the process's uid or gid changes.
        prctl.set_pdeathsig(sigbits.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before pdeathsig was armed
            os._exit(EXIT_FAILURE)
        if spec.no_new_privs:
            prctl.set_no_new_privs(True)
        env = dict(spec.env)
        if "LISTEN_FDS" in env:  # no --listen: no socket-activation variables at all
            env["LISTEN_PID"] = str(os.getpid())  # the child's own pid: the whole point of fork
        step = _STEP_EXEC
        sigbits.set_mask(set())  # SigBlk = 0 in the new program
        if exec_fd is not None:
            os.execve(exec_fd, list(spec.argv), env)
        os.execve(spec.program, list(spec.argv), env)
    except OSError as exc:
        _report(error_fd, step, exc.errno or errno.EINVAL)
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        _report(error_fd, step, errno.EINVAL)
    os._exit(EXIT_FAILURE)


def _report(error_fd: int, step: int, err: int) -> None:
    try:
        os.write(error_fd, step.to_bytes(4, "little") + err.to_bytes(4, "little"))
    finally:
        code = EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_NOT_EXECUTABLE
        os._exit(code if step == _STEP_EXEC else EXIT_FAILURE)


def _place_fds(spec: ChildSpec, error_fd: int) -> tuple[int, int | None]:
    """Put the listeners at 3.. and close everything else but the error pipe.

    dup2(fd, fd) would leave close-on-exec set on an fd that is already in place, so
    every listener first moves to a temporary fd above the target range.
    """
    count = len(spec.fds)
    low = SD_LISTEN_FDS_START + count

    temps = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low) for fd in spec.fds]
    error_fd = fcntl.fcntl(error_fd, fcntl.F_DUPFD_CLOEXEC, low)
    keep = {error_fd}
    exec_fd = None
    if spec.exec_fd is not None:
        # A #! script exec'd through its fd is opened again by its interpreter as
        # /dev/fd/N, so that fd must survive the exec; an ELF needs nothing after it.
        is_script = os.pread(spec.exec_fd, 2, 0) == b"#!"
        dup = fcntl.F_DUPFD if is_script else fcntl.F_DUPFD_CLOEXEC
        exec_fd = fcntl.fcntl(spec.exec_fd, dup, low)
        keep.add(exec_fd)
    for index, temp in enumerate(temps):
        os.dup2(temp, SD_LISTEN_FDS_START + index, inheritable=True)
    start = low
    for fd in sorted(keep):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, _max_fd())
    return error_fd, exec_fd


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
