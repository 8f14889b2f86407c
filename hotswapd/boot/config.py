"""One frozen Config from flags, then HOTSWAPD_* environment, then a TOML file.

Precedence is flags > env > file > default, per option. Every value from every source
goes through the same parser (boot/units, boot/values), so a bad one fails before
anything is bound or spawned, with one line that names the option, the value and what
is accepted (exit 2).

Each option is written once, as a class attribute of `Config`: its parser (whose
return type is the field's type), its default, its help text and metavar. From that
one line come the field, its default, the `--flag`, the `HOTSWAPD_NAME` variable, the
TOML key, and the `(default: …)` that --help shows.

This module runs before generation 1 is spawned, so it imports nothing heavy: no
re, dataclasses, argparse, typing or signal at run time (together they cost more than
the whole interpreter start). Values are small immutable records and parsing is
done with str methods.
"""

from __future__ import annotations

import os
import stat

from hotswapd.boot import sigbits
from hotswapd.boot.steering_options import format_canary, parse_canary, parse_steering
from hotswapd.boot.units import (
    BadValue,
    format_duration,
    format_signal,
    parse_bool,
    parse_duration,
    positive_duration,
    signal_for,
)
from hotswapd.boot.values import (
    DEFAULT_MEMORY_GROWTH,
    ListenSpec,
    LivenessRule,
    MemoryGrowth,
    WatchSpec,
    choice,
    health_path,
    host_port,
    parse_listen,
    parse_liveness,
    parse_memory_growth,
    parse_user,
    parse_watch,
    path_text,
)
from hotswapd.boot.values import (
    health_url as parse_health_url,
)
from hotswapd.errors import UsageError
from hotswapd.gates.analysis import (
    DEFAULT_METRICS_PATH,
    DEFAULT_MIN_REQUESTS,
    Rule,
    parse_metrics_path,
    parse_min_requests,
    parse_rule,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms (mypy: always_true)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, Generic, Literal, TypeVar, overload

    T = TypeVar("T")
    U = TypeVar("U")
else:

    class Generic:
        """At run time `Generic[T]` is plain `object`: no typing import before the spawn."""

        def __class_getitem__(cls, _item):
            return object

    T = None


ENV_PREFIX = "HOTSWAPD_"
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few lines; a bigger one is the wrong file


class Option(Generic[T]):
    """One option, declared as a `Config` attribute; reading it on a Config gives the value.

    `parse` takes one raw value from any source (a flag or env string, a TOML value)
    and returns the field's value (of type T, the default's) or raises BadValue. A
    repeatable option parses each item and its field is the tuple of them.
    """

    __slots__ = ("name", "parse", "default", "help", "metavar", "repeat", "flag_only", "show")

    name: str
    parse: Callable[[Any], Any]
    default: T
    help: str
    metavar: str
    repeat: bool
    flag_only: bool  # a boolean switch on the command line
    show: Callable[[Any], str] | None  # spells the default for --help; None: no default shown

    def __init__(
        self,
        parse: Callable[[Any], Any],
        default: T,
        help: str,
        metavar: str = "VALUE",
        *,
        show: Callable[[T], str] | None = str,
        repeat: bool = False,
        flag_only: bool = False,
    ) -> None:
        self.parse = parse
        self.default = default
        self.help = help
        self.metavar = metavar
        self.repeat = repeat
        self.flag_only = flag_only
        self.show = show if default is not None and not repeat and not flag_only else None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    if TYPE_CHECKING:

        @overload
        def __get__(self, instance: None, owner: type) -> Option[T]: ...

        @overload
        def __get__(self, instance: Config, owner: type) -> T: ...

    def __get__(self, instance: Config | None, owner: type) -> Option[T] | T:
        if instance is None:
            return self
        value: T = instance._values[self.name]
        return value

    def __set__(self, instance: Config, value: object) -> None:
        raise AttributeError("Config is immutable")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def default_text(self) -> str | None:
        """The default as a user would write it (30s, USR2, 1.5+32MiB), or None."""
        return None if self.show is None else self.show(self.default)


def repeated(parse: Callable[[Any], U], help: str, metavar: str) -> Option[tuple[U, ...]]:
    """A repeatable option: `parse` reads one item; the field is the tuple (default: none)."""
    return Option(parse, (), help, metavar, repeat=True)


def switch(help: str) -> Option[bool]:
    """A boolean flag: `--name` alone sets it; env and TOML take true/false."""
    return Option(parse_bool, False, help, show=None, flag_only=True)


class Config:
    """Everything the run mode needs, validated and immutable; one attribute per option."""

    __slots__ = ("command", "_values")
    command: tuple[str, ...]
    _values: dict[str, Any]

    # sockets
    listen = repeated(
        parse_listen,
        "socket to bind and pass to every generation: "
        "[NAME=]tcp://HOST:PORT, tcp://:PORT, tcp://[::1]:PORT or unix:///path",
        "[NAME=]URL",
    )
    steering = Option(
        parse_steering,
        "auto",
        "where each new connection lands: auto (one socket per generation on every TCP "
        "listener the kernel can steer), on (else exit 2), off (one shared socket)",
        "auto|on|off",
    )
    # child
    user: Option[str | None] = Option(
        parse_user,
        None,
        "run children as this user (and group); hotswapd keeps root to bind; the children "
        "get no_new_privs unless --allow-new-privs",
        "NAME[:GROUP]",
    )
    no_new_privs = switch("set PR_SET_NO_NEW_PRIVS in children (the default with --user)")
    allow_new_privs = switch(
        "with --user: let children gain privileges through setuid or file-capability "
        "programs (no_new_privs is not set)"
    )
    on_exit: Option[Literal["exit", "restart"]] = Option(
        choice("exit", "restart"),
        "exit",
        "when the active child exits by itself: exit (Kubernetes) or restart (compose)",
        "exit|restart",
    )
    stop_signal: Option[int | None] = Option(
        signal_for("stop"),
        None,
        "signal sent to children on stop; unset: the one hotswapd received",
        "SIGNAL",
    )
    stop_timeout = Option(
        parse_duration,
        30.0,
        "wait this long after the stop signal before SIGKILL",
        "DURATION",
        show=format_duration,
    )
    # swap
    swap_signal = Option(
        signal_for("swap"),
        sigbits.SIGUSR2,
        "signal that triggers a hot swap (never TERM, INT, QUIT, KILL, STOP or CHLD)",
        "SIGNAL",
        show=format_signal,
    )
    health: Option[str | None] = Option(
        health_path,
        None,
        "HTTP path probed on the new generation through the listener's public address "
        "(shared mode: its private probe listener)",
        "PATH",
    )
    health_url: Option[str | None] = Option(
        parse_health_url, None, "probe this URL instead (server without the probe listener)", "URL"
    )
    health_timeout = Option(
        parse_duration,
        30.0,
        "bound on the whole readiness phase",
        "DURATION",
        show=format_duration,
    )
    ready: Option[Literal["notify", "none"]] = Option(
        choice("notify", "none"),
        "none",
        "also wait for sd_notify READY=1 from the new generation",
        "notify|none",
    )
    settle = Option(
        parse_duration,
        0.0,
        "wait this long after readiness before the memory gate (steered: the new "
        "generation takes no traffic meanwhile)",
        "DURATION",
        show=format_duration,
    )
    max_memory_growth: Option[MemoryGrowth] = Option(
        parse_memory_growth,
        DEFAULT_MEMORY_GROWTH,
        "memory gate: RATIO, SIZE, RATIO+SIZE or off (fail only when over both)",
        "RULE",
        show=MemoryGrowth.spec,
    )
    canary = Option(
        parse_canary,
        (),
        "before cutover: PERCENT%:DURATION[,...] steps of new connections to the new "
        "generation, or DURATION (both share equally that long)",
        "STEPS",
        show=format_canary,
    )
    drain_signal = Option(
        signal_for("drain"),
        sigbits.SIGTERM,
        "signal that tells the old generation to drain",
        "SIGNAL",
        show=format_signal,
    )
    drain_timeout = Option(
        parse_duration,
        30.0,
        "wait this long for the old generation to exit before SIGKILL",
        "DURATION",
        show=format_duration,
    )
    analysis: Option[tuple[Rule, ...]] = repeated(
        parse_rule,
        "canary analysis rule, judged at every canary step against the serving generation: "
        "NAME=sum(SELECTOR)/sum(SELECTOR) <= LIMIT [or <= FACTORx] or "
        "NAME=histogram_quantile(Q, SELECTOR) <= LIMIT [or <= FACTORx]",
        "RULE",
    )
    analysis_min_requests = Option(
        parse_min_requests,
        DEFAULT_MIN_REQUESTS,
        "fewer requests to the candidate in a window is too little traffic to judge it",
        "N",
    )
    metrics_path = Option(
        parse_metrics_path,
        DEFAULT_METRICS_PATH,
        "where each generation serves its Prometheus metrics, for --analysis",
        "PATH",
    )
    probation = Option(
        parse_duration,
        0.0,
        "after cutover, watch the new generation this long and swap back if it fails; 0: off",
        "DURATION",
        show=format_duration,
    )
    liveness: Option[LivenessRule | None] = Option(
        parse_liveness,
        None,
        "probe the active generation every INTERVAL, replace it after FAILURES in a row",
        "INTERVAL[,FAILURES]",
    )
    # watching
    watch = repeated(parse_watch, "swap (or signal) when this file changes", "PATH[=ACTION]")
    watch_mode: Option[Literal["auto", "inotify", "poll"]] = Option(
        choice("auto", "inotify", "poll"), "auto", "auto, inotify or poll", "auto|inotify|poll"
    )
    debounce = Option(
        parse_duration,
        0.3,
        "quiet period after a change before acting",
        "DURATION",
        show=format_duration,
    )
    poll_interval = Option(
        positive_duration,
        1.0,
        "stat interval in poll mode",
        "DURATION",
        show=format_duration,
    )
    # operating
    control_socket: Option[str | None] = Option(
        path_text, None, "unix socket for `hotswapd ctl` (off: none)", "PATH"
    )
    metrics: Option[str | None] = Option(
        host_port, None, "serve Prometheus metrics on HOST:PORT", "HOST:PORT"
    )
    log_format: Option[Literal["auto", "json", "console"]] = Option(
        choice("auto", "json", "console"),
        "auto",
        "json, console, or auto (console on a TTY)",
        "json|console",
    )
    log_level = Option(
        choice("debug", "info", "warning", "error"), "info", "log level", "debug|info|warning|error"
    )

    def __init__(self, command: tuple[str, ...], **values: Any) -> None:
        unknown = set(values) - set(OPTION_BY_NAME)
        if unknown:
            raise TypeError(f"Config has no option {sorted(unknown)}")
        object.__setattr__(self, "command", command)
        merged = {option.name: values.get(option.name, option.default) for option in OPTIONS}
        object.__setattr__(self, "_values", merged)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Config is immutable")

    def replace(self, **values: Any) -> Config:
        """A copy with some values changed (already parsed: used after binding, e.g. for
        `{port:NAME}` in --health-url, which only the bound sockets can answer)."""
        return Config(self.command, **{**self._values, **values})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return (self.command, self._values) == (other.command, other._values)

    def __hash__(self) -> int:
        return hash((self.command, tuple(self._values.values())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._values.items())
        return f"Config(command={self.command!r}, {fields})"

    @property
    def health_gated(self) -> bool:
        return self.health is not None or self.health_url is not None or self.ready == "notify"


# The table, in declaration order (class bodies keep it): what --help lists and parsing reads.
OPTIONS: tuple[Option[Any], ...] = tuple(
    value for value in vars(Config).values() if isinstance(value, Option)
)
OPTION_BY_NAME = {option.name: option for option in OPTIONS}
OPTION_BY_FLAG = {option.flag: option for option in OPTIONS}


def help_text(option: Option[Any]) -> str:
    """The --help line of one option: its help, then its default spelled as a user writes it."""
    shown = option.default_text()
    text = option.help if shown is None else f"{option.help} (default: {shown})"
    return text.replace("%", "%%")  # argparse formats help strings with %


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the run-mode options to an argparse parser (for --help and the doc tests)."""
    parser.add_argument("--config", metavar="FILE", help="TOML file with the same option names")
    for option in OPTIONS:
        if option.flag_only:
            parser.add_argument(
                option.flag, action="store_const", const=True, default=None, help=help_text(option)
            )
        else:
            parser.add_argument(
                option.flag,
                metavar=option.metavar,
                default=None,
                action="append" if option.repeat else "store",
                help=help_text(option),
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
            option: Option[Any] | None = None
        else:
            option = OPTION_BY_FLAG.get(flag)
            if option is None:
                raise UsageError(
                    f"unrecognized arguments: {show(arg)[1:-1]} (see 'hotswapd --help')"
                )
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


def show(value: object, limit: int = 80) -> str:
    """A value as an error message quotes it: on one line, bounded, control bytes escaped."""
    if isinstance(value, str):
        text = value if value.isprintable() else repr(value)[1:-1]
    else:
        text = repr(value)
    return "'" + (text if len(text) <= limit else text[: limit - 1] + "…") + "'"


def _read_toml(path: str) -> dict[str, Any]:
    where = f"--config {show(path)[1:-1]}"
    data = _read_config_bytes(path, where)
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (bad byte at offset {exc.start})"
        raise UsageError(f"{where}: {problem}; save the file as UTF-8") from None
    import tomllib

    try:
        parsed = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: {show(str(exc), 200)[1:-1]}") from None
    normalised = {key.replace("-", "_"): value for key, value in parsed.items()}
    known = set(OPTION_BY_NAME) | {"command"}
    for key in normalised:
        if key not in known:
            raise UsageError(f"{where}: unknown option {show(key)}")
    return normalised


def _read_config_bytes(path: str, where: str) -> bytes:
    """The file's bytes; a FIFO, device or directory is refused without ever blocking on it."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise UsageError(f"{where}: cannot open it: {reason}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise UsageError(f"{where}: {what}; give the path of a TOML file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise UsageError(f"{where}: {st.st_size} bytes is not a config file (limit 1 MiB)")
        chunks = []
        total = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_CONFIG_BYTES:  # it grew while we read it
                raise UsageError(f"{where}: more than 1 MiB is not a config file")
        return b"".join(chunks)
    except OSError as exc:
        raise UsageError(f"{where}: cannot read it: {exc.strerror}") from None
    finally:
        os.close(fd)


def _convert(option: Option[Any], raw: Any, source: str) -> Any:
    values = raw if option.repeat else [raw]
    parsed = []
    for index, value in enumerate(values):
        try:
            if option is Config.listen:  # default names listen0, listen1 … count the items
                parsed.append(parse_listen(value, index))
            else:
                parsed.append(option.parse(value))
        except BadValue as exc:
            raise UsageError(f"{source}: invalid value {show(value)}: {exc}") from None
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
            where = f"{show(config_path)[1:-1]}: {option.name}"
            values[option.name] = _convert(option, raw_file, where)
    argv_command = tuple(command)
    if not argv_command and "command" in file_values:
        argv_command = _file_command(file_values["command"], show(config_path)[1:-1])
    if require_command and not argv_command:
        raise UsageError("no program given: hotswapd [OPTIONS] -- PROGRAM [ARGS...]")
    _check_listen_names(values.get("listen", ()))
    _apply_privilege_default(values)
    _check_canary_options(values)
    return Config(argv_command, **values)


def _file_command(raw: object, config_path: str) -> tuple[str, ...]:
    words = raw if isinstance(raw, list) else None
    if not words or not all(isinstance(word, str) and "\0" not in word for word in words):
        raise UsageError(f"{config_path}: command: use a non-empty list of strings")
    return tuple(words)


def _apply_privilege_default(values: dict[str, Any]) -> None:
    """A --user child gets no_new_privs unless --allow-new-privs says otherwise.

    Dropping to a uid keeps the capability bounding set full, so without it a setuid-root
    (or file-capability) program in the image hands root back to the child.
    """
    if values.get("allow_new_privs"):
        if values.get("no_new_privs"):
            raise UsageError("--no-new-privs and --allow-new-privs contradict each other")
    elif values.get("user"):
        values["no_new_privs"] = True


def _check_canary_options(values: Mapping[str, Any]) -> None:
    """Options that need another to act: without it they would parse and do nothing."""
    if values.get("liveness") and not (values.get("health") or values.get("health_url")):
        raise UsageError(
            "--liveness probes the active generation's health: give --health PATH "
            "(or --health-url URL) too"
        )
    if values.get("analysis") and not values.get("canary"):
        raise UsageError(
            "--analysis judges the candidate during canary steps: give --canary too "
            "(e.g. --canary 5%:10s,25%:10s)"
        )


def _check_listen_names(specs: Sequence[ListenSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise UsageError(f"--listen: the name '{spec.name}' is used twice (names are unique)")
        seen.add(spec.name)


def parse_run_args(argv: Sequence[str], require_command: bool = True) -> Config:
    """Parse run-mode arguments into a Config (shared with doctor)."""
    flags, command = parse_flags(argv)
    return build_config(flags, command, os.environ, require_command=require_command)


__all__ = ["Config", "ListenSpec", "MemoryGrowth", "Option", "WatchSpec"]
