"""A WSGI app for gunicorn tests: says who answered, so tests see which generation served."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = f"hello from gunicorn pid {os.getppid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getppid()))])
    return [body]
