"""structlog set-up: JSON lines in containers, console rendering on a TTY.

Logs go to stderr only; the children's stdout and stderr are their own (inherited,
never proxied), so hotswapd's lines interleave with the server's but never wrap them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _StderrOrNothing:
    """stderr for log lines, or nowhere once its reader is gone.

    A closed stderr (a log driver that died, `| head`) makes every write fail with EPIPE;
    PID 1 must keep supervising rather than crash on its own log line.
    """

    def write(self, text: str) -> int:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):  # EPIPE, EIO, or stderr already closed
            return 0
        return len(text)

    def flush(self) -> None:
        return None


def configure(log_format: str = "auto", level: str = "info") -> None:
    """Configure structlog once; `auto` picks console on a TTY and JSON elsewhere."""
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        # One write per line: print() writes the text and the newline separately, and a
        # child's stderr line landing in between would split a JSON record in two.
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, _StderrOrNothing())),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> FilteringBoundLogger:
    """A logger bound to `context` (e.g. component='watch')."""
    logger: FilteringBoundLogger = structlog.get_logger(**context)
    return logger
