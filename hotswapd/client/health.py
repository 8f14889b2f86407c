"""`hotswapd health`: exit 0 when the active generation is healthy, else 1 and one line.

For a Docker HEALTHCHECK or a Kubernetes exec probe, so it asks hotswapd instead of a
port: `--listen` may change, hotswapd knows where the active generation answers. With
`--health`/`--health-url` hotswapd probes the active generation (a verdict at most a
second old is reused); without, healthy means the active generation is running.

It runs every few seconds, so it is import-light: the stdlib HTTP client of the control
socket, argparse, nothing of the server.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from hotswapd.boot.control_paths import client_path
from hotswapd.client.http import Connection
from hotswapd.errors import EXIT_FAILURE, EXIT_OK, HotswapdError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"health: {message} (see 'hotswapd health --help')")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="hotswapd health",
        description="Exit 0 when the active generation is healthy (its --health check "
        "passes, or without --health: it runs), else 1 with one line on stderr.",
    )
    top.add_argument(
        "--control-socket",
        metavar="PATH",
        help="the socket hotswapd listens on (env HOTSWAPD_CONTROL_SOCKET)",
    )
    top.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=2.0,
        help="give up after this long (default 2: inside Docker's HEALTHCHECK --timeout=3s; "
        "keep it under the probe's own timeout)",
    )
    return top


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    if not 0 < options.timeout < 3600:
        raise UsageError("health: --timeout must be between 0 and 3600 seconds")
    connection = Connection(client_path(options.control_socket, os.environ))
    try:
        with connection.request("GET", "/health", timeout=options.timeout) as answer:
            if answer.status == 403:
                raise connection.denied()
            verdict = answer.json()
    except HotswapdError as exc:
        print(f"hotswapd: health: unhealthy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    where = f"generation {verdict.get('generation')} pid {verdict.get('pid')}"
    if verdict.get("healthy") is True and answer.status == 200:
        check = verdict.get("check", "running")
        print(f"healthy: {where} ({'running' if check == 'running' else f'GET {check}'})")
        return EXIT_OK
    reason = verdict.get("reason") or verdict.get("error") or f"HTTP {answer.status}"
    print(f"hotswapd: health: unhealthy: {where}: {reason}", file=sys.stderr)
    return EXIT_FAILURE
