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

from hotswapd.boot import sigbits
from hotswapd.boot.units import (
    BadValue,
    parse_bool,
    parse_duration,
    parse_signal,
)
from hotswapd.boot.values import (
    DEFAULT_MEMORY_GROWTH,
    ListenSpec,
    MemoryGrowth,
    Record,
    WatchSpec,
    choice,
    health_path,
    health_url,
    host_port,
    parse_listen,
    parse_memory_growth,
    parse_watch,
    text,
)
from hotswapd.errors import UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms (mypy: always_true)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, Literal

ENV_PREFIX = "HOTSWAPD_"


class Config(Record):
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


# --------------------------------------------------------------------------- the option table


class Option(Record):
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
    Option("listen", text, "socket to bind once and pass to every generation: "
           "[NAME=]tcp://HOST:PORT, tcp://:PORT, tcp://[::1]:PORT or unix:///path", "[NAME=]URL",
           repeat=True),
    Option("user", text, "run children as this user (and group); hotswapd keeps root to bind",
           "NAME[:GROUP]"),
    Option("no_new_privs", parse_bool, "set PR_SET_NO_NEW_PRIVS in children", flag_only=True),
    Option("on_exit", choice("exit", "restart"),
           "when the active child exits by itself: exit (Kubernetes) or restart (compose)",
           "exit|restart"),
    Option("stop_signal", parse_signal,
           "signal sent to children on stop (default: the one hotswapd received)", "SIGNAL"),
    Option("stop_timeout", parse_duration, "wait this long after the stop signal before SIGKILL "
           "(default 30s)", "DURATION"),
    Option("swap_signal", parse_signal, "signal that triggers a hot swap (default USR2)", "SIGNAL"),
    Option("health", health_path, "HTTP path probed on the new generation's private listener",
           "PATH"),
    Option("health_url", health_url, "probe this URL instead (server without the probe listener)",
           "URL"),
    Option("health_timeout", parse_duration, "bound on the whole readiness phase (default 30s)",
           "DURATION"),
    Option("ready", choice("notify", "none"), "also wait for sd_notify READY=1 from the new "
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
    Option("watch_mode", choice("auto", "inotify", "poll"), "auto, inotify or poll",
           "auto|inotify|poll"),
    Option("debounce", parse_duration, "quiet period after a change before acting (default 300ms)",
           "DURATION"),
    Option("poll_interval", parse_duration, "stat interval in poll mode (default 1s)", "DURATION"),
    Option("control_socket", text, "unix socket for `hotswapd ctl`", "PATH"),
    Option("metrics", host_port, "serve Prometheus metrics on HOST:PORT", "HOST:PORT"),
    Option("log_format", choice("auto", "json", "console"), "json, console, or auto (console "
           "on a TTY)", "json|console"),
    Option("log_level", choice("debug", "info", "warning", "error"), "log level",
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


def parse_run_args(argv: Sequence[str], require_command: bool = True) -> Config:
    """Parse run-mode arguments into a Config (shared with doctor)."""
    import os

    flags, command = parse_flags(argv)
    return build_config(flags, command, os.environ, require_command=require_command)
