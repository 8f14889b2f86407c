"""One frozen Config from flags, then HOTSWAPD_* environment, then a TOML file.

Precedence is flags > env > file > default, per option. Every value is validated
here, so a bad one fails before anything is bound or spawned, with one line that
names the option, the value and what is accepted (exit 2).

This module runs before generation 1 is spawned, so it imports nothing heavy: no
re, dataclasses, argparse, typing or signal at run time (together they cost more than
the whole interpreter start). Values are small immutable records and parsing is
done with str methods.
"""

from __future__ import annotations

import os

from hotswapd import sigbits
from hotswapd.errors import UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms (mypy: always_true)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, Literal

ENV_PREFIX = "HOTSWAPD_"
PROBE_LISTENER_NAME = "probe"


class _Record:
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


# --------------------------------------------------------------------------- values


class ListenSpec(_Record):
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


class WatchSpec(_Record):
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


class MemoryGrowth(_Record):
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


class Config(_Record):
    """Everything the run mode needs, validated and immutable."""

    __slots__ = (
        "command", "listen", "user", "no_new_privs", "on_exit", "stop_signal", "stop_timeout",
        "swap_signal", "health", "health_url", "health_timeout", "ready", "settle",
        "max_memory_growth", "canary", "drain_signal", "drain_timeout", "watch", "watch_mode",
        "debounce", "poll_interval", "control_socket", "metrics", "log_format", "log_level",
    )  # fmt: skip
    command: tuple[str, ...]
    listen: tuple[ListenSpec, ...]
    user: str | None
    no_new_privs: bool
    on_exit: Literal["exit", "restart"]
    stop_signal: int | None  # None: forward the signal that asked us to stop
    stop_timeout: float
    swap_signal: int
    health: str | None
    health_url: str | None
    health_timeout: float
    ready: Literal["notify", "none"]
    settle: float
    max_memory_growth: MemoryGrowth
    canary: float
    drain_signal: int
    drain_timeout: float
    watch: tuple[WatchSpec, ...]
    watch_mode: Literal["auto", "inotify", "poll"]
    debounce: float
    poll_interval: float
    control_socket: str | None
    metrics: str | None
    log_format: Literal["auto", "json", "console"]
    log_level: str

    def __init__(
        self,
        command: tuple[str, ...],
        listen: tuple[ListenSpec, ...] = (),
        user: str | None = None,
        no_new_privs: bool = False,
        on_exit: Literal["exit", "restart"] = "exit",
        stop_signal: int | None = None,
        stop_timeout: float = 30.0,
        swap_signal: int = sigbits.SIGUSR2,
        health: str | None = None,
        health_url: str | None = None,
        health_timeout: float = 30.0,
        ready: Literal["notify", "none"] = "none",
        settle: float = 1.0,
        max_memory_growth: MemoryGrowth = DEFAULT_MEMORY_GROWTH,
        canary: float = 0.0,
        drain_signal: int = sigbits.SIGTERM,
        drain_timeout: float = 30.0,
        watch: tuple[WatchSpec, ...] = (),
        watch_mode: Literal["auto", "inotify", "poll"] = "auto",
        debounce: float = 0.3,
        poll_interval: float = 1.0,
        control_socket: str | None = None,
        metrics: str | None = None,
        log_format: Literal["auto", "json", "console"] = "auto",
        log_level: str = "info",
    ) -> None:
        self._set(
            command=command, listen=listen, user=user, no_new_privs=no_new_privs,
            on_exit=on_exit, stop_signal=stop_signal, stop_timeout=stop_timeout,
            swap_signal=swap_signal, health=health, health_url=health_url,
            health_timeout=health_timeout, ready=ready, settle=settle,
            max_memory_growth=max_memory_growth, canary=canary, drain_signal=drain_signal,
            drain_timeout=drain_timeout, watch=watch, watch_mode=watch_mode, debounce=debounce,
            poll_interval=poll_interval, control_socket=control_socket, metrics=metrics,
            log_format=log_format, log_level=log_level,
        )  # fmt: skip

    @property
    def health_gated(self) -> bool:
        return self.health is not None or self.health_url is not None or self.ready == "notify"


# --------------------------------------------------------------------------- parsers

_DURATION_UNITS = (("ms", 0.001), ("h", 3600.0), ("m", 60.0), ("s", 1.0))
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}  # fmt: skip


class BadValue(ValueError):
    """A value that does not parse; the message says what is accepted."""


def _number(text: str) -> float | None:
    """A plain decimal like 12 or 1.5 (no sign, exponent, inf or nan)."""
    if text and text.replace(".", "", 1).isdigit() and text.isascii():
        return float(text)
    return None


def parse_duration(text: str | float) -> float:
    hint = "use 500ms, 30s, 2m or a number of seconds"
    if isinstance(text, bool):
        raise BadValue(hint)
    if isinstance(text, int | float):
        if text < 0:
            raise BadValue("durations cannot be negative")
        return float(text)
    raw = text.strip().lower()
    for unit, factor in _DURATION_UNITS:
        if raw.endswith(unit):
            number = _number(raw[: -len(unit)].strip())
            if number is None:
                raise BadValue(hint)
            return number * factor
    number = _number(raw)
    if number is None:
        raise BadValue(hint)
    return number


def parse_size(text: str | int) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    raw = str(text).strip().lower()
    split = len(raw)
    while split > 0 and raw[split - 1].isalpha():
        split -= 1
    number, unit = _number(raw[:split].strip()), raw[split:]
    if number is None or unit not in _SIZE_UNITS:
        raise BadValue("use 64MiB, 1GiB or a number of bytes")
    return int(number * _SIZE_UNITS[unit])


def format_size(size: float) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(size) >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{int(size)} B"


def parse_signal(text: str | int) -> int:
    """Accept TERM, SIGTERM, 15 and RTMIN+3, as kill(1) does."""
    raw = str(text).strip().upper()
    if raw.isdigit():
        number = int(raw)
        if 0 < number < sigbits.NSIG:
            return number
        raise BadValue(f"signal numbers go from 1 to {sigbits.NSIG - 1}")
    name = raw if raw.startswith("SIG") else "SIG" + raw
    for base_name, base in (("SIGRTMIN", sigbits.SIGRTMIN), ("SIGRTMAX", sigbits.SIGRTMAX)):
        if name.startswith(base_name):
            offset = name[len(base_name) :]
            if offset and not (offset[0] in "+-" and offset[1:].isdigit()):
                break
            number = base + (int(offset) if offset else 0)
            if sigbits.SIGRTMIN <= number <= sigbits.SIGRTMAX:
                return number
            raise BadValue("real-time signals go from RTMIN to RTMAX")
    number_or_none = sigbits.number(name)
    if number_or_none is None or name in ("SIG_DFL", "SIG_IGN", "SIG_BLOCK", "SIG_UNBLOCK",
                                          "SIG_SETMASK"):  # fmt: skip
        raise BadValue("use a signal name such as TERM, QUIT, HUP or USR2")
    return number_or_none


def signal_name(number: int) -> str:
    """SIGTERM for 15, SIGRTMIN+3 for a real-time signal (no enum import needed)."""
    if sigbits.SIGRTMIN <= number <= sigbits.SIGRTMAX:
        return f"SIGRTMIN+{number - sigbits.SIGRTMIN}"
    for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGWINCH",
                 "SIGKILL", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGALRM", "SIGPIPE", "SIGABRT",
                 "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF",
                 "SIGPWR", "SIGIO", "SIGCHLD", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL",
                 "SIGTRAP", "SIGSYS", "SIGSTKFLT"):  # fmt: skip
        if sigbits.number(name) == number:
            return name
    return f"SIG{number}"


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
        as_ratio = _number(part[:-1] if part[-1:] in ("x", "X") else part)
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


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise BadValue("use true or false")


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise BadValue("use " + " or ".join(choices))
        return value

    return parse


def _text(text: Any) -> str:
    return str(text)


def _health_path(text: Any) -> str:
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


def _health_url(text: Any) -> str:
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


def _host_port(text: Any) -> str:
    value = str(text)
    host, colon, port = value.rpartition(":")
    if (not colon or not port.isdigit() or len(port) > 5
            or not (host in ("", "localhost") or _ip_literal(host)
                    or all(c.isdigit() or c == "." for c in host))):  # fmt: skip
        raise BadValue("use HOST:PORT, e.g. 0.0.0.0:9100 or :9100")
    return value


# --------------------------------------------------------------------------- the option table


class Option(_Record):
    """One option: its flag, how to parse one value, and whether it repeats."""

    __slots__ = ("name", "parse", "help", "metavar", "repeat", "flag_only")
    name: str  # the Config field
    parse: Callable[[Any], Any]
    help: str
    metavar: str
    repeat: bool
    flag_only: bool  # a boolean switch on the command line

    def __init__(self, name: str, parse: Callable[[Any], Any], help: str, metavar: str = "VALUE",
                 repeat: bool = False, flag_only: bool = False) -> None:  # fmt: skip
        self._set(name=name, parse=parse, help=help, metavar=metavar, repeat=repeat,
                  flag_only=flag_only)  # fmt: skip

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("listen", _text, "socket to bind once and pass to every generation: "
           "[NAME=]tcp://HOST:PORT, tcp://:PORT, tcp://[::1]:PORT or unix:///path", "[NAME=]URL",
           repeat=True),
    Option("user", _text, "run children as this user (and group); hotswapd keeps root to bind",
           "NAME[:GROUP]"),
    Option("no_new_privs", parse_bool, "set PR_SET_NO_NEW_PRIVS in children", flag_only=True),
    Option("on_exit", _choice("exit", "restart"),
           "when the active child exits by itself: exit (Kubernetes) or restart (compose)",
           "exit|restart"),
    Option("stop_signal", parse_signal,
           "signal sent to children on stop (default: the one hotswapd received)", "SIGNAL"),
    Option("stop_timeout", parse_duration, "wait this long after the stop signal before SIGKILL "
           "(default 30s)", "DURATION"),
    Option("swap_signal", parse_signal, "signal that triggers a hot swap (default USR2)", "SIGNAL"),
    Option("health", _health_path, "HTTP path probed on the new generation's private listener",
           "PATH"),
    Option("health_url", _health_url, "probe this URL instead (server without the probe listener)",
           "URL"),
    Option("health_timeout", parse_duration, "bound on the whole readiness phase (default 30s)",
           "DURATION"),
    Option("ready", _choice("notify", "none"), "also wait for sd_notify READY=1 from the new "
           "generation", "notify|none"),
    Option("settle", parse_duration, "wait this long after readiness before the memory gate "
           "(default 1s)", "DURATION"),
    Option("max_memory_growth", parse_memory_growth, "memory gate: RATIO, SIZE, RATIO+SIZE or off "
           "(default 1.5+32MiB: fail only when over both)", "RULE"),
    Option("canary", parse_duration, "keep both generations serving this long before cutover "
           "(default 0)", "DURATION"),
    Option("drain_signal", parse_signal, "signal that tells the old generation to drain "
           "(default TERM)", "SIGNAL"),
    Option("drain_timeout", parse_duration, "wait this long for the old generation to exit "
           "before SIGKILL (default 30s)", "DURATION"),
    Option("watch", parse_watch, "swap (or signal) when this file changes", "PATH[=ACTION]",
           repeat=True),
    Option("watch_mode", _choice("auto", "inotify", "poll"), "auto, inotify or poll",
           "auto|inotify|poll"),
    Option("debounce", parse_duration, "quiet period after a change before acting (default 300ms)",
           "DURATION"),
    Option("poll_interval", parse_duration, "stat interval in poll mode (default 1s)", "DURATION"),
    Option("control_socket", _text, "unix socket for `hotswapd ctl`", "PATH"),
    Option("metrics", _host_port, "serve Prometheus metrics on HOST:PORT", "HOST:PORT"),
    Option("log_format", _choice("auto", "json", "console"), "json, console, or auto (console "
           "on a TTY)", "json|console"),
    Option("log_level", _choice("debug", "info", "warning", "error"), "log level",
           "debug|info|warning|error"),
)  # fmt: skip

OPTION_BY_NAME = {option.name: option for option in OPTIONS}
OPTION_BY_FLAG = {option.flag: option for option in OPTIONS}


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the run-mode options to an argparse parser (for --help and the doc tests)."""
    parser.add_argument("--config", metavar="FILE", help="TOML file with the same option names")
    for option in OPTIONS:
        if option.flag_only:
            parser.add_argument(
                option.flag, action="store_const", const=True, default=None, help=option.help
            )
        else:
            parser.add_argument(
                option.flag,
                metavar=option.metavar,
                default=None,
                action="append" if option.repeat else "store",
                help=option.help,
            )


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split argv into raw option values and the command, with no argparse on the hot path.

    Accepts `--flag VALUE`, `--flag=VALUE`, repeated flags, `--` and a command that
    starts at the first non-option word. Returns ({"config": ..., field: raw}, command).
    """
    values: dict[str, Any] = {}
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return values, args[index + 1 :]
        if not arg.startswith("-") or arg == "-":
            return values, args[index:]
        flag, eq, inline = arg.partition("=")
        if flag == "--config":
            option_name = "config"
            option: Option | None = None
        else:
            option = OPTION_BY_FLAG.get(flag)
            if option is None:
                raise UsageError(f"unrecognized arguments: {arg} (see 'hotswapd --help')")
            option_name = option.name
        if option is not None and option.flag_only:
            value: Any = inline if eq else True
        elif eq:
            value = inline
        else:
            index += 1
            if index >= len(args):
                raise UsageError(f"argument {flag}: expected one argument")
            value = args[index]
        if option is not None and option.repeat:
            values.setdefault(option_name, []).append(value)
        else:
            values[option_name] = value
        index += 1
    return values, []


def _read_toml(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"--config: {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config: {path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--config: {path}: {exc.strerror}") from None
    normalised = {key.replace("-", "_"): value for key, value in data.items()}
    known = set(OPTION_BY_NAME) | {"command"}
    for key in normalised:
        if key not in known:
            raise UsageError(f"--config: {path}: unknown option '{key}'")
    return normalised


def _convert(option: Option, raw: Any, source: str) -> Any:
    values = raw if option.repeat else [raw]
    parsed = []
    for index, value in enumerate(values):
        try:
            if option.name == "listen":
                parsed.append(parse_listen(str(value), index))
            else:
                parsed.append(option.parse(value))
        except BadValue as exc:
            raise UsageError(f"{source}: invalid value '{value}': {exc}") from None
    return tuple(parsed) if option.repeat else parsed[0]


def _split_env_list(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def build_config(
    flags: Mapping[str, Any] | argparse.Namespace,
    command: Sequence[str],
    environ: Mapping[str, str],
    require_command: bool = True,
) -> Config:
    """Merge flags, HOTSWAPD_* and the TOML file into one Config (flags win)."""
    raw_flags: Mapping[str, Any] = flags if isinstance(flags, dict) else vars(flags)
    config_path = raw_flags.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    file_values = _read_toml(config_path) if config_path else {}
    values: dict[str, Any] = {}
    for option in OPTIONS:
        flag_value = raw_flags.get(option.name)
        if flag_value is not None:
            values[option.name] = _convert(option, flag_value, option.flag)
        elif option.env in environ:
            raw = environ[option.env]
            env_value: Any = _split_env_list(raw) if option.repeat else raw
            values[option.name] = _convert(option, env_value, option.env)
        elif option.name in file_values:
            raw_file = file_values[option.name]
            if option.repeat and not isinstance(raw_file, list):
                raw_file = [raw_file]
            values[option.name] = _convert(option, raw_file, f"{config_path}: {option.name}")
    argv_command = tuple(command)
    if not argv_command and "command" in file_values:
        raw_command = file_values["command"]
        if not isinstance(raw_command, list) or not all(isinstance(c, str) for c in raw_command):
            raise UsageError(f"{config_path}: command: use a list of strings")
        argv_command = tuple(raw_command)
    if require_command and not argv_command:
        raise UsageError("no program given: hotswapd [OPTIONS] -- PROGRAM [ARGS...]")
    _check_listen_names(values.get("listen", ()))
    return Config(argv_command, **values)


def _check_listen_names(specs: Sequence[ListenSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise UsageError(f"--listen: the name '{spec.name}' is used twice (names are unique)")
        seen.add(spec.name)
