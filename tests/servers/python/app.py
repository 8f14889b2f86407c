"""One app for the recipe tests, as WSGI (gunicorn) and ASGI (uvicorn, hypercorn).

Every response says which process answered (X-Pid: the server's master or the
process hotswapd started), so a test sees which generation served each request.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getppid()))])
    return [b"ok\n"]


async def asgi(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    # a worker of gunicorn (UvicornWorker) reports its master, the process hotswapd started
    pid = str(os.getppid() if "gunicorn" in os.environ.get("SERVER_SOFTWARE", "") else os.getpid())
    headers = [(b"content-type", b"text/plain"), (b"x-pid", pid.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok\n"})
