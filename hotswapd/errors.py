"""Exit codes and exceptions: the contract with shells, Docker and Kubernetes.

Kept import-free so the fast start path can load it before spawning generation 1.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_EXECUTABLE = 126  # as tini, Docker and POSIX shells
EXIT_NOT_FOUND = 127
EXIT_SIGNAL_BASE = 128  # a child killed by signal N gives 128 + N


class HotswapdError(Exception):
    """An error with a one-line message for the user and the exit code it maps to."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(HotswapdError):
    """A bad option or argument: nothing was started, exit 2."""

    exit_code = EXIT_USAGE


class ListenError(HotswapdError):
    """A listener could not be bound or adopted (port in use, missing directory)."""


class SpawnError(HotswapdError):
    """A generation could not be exec'd; exit_code is 127 or 126 as tini reports it."""

    def __init__(self, message: str, exit_code: int, errno: int = 0) -> None:
        super().__init__(message, exit_code)
        self.errno = errno


def exit_status(wait_status: int) -> int:
    """Map a waitpid status to a shell-style exit status (128+N for a signal death)."""
    import os

    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    if os.WIFSIGNALED(wait_status):
        return EXIT_SIGNAL_BASE + os.WTERMSIG(wait_status)
    return EXIT_FAILURE
