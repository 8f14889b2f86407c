"""The structured option values: listen URLs, watch specs, the memory rule, health URLs.

Each is a small immutable record (`Record`): a frozen dataclass would import
`dataclasses` and `inspect` (~17 ms) before generation 1 is spawned.
"""

from __future__ import annotations

# _socket, not socket: inet_pton checks IP literal syntax exactly as the kernel will read
# it, and the socket module builds enums at import (see boot/listeners.py).
import _socket
import os

from hotswapd.boot.units import (
    BadValue,
    format_duration,
    format_size,
    is_finite,
    need_str,
    parse_duration,
    parse_size,
    plain_number,
    signal_for,
    signal_name,
)

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

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

    def __init__(
        self, name: str, kind: Literal["tcp", "unix"], host: str, port: int, path: str, url: str
    ) -> None:
        self._set(name=name, kind=kind, host=host, port=port, path=path, url=url)


class WatchSpec(Record):
    """One `--watch PATH[=swap|signal:NAME]`: a path and what a change to it triggers."""

    __slots__ = ("path", "action", "signal")
    path: str
    action: Literal["swap", "signal"]
    signal: int | None

    def __init__(
        self, path: str, action: Literal["swap", "signal"], signal: int | None = None
    ) -> None:
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

    def spec(self) -> str:
        """The rule as --max-memory-growth spells it (1.5+32MiB), for --help."""
        parts = []
        if self.ratio is not None:
            parts.append(f"{self.ratio:g}")
        if self.allowance is not None:
            parts.append(_spell_size(self.allowance))
        return "+".join(parts) if parts else "off"


def _spell_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


DEFAULT_MEMORY_GROWTH = MemoryGrowth(ratio=1.5, allowance=32 * 1024 * 1024)
MAX_ID = 2**32 - 2  # uid_t and gid_t; (uid_t)-1 means "leave unchanged" to setuid
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL


def parse_memory_growth(value: object) -> MemoryGrowth:
    hint = "use a ratio (1.5), a size (64MiB), both (1.5+32MiB), or off"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not is_finite(value):
            raise BadValue(f"a ratio must be a finite number; {hint}")
        value = str(value)
    raw = need_str(value, hint).strip()
    if raw.lower() in ("off", "none", "0", "0.0"):
        return MemoryGrowth(ratio=None, allowance=None)
    ratio: float | None = None
    allowance: int | None = None
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
    allowed = all(char.isalnum() or char in "_.-" for char in name)
    return 0 < len(name) <= 255 and name.isascii() and allowed


def _port(text: str) -> int | None:
    """A TCP port 0-65535 written in ASCII digits, or None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        return None
    port = int(text)
    return port if port <= 65535 else None


def parse_listen(value: object, index: int = 0) -> ListenSpec:
    """Parse `[NAME=]URL` where URL is tcp://HOST:PORT, tcp://:PORT, tcp://[::1]:PORT or unix:///path."""
    hint = "use [NAME=]tcp://HOST:PORT, tcp://:PORT, tcp://[::1]:PORT or unix:///path"
    name = f"listen{index}"
    url = need_str(value, hint).strip()
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
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            limit = f"at most {UNIX_PATH_MAX} bytes"
            raise BadValue(f"a unix socket path is {limit} (the kernel's limit); use a shorter one")
        return ListenSpec(name=name, kind="unix", host="", port=0, path=path, url=url)
    if not url.startswith("tcp://"):
        raise BadValue(hint)
    hostport = url[len("tcp://") :]
    host, colon, port_text = hostport.rpartition(":")
    if not colon or not (port_text.isascii() and port_text.isdigit()) or "/" in host:
        raise BadValue(hint)
    if host.startswith("["):
        address, _, zone = host[1:-1].partition("%")  # fe80::1%eth0: a link-local scope
        if not host.endswith("]") or not _ipv6(address) or "%" in zone:
            raise BadValue(hint)
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise BadValue(hint)
    port = _port(port_text)
    if port is None:
        raise BadValue("ports go from 0 to 65535")
    return ListenSpec(name=name, kind="tcp", host=host, port=port, path="", url=url)


_WATCH_SIGNAL = signal_for("watch")


def parse_watch(value: object) -> WatchSpec:
    hint = "use PATH, PATH=swap or PATH=signal:NAME"
    text = need_str(value, hint)
    path, sep, action = text.rpartition("=")
    if not sep or action.startswith("/") or not path:
        path, action = text, "swap"
    if not path:
        raise BadValue(hint)
    path = os.path.abspath(path)
    if action == "swap":
        return WatchSpec(path=path, action="swap")
    if action.startswith("signal:"):
        return WatchSpec(path=path, action="signal", signal=_WATCH_SIGNAL(action[len("signal:") :]))
    raise BadValue("the action after '=' is swap or signal:NAME (e.g. signal:HUP)")


def choice(*choices: str) -> Callable[[object], str]:
    hint = "use " + " or ".join(choices)

    def parse(value: object) -> str:
        chosen = need_str(value, hint).strip().lower()
        if chosen not in choices:
            raise BadValue(hint)
        return chosen

    return parse


def text(value: object) -> str:
    return need_str(value, "give it as text")


def path_text(value: object) -> str:
    """A filesystem path, or `off` (an empty value is `off` too: `HOTSWAPD_CONTROL_SOCKET=`)."""
    return need_str(value, 'give the path as text, e.g. "/run/hotswapd/control.sock"')


def parse_user(value: object) -> str:
    """NAME[:GROUP] with numeric ids in range; the names are looked up before the first fork."""
    hint = "use NAME, NAME:GROUP, UID or UID:GID"
    raw = need_str(value, hint).strip()
    if not raw:
        return raw  # `HOTSWAPD_USER=` (an empty compose variable): no --user, as before
    user, sep, group = raw.partition(":")
    if not user or (sep and not group) or ":" in group:
        raise BadValue(hint)
    for part in (user, group):
        if part.isdigit() and (not part.isascii() or int(part) > MAX_ID):
            raise BadValue(f"user and group ids go from 0 to {MAX_ID}")
        if not part.isprintable() or " " in part:
            raise BadValue(hint)
    return raw


def health_path(value: object) -> str:
    hint = "a health path starts with '/', e.g. /healthz"
    path = need_str(value, hint)
    if not path.startswith("/"):
        raise BadValue(hint)
    if not path.isprintable() or " " in path:  # it goes into the probe's request line as is
        raise BadValue("a health path has no spaces or control characters (write %20 for a space)")
    return path


def _ipv4(host: str) -> bool:
    try:
        _socket.inet_pton(_socket.AF_INET, host)
    except OSError:
        return False
    return True


def _ipv6(host: str) -> bool:
    try:
        _socket.inet_pton(_socket.AF_INET6, host)
    except OSError:
        return False
    return True


def _ip_literal(host: str) -> bool:
    """An IPv4 address or a bracketed IPv6 one, in the syntax the kernel reads."""
    if host.startswith("[") and host.endswith("]"):
        return _ipv6(host[1:-1])
    return _ipv4(host)


def health_url(value: object) -> str:
    hint = (
        "use an IP literal URL such as http://127.0.0.1:9090/healthz "
        "(hostnames would start resolver threads in PID 1)"
    )
    url = need_str(value, hint)
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep or not url.isprintable() or " " in url:
        raise BadValue(hint)
    authority = rest.split("/", 1)[0]
    # {port:NAME}: the port of listener NAME, filled in once the sockets are bound
    template = authority.find(":{port:")
    if template >= 0 and authority.endswith("}"):
        host, colon, port = authority[:template], ":", authority[template + 1 :]
    else:
        host, colon, port = authority.rpartition(":")
    if not colon or not _ip_literal(host):
        raise BadValue(hint)
    if _port(port) is None and not (port.startswith("{port:") and port.endswith("}")):
        raise BadValue("ports go from 0 to 65535 (or {port:NAME}); " + hint)
    return url


def host_port(value: object) -> str:
    """HOST:PORT for --metrics: an IP literal, localhost or nothing (every address)."""
    hint = (
        "use HOST:PORT with an IP address, e.g. 0.0.0.0:9100, 127.0.0.1:9100, [::1]:9100 or :9100"
    )
    address = need_str(value, hint).strip()
    host, colon, port = address.rpartition(":")
    if not colon:
        raise BadValue(hint)
    if _port(port) is None:
        raise BadValue("ports go from 0 to 65535; " + hint)
    if not (host in ("", "localhost") or _ip_literal(host)):
        raise BadValue(f"'{host}' is not an IP address; {hint}")
    return address


DEFAULT_LIVENESS_FAILURES = 3
MAX_FAILURES = 100


class LivenessRule(Record):
    """`--liveness 5s,3`: probe every 5 s, replace after 3 consecutive failures."""

    __slots__ = ("interval", "failures")
    interval: float
    failures: int

    def __init__(self, interval: float, failures: int = DEFAULT_LIVENESS_FAILURES) -> None:
        self._set(interval=interval, failures=failures)

    def spec(self) -> str:
        return f"{format_duration(self.interval)},{self.failures}"


def parse_liveness(value: object) -> LivenessRule | None:
    """`INTERVAL[,FAILURES]` (`5s`, `2s,5`) or `off`; None means off."""
    hint = "use INTERVAL[,FAILURES] such as 5s or 2s,5 (FAILURES 1 to 100, default 3), or off"
    raw = need_str(value, hint).strip().lower()
    if raw in ("off", "none", "0", ""):
        return None
    interval_text, comma, failures_text = raw.partition(",")
    try:
        interval = parse_duration(interval_text)
    except BadValue as exc:
        raise BadValue(f"{exc}; {hint}") from None
    if interval <= 0:
        raise BadValue(hint)
    failures = DEFAULT_LIVENESS_FAILURES
    if comma:
        failures_text = failures_text.strip()
        if not failures_text.isdigit() or not failures_text.isascii():
            raise BadValue(hint)
        failures = int(failures_text)
        if not 1 <= failures <= MAX_FAILURES:
            raise BadValue(hint)
    return LivenessRule(interval, failures)
