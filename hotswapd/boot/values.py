"""The structured option values: listen URLs, watch specs, the memory rule, health URLs.

Each is a small immutable record (`Record`): a frozen dataclass would import
`dataclasses` and `inspect` (~17 ms) before generation 1 is spawned.
"""

from __future__ import annotations

import os

from hotswapd.boot.units import (
    BadValue,
    format_size,
    parse_signal,
    parse_size,
    plain_number,
    signal_name,
)

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Literal

PROBE_LISTENER_NAME = "probe"


class Record:
    """An immutable value with equality and a readable repr (what a frozen dataclass gives)."""

    __slots__: tuple[str, ...] = ()

    def _set(self, **values: object) -> None:
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()  # type: ignore[attr-defined,unused-ignore]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class ListenSpec(Record):
    """One `--listen [NAME=]URL`: what to bind (or adopt) and the name children see."""

    __slots__ = ("name", "kind", "host", "port", "path", "url")
    name: str
    kind: Literal["tcp", "unix"]
    host: str  # "" means every address; IPv6 literals without brackets
    port: int
    path: str  # unix socket path
    url: str

    def __init__(self, name: str, kind: Literal["tcp", "unix"], host: str, port: int, path: str,
                 url: str) -> None:  # fmt: skip
        self._set(name=name, kind=kind, host=host, port=port, path=path, url=url)


class WatchSpec(Record):
    """One `--watch PATH[=swap|signal:NAME]`: a path and what a change to it triggers."""

    __slots__ = ("path", "action", "signal")
    path: str
    action: Literal["swap", "signal"]
    signal: int | None

    def __init__(self, path: str, action: Literal["swap", "signal"],
                 signal: int | None = None) -> None:  # fmt: skip
        self._set(path=path, action=action, signal=signal)

    def describe(self) -> str:
        if self.action == "signal" and self.signal is not None:
            return f"{self.path}=signal:{signal_name(self.signal)[3:]}"
        return f"{self.path}=swap"


class MemoryGrowth(Record):
    """The memory gate's rule: fail only when every configured limit is exceeded.

    `1.5+32MiB` fails a candidate that is both over 1.5x the old generation and more
    than 32 MiB above it, so a small server that doubles from 7 MB idle to 13 MB under
    live traffic is not rolled back.
    """

    __slots__ = ("ratio", "allowance")
    ratio: float | None
    allowance: int | None  # bytes

    def __init__(self, ratio: float | None, allowance: int | None) -> None:
        self._set(ratio=ratio, allowance=allowance)

    @property
    def enabled(self) -> bool:
        return self.ratio is not None or self.allowance is not None

    def describe(self) -> str:
        parts = []
        if self.ratio is not None:
            parts.append(f"{self.ratio:g}x")
        if self.allowance is not None:
            parts.append(f"+{format_size(self.allowance)}")
        return " and ".join(parts) if parts else "off"


DEFAULT_MEMORY_GROWTH = MemoryGrowth(ratio=1.5, allowance=32 * 1024 * 1024)


def parse_memory_growth(text: str | float) -> MemoryGrowth:
    if isinstance(text, int | float) and not isinstance(text, bool):
        return MemoryGrowth(ratio=float(text), allowance=None)
    raw = str(text).strip()
    if raw.lower() in ("off", "none", "0"):
        return MemoryGrowth(ratio=None, allowance=None)
    ratio: float | None = None
    allowance: int | None = None
    hint = "use a ratio (1.5), a size (64MiB), both (1.5+32MiB), or off"
    for part in raw.split("+"):
        part = part.strip()
        as_ratio = plain_number(part[:-1] if part[-1:] in ("x", "X") else part)
        if as_ratio is not None and ratio is None:
            if as_ratio < 1.0:
                raise BadValue("a ratio below 1 would fail every swap; " + hint)
            ratio = as_ratio
            continue
        if allowance is not None:
            raise BadValue(hint)
        try:
            allowance = parse_size(part)
        except BadValue:
            raise BadValue(hint) from None
    return MemoryGrowth(ratio=ratio, allowance=allowance)


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 255 and name.isascii() and all(
        char.isalnum() or char in "_.-" for char in name
    )  # fmt: skip


def parse_listen(text: str, index: int) -> ListenSpec:
    """Parse `[NAME=]URL` where URL is tcp://HOST:PORT, tcp://:PORT, tcp://[::1]:PORT or unix:///path."""
    hint = "use [NAME=]tcp://HOST:PORT, tcp://:PORT, tcp://[::1]:PORT or unix:///path"
    name = f"listen{index}"
    url = text.strip()
    head, sep, rest = url.partition("=")
    if sep and "://" not in head:
        name, url = head, rest
        if not _valid_name(name):
            raise BadValue("a listener name is 1-255 letters, digits, '_', '.' or '-'")
    if name == PROBE_LISTENER_NAME:
        raise BadValue("the name 'probe' is reserved for the per-generation health listener")
    if url.startswith("unix://"):
        path = url[len("unix://") :]
        if not path.startswith("/"):
            raise BadValue("unix socket paths must be absolute: unix:///run/app.sock; " + hint)
        return ListenSpec(name=name, kind="unix", host="", port=0, path=path, url=url)
    if not url.startswith("tcp://"):
        raise BadValue(hint)
    hostport = url[len("tcp://") :]
    host, colon, port_text = hostport.rpartition(":")
    if not colon or not port_text.isdigit() or len(port_text) > 5 or "/" in host:
        raise BadValue(hint)
    if host.startswith("["):
        if not host.endswith("]") or ":" not in host:
            raise BadValue(hint)
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise BadValue(hint)
    port = int(port_text)
    if port > 65535:
        raise BadValue("ports go from 0 to 65535")
    return ListenSpec(name=name, kind="tcp", host=host, port=port, path="", url=url)


def parse_watch(text: str) -> WatchSpec:
    path, sep, action = text.rpartition("=")
    if not sep or action.startswith("/") or not path:
        path, action = text, "swap"
    if not path:
        raise BadValue("use PATH, PATH=swap or PATH=signal:NAME")
    path = os.path.abspath(path)
    if action == "swap":
        return WatchSpec(path=path, action="swap")
    if action.startswith("signal:"):
        return WatchSpec(path=path, action="signal", signal=parse_signal(action[len("signal:") :]))
    raise BadValue("the action after '=' is swap or signal:NAME (e.g. signal:HUP)")


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise BadValue("use " + " or ".join(choices))
        return value

    return parse


def text(text: Any) -> str:
    return str(text)


def health_path(text: Any) -> str:
    value = str(text)
    if not value.startswith("/"):
        raise BadValue("a health path starts with '/', e.g. /healthz")
    return value


def _ip_literal(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        return bool(inner) and all(char in "0123456789abcdefABCDEF:." for char in inner)
    parts = host.split(".")
    return len(parts) == 4 and all(part.isdigit() and int(part) < 256 for part in parts)


def health_url(text: Any) -> str:
    value = str(text)
    hint = ("use an IP literal URL such as http://127.0.0.1:9090/healthz "
            "(hostnames would start resolver threads in PID 1)")  # fmt: skip
    scheme, sep, rest = value.partition("://")
    if scheme not in ("http", "https") or not sep:
        raise BadValue(hint)
    authority = rest.split("/", 1)[0]
    host, colon, port = authority.rpartition(":")
    if not colon or not port.isdigit() or not _ip_literal(host):
        raise BadValue(hint)
    return value


def host_port(text: Any) -> str:
    value = str(text)
    host, colon, port = value.rpartition(":")
    if (not colon or not port.isdigit() or len(port) > 5
            or not (host in ("", "localhost") or _ip_literal(host)
                    or all(c.isdigit() or c == "." for c in host))):  # fmt: skip
        raise BadValue("use HOST:PORT, e.g. 0.0.0.0:9100 or :9100")
    return value
