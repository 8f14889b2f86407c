"""The run mode's second half: after generation 1 runs, the heavy imports, the loop, the
event sources (signals, reaper, watcher, control socket, metrics) and the supervisor.

This is the composition root of the server side: the one module that wires the
event sources to the supervisor. `boot/run.py` hands over to it once the first fork is done.
"""

from __future__ import annotations

import os

from hotswapd.boot import signals
from hotswapd.boot.units import signal_name
from hotswapd.errors import HotswapdError

TYPE_CHECKING = False  # see boot/config.py
if TYPE_CHECKING:
    from typing import Any

    from hotswapd.boot.config import Config
    from hotswapd.boot.launch import Spawned
    from hotswapd.boot.listeners import Listener
    from hotswapd.boot.sockets import Prebound
    from hotswapd.boot.spawn import Credentials


def serve(
    config: Config,
    listeners: list[Listener],
    first: Spawned,
    environ: dict[str, str],
    credentials: Credentials | None,
    is_pid1: bool,
    adopted: bool,
    spawned_ms: float,
    prebound: Prebound,
) -> int:
    import asyncio  # the heavy imports start here, after generation 1 is running

    from hotswapd import log as logging_setup

    logging_setup.configure(config.log_format, config.log_level)
    log = logging_setup.get_logger()
    for listener in listeners:
        # Which mode each listener is in, and why, said once at start (docs/swap.md).
        log.info(
            "listening",
            name=listener.name,
            address=listener.address(),
            adopted=adopted,
            mode=listener.mode,
            why=listener.why,
        )
    if is_pid1:
        log.info("init", role="pid1", note="reaping every orphan in this pid namespace")
    else:
        log.info(
            "init",
            role="subreaper",
            pid=os.getpid(),
            note="not PID 1: became a child subreaper so orphans are reaped here",
        )
    log.info(
        "spawned",
        generation=first.number,
        pid=first.pid,
        executable=first.executable,
        startup_ms=round(spawned_ms, 2),
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(
            _main(config, listeners, first, environ, credentials, log, prebound)
        )
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _main(
    config: Config,
    listeners: list[Listener],
    first: Spawned,
    environ: dict[str, str],
    credentials: Credentials | None,
    log: Any,
    prebound: Prebound,
) -> int:
    import asyncio

    from hotswapd.core.supervisor import Supervisor

    loop = asyncio.get_running_loop()
    supervisor = Supervisor(config, listeners, first, environ, credentials, log)
    signals.install(loop, supervisor.on_signal, supervisor.reaper.reap)
    sources: list[Any] = []
    try:
        sources = await _start_sources(config, supervisor, log, sources, prebound)
    except HotswapdError as exc:
        # Generation 1 already runs: stop it the normal way rather than orphan it.
        from hotswapd.core.events import StopRequested

        supervisor.post(StopRequested(exc.exit_code, str(exc)))
    log.info(
        "supervising",
        generation=first.number,
        pid=first.pid,
        swap_signal=signal_name(config.swap_signal),
    )
    try:
        return await supervisor.run()
    finally:
        for close in reversed(sources):
            await close()
        signals.uninstall(loop)


async def _start_sources(
    config: Config, supervisor: Any, log: Any, closers: list[Any], prebound: Prebound
) -> list[Any]:
    """Start the optional event sources, adding each one's async close function to `closers`."""
    if config.watch:
        from hotswapd.core.events import SignalRequested
        from hotswapd.watch.watcher import Watcher

        def on_change(spec: Any, reason: str) -> None:
            if spec.action == "swap":
                supervisor.request_swap("watch", f"{spec.path}: {reason}")
            else:
                supervisor.post(SignalRequested(spec.signal, source=f"watch {spec.path}"))

        watcher = Watcher(
            config.watch,
            mode=config.watch_mode,
            debounce=config.debounce,
            poll_interval=config.poll_interval,
            on_change=on_change,
        )
        await watcher.start()
        supervisor.watcher = watcher
        closers.append(watcher.close)
    from hotswapd.control.server import start_control

    # The sockets bound before the first fork are taken over, not bound again.
    closers.append(await start_control(config, supervisor, log, bound=prebound.take_control()))
    if config.metrics:
        from hotswapd.control.metrics import start_metrics

        closers.append(await start_metrics(config, supervisor, log, bound=prebound.take_metrics()))
    return closers
