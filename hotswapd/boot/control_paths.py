"""Where the control socket lives: one rule for the run mode (bind), `ctl` and `deploy`
(find it) and `doctor` (check it). Import-light: the run mode decides before the first fork.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    from collections.abc import Mapping

    from hotswapd.boot.config import Config

SOCKET_NAME = "control.sock"
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


def dir_problem(directory: str) -> str | None:
    """Why a socket directory must not be used (someone else could swap the socket)."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    if st.st_uid != os.geteuid():
        return f"{directory} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return f"{directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def server_path(config: Config, environ: Mapping[str, str]) -> tuple[str | None, bool]:
    """(path, explicit): the option's path, or the first usable default; None when off."""
    if config.control_socket is not None:
        if config.control_socket.strip().lower() in _DISABLED:
            return None, True
        return os.path.abspath(config.control_socket), True
    for path in default_paths(environ):
        directory = os.path.dirname(path)
        parent = os.path.dirname(directory)
        usable = os.access(directory, os.W_OK) if os.path.isdir(directory) else (
            os.access(parent, os.W_OK)
        )  # fmt: skip
        if usable and dir_problem(directory) is None:
            return path, False
    return None, False
