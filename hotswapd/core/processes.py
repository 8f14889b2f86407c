"""What the supervisor does to real processes, behind one seam.

Fork+exec of a generation, a signal to one process, and the reaper. The supervisor
reaches processes only through a `Processes`, so its state machine can be driven in
process by tests with a stand-in that records instead of forking (tests/test_supervisor.py);
what only the kernel can show stays in the real-process tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from hotswapd.boot.launch import Spawned, launch
from hotswapd.core.reaper import Reaper
from hotswapd.core.stop import send

if TYPE_CHECKING:
    import _socket

    from hotswapd.boot.config import Config
    from hotswapd.boot.listeners import Listener
    from hotswapd.boot.spawn import Credentials
    from hotswapd.gates.notify import NotifySocket


class Processes:
    """The real thing: fork+exec, kill(2), waitpid(-1)."""

    def launch(
        self,
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
        return launch(
            config,
            listeners,
            number,
            environ,
            credentials,
            notify=notify,
            exec_fd=exec_fd,
            executable=executable,
            sockets=sockets,
        )

    def send(self, pid: int, sig: int) -> bool:
        """Signal one process; False when it is already gone."""
        return send(pid, sig)

    def reaper(self, on_exit: Callable[[int, int], None]) -> Reaper:
        return Reaper(on_exit)
