"""The run mode, as a checklist (the order is the design):

1. block the signals we will handle   (one arriving now stays pending, not lost)
2. become a child subreaper           (unless PID 1, which reaps orphans anyway)
3. bind (or adopt) the listeners      (once, for hotswapd's whole life), and try the
   control socket and metrics port     (a bad one is exit 2 with no child started)
4. spawn generation 1                 (before asyncio, aiohttp, structlog are imported)
5. import the heavy modules
6. start the event sources            (signals unblocked, reaper, watcher, control)
7. await the supervisor               (its exit code is ours)
"""

from __future__ import annotations

import os
import sys
import time

from hotswapd.boot import signals, sockets
from hotswapd.boot.config import Config
from hotswapd.boot.launch import check_templates, launch, resolve_health_url
from hotswapd.boot.listeners import Listener, adopt_inherited, bind_all, close_all
from hotswapd.boot.spawn import resolve_user
from hotswapd.errors import HotswapdError

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    pass


def run(config: Config) -> int:
    started = time.monotonic()
    signals.block_startup_signals()
    is_pid1 = os.getpid() == 1
    if not is_pid1:
        import prctl

        prctl.set_child_subreaper(True)  # orphans come to us, not to the real init
    environ = dict(os.environ)
    listeners: list[Listener] = []
    prebound: sockets.Prebound | None = None
    try:
        adopted = adopt_inherited(environ)
        listeners = adopted if adopted is not None else bind_all(config.listen, config.steering)
        check_templates(config.command, [listener.name for listener in listeners])
        if config.health_url is not None and "{" in config.health_url:
            config = config.replace(health_url=resolve_health_url(config.health_url, listeners))
        credentials = resolve_user(config.user) if config.user else None
        prebound = sockets.check_all(config, environ)  # a bad one: exit 2 and no child
        notify = None
        if config.ready == "notify":
            from hotswapd.gates.notify import NotifySocket

            notify = NotifySocket(1)
        first = launch(config, listeners, 1, environ, credentials, notify=notify)
    except HotswapdError as exc:
        close_all(listeners)
        if prebound is not None:
            prebound.release()
        from hotswapd.host.shadow import program_hint  # only on this error path: it forks

        print(f"hotswapd: {exc}{program_hint(exc, config.command)}", file=sys.stderr, flush=True)
        return exc.exit_code
    spawned_ms = (time.monotonic() - started) * 1000
    from hotswapd.serve import serve  # the one hand-off: heavy imports start after the spawn

    try:
        return serve(
            config,
            listeners,
            first,
            environ,
            credentials,
            is_pid1,
            adopted is not None,
            spawned_ms,
            prebound,
        )
    finally:
        prebound.release()  # whatever the control server and metrics did not take
        close_all(listeners)
