"""Where the control socket lives: one rule for the run mode (bind), `ctl` and `deploy`
(find it) and `doctor` (check it). Import-light: the run mode decides before the first fork.
"""

from __future__ import annotations

import os
import stat

from hotswapd.host.unixsock import socket_state

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    from collections.abc import Mapping

    from hotswapd.boot.config import Config

SOCKET_NAME = "control.sock"
SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
RUN_DIR = "/run/hotswapd"
_DISABLED = ("off", "none", "")


def default_paths(environ: Mapping[str, str]) -> list[str]:
    """Where the socket goes when no path is given, in order (shared with `ctl`)."""
    paths = [os.path.join(RUN_DIR, SOCKET_NAME)]
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        paths.append(os.path.join(runtime, "hotswapd", SOCKET_NAME))
    paths.append(f"/tmp/hotswapd-{os.geteuid()}/{SOCKET_NAME}")
    return paths


def client_path(explicit: str | None, environ: Mapping[str, str]) -> str:
    """The socket `ctl` talks to: the option, HOTSWAPD_CONTROL_SOCKET, else the first
    default path that exists (the one hotswapd would have picked)."""
    given = explicit or environ.get("HOTSWAPD_CONTROL_SOCKET")
    if given:
        return given
    candidates = default_paths(environ)
    return next((path for path in candidates if os.path.exists(path)), candidates[0])


def dir_problem(directory: str, explicit: bool = False) -> str | None:
    """Why a socket directory must not be used (someone else could swap the socket).

    The default directories must be this user's own. An explicit directory may also be
    root's, and may be world-writable only with the sticky bit (/tmp): there nobody can
    rename or remove our socket, and `ctl` checks the server's credentials anyway.
    """
    if explicit:
        directory = os.path.realpath(directory)  # /var/run -> /run is fine; judge the target
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{directory}: cannot look at it: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    owners = (os.geteuid(), 0) if explicit else (os.geteuid(),)
    if st.st_uid not in owners:
        return f"{directory} is owned by uid {st.st_uid}, not by this user"
    sticky = explicit and st.st_mode & stat.S_ISVTX
    if st.st_mode & 0o022 and not sticky:
        return f"{directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def server_problem(path: str, explicit: bool = True) -> str | None:
    """Why hotswapd cannot serve its control socket at `path`, as one line; None if it can.

    With `explicit` False (a default path) only the place is judged, not what is there.
    Import-light (no socket module, no asyncio): the run mode calls this for an explicit
    --control-socket before the first fork, so a bad path is exit 2 with no child started.
    """
    prefix = f"--control-socket {path}"
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        return (
            f"{prefix}: {len(os.fsencode(path))} bytes, a unix socket path is at most "
            f"{SUN_PATH_MAX} (choose a shorter path)"
        )
    directory = os.path.dirname(path)
    problem = dir_problem(directory, explicit)
    if problem:
        return f"{prefix}: {problem} (choose a directory only this user can write)"
    existing = directory
    if (
        not explicit
        and not os.path.isdir(directory)
        and not os.path.isdir(os.path.dirname(directory))
    ):
        return f"{prefix}: {os.path.dirname(directory)} does not exist"
    while not os.path.isdir(existing):
        parent = os.path.dirname(existing)
        if os.path.lexists(existing) or parent == existing:
            return f"{prefix}: {existing} is not a directory (choose another path)"
        existing = parent
    if not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"{prefix}: {existing} is not writable by uid {os.geteuid()} "
            "(choose a writable directory)"
        )
    if existing != directory:
        return None  # the directory will be created: nothing can be in the way yet
    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{prefix}: cannot look at it: {exc.strerror} (choose a directory this user owns)"
    if not explicit:
        return None  # a socket in the way of a default path is start_control's to judge
    try:
        state = socket_state(path)
    except OSError as exc:
        return f"{prefix}: cannot look at it: {exc.strerror} (choose a directory this user owns)"
    if state == "live":
        return (
            f"{prefix}: another hotswapd is listening there "
            "(stop it, or give this one another --control-socket)"
        )
    if state == "not-a-socket":
        return f"{prefix}: a file that is not a socket is in the way (remove it or choose another)"
    return None


def default_choice(environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The first usable default path, and why each one before it was skipped."""
    skipped: list[str] = []
    for path in default_paths(environ):
        problem = server_problem(path, explicit=False)
        if problem is None:
            return path, skipped
        skipped.append(problem.replace("--control-socket ", "", 1))
    return None, skipped


def server_path(config: Config, environ: Mapping[str, str]) -> tuple[str | None, bool]:
    """(path, explicit): the option's path, or the first usable default; None when off."""
    if config.control_socket is not None:
        if config.control_socket.strip().lower() in _DISABLED:
            return None, True
        return os.path.abspath(config.control_socket), True
    return default_choice(environ)[0], False


def validate(config: Config, environ: Mapping[str, str]) -> str | None:
    """The one-line problem with an explicit --control-socket (None: fine, off, or default).

    For the run mode before the first fork: `if problem: raise UsageError(problem)`.
    An unusable default path is not an error: the next default is used (see start-up log).
    """
    path, explicit = server_path(config, environ)
    return server_problem(path) if explicit and path is not None else None
