"""Configuration: value parsers and the flags > HOTSWAPD_* env > TOML precedence."""

from __future__ import annotations

import argparse
import re
import signal
from pathlib import Path

import pytest

from hotswapd.boot.config import OPTIONS, Config, build_config, parse_run_args
from hotswapd.boot.units import BadValue, parse_duration, parse_signal, parse_size
from hotswapd.boot.values import MemoryGrowth, parse_listen, parse_memory_growth, parse_watch
from hotswapd.cli import run_parser, split_command
from hotswapd.errors import UsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5), ("0", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations accept ms, s, m, h and bare seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 << 20), ("1GiB", 1 << 30), ("512", 512), ("10KiB", 10240), ("1MB", 10**6)],
)
def test_sizes(text: str, size: int) -> None:
    """Sizes accept binary and decimal units and bare bytes."""
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("TERM", signal.SIGTERM),
        ("SIGQUIT", signal.SIGQUIT),
        ("15", 15),
        ("usr2", signal.SIGUSR2),
        ("RTMIN+3", signal.SIGRTMIN + 3),
    ],
)
def test_signals(text: str, number: int) -> None:
    """Signals accept names with or without SIG, numbers, and RTMIN+N."""
    assert parse_signal(text) == number


def test_memory_growth_rules() -> None:
    """A ratio, a size, both, or off."""
    assert parse_memory_growth("1.5") == MemoryGrowth(1.5, None)
    assert parse_memory_growth("64MiB") == MemoryGrowth(None, 64 << 20)
    assert parse_memory_growth("2+32MiB") == MemoryGrowth(2.0, 32 << 20)
    assert not parse_memory_growth("off").enabled
    with pytest.raises(BadValue):
        parse_memory_growth("lots")


def test_listen_urls() -> None:
    """Every documented listen URL form parses, with default names listen0, listen1 …"""
    spec = parse_listen("tcp://:8080", 0)
    assert (spec.name, spec.host, spec.port) == ("listen0", "", 8080)
    assert parse_listen("api=tcp://[::1]:9000", 1).host == "::1"
    assert parse_listen("tcp://127.0.0.1:80", 2).name == "listen2"
    unix = parse_listen("sock=unix:///run/app.sock", 3)
    assert (unix.kind, unix.path) == ("unix", "/run/app.sock")
    for bad in ("http://:80", "tcp://host", "unix://relative.sock", "probe=tcp://:1"):
        with pytest.raises(BadValue):
            parse_listen(bad, 0)


def test_watch_specs() -> None:
    """--watch takes PATH, PATH=swap and PATH=signal:NAME."""
    assert parse_watch("/app/server").action == "swap"
    spec = parse_watch("/etc/app/config.yaml=signal:HUP")
    assert (spec.path, spec.action, spec.signal) == (
        "/etc/app/config.yaml",
        "signal",
        signal.SIGHUP,
    )
    with pytest.raises(BadValue):
        parse_watch("/x=explode")


def _namespace(argv: list[str]) -> argparse.Namespace:
    return run_parser().parse_args(argv)


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    """A flag beats HOTSWAPD_*, which beats the TOML file, which beats the default."""
    config_file = tmp_path / "hotswapd.toml"
    config_file.write_text(
        'stop-timeout = "10s"\ndrain-timeout = "11s"\nhealth-timeout = "12s"\n'
        'listen = ["http=tcp://:8080"]\ncommand = ["/app/server", "-v"]\n'
    )
    env = {"HOTSWAPD_DRAIN_TIMEOUT": "21s", "HOTSWAPD_HEALTH_TIMEOUT": "22s"}
    namespace = _namespace(["--config", str(config_file), "--health-timeout", "32s"])
    config = build_config(namespace, [], env)
    assert config.stop_timeout == 10.0  # file
    assert config.drain_timeout == 21.0  # env over file
    assert config.health_timeout == 32.0  # flag over env
    assert config.settle == Config(command=("x",)).settle  # default
    assert config.command == ("/app/server", "-v")
    assert config.listen[0].name == "http"


def test_env_lists_and_booleans() -> None:
    """Repeatable options split on commas or spaces in the environment; booleans parse."""
    env = {"HOTSWAPD_LISTEN": "a=tcp://:1, b=tcp://:2", "HOTSWAPD_NO_NEW_PRIVS": "true"}
    config = build_config(_namespace([]), ["/bin/true"], env)
    assert [spec.name for spec in config.listen] == ["a", "b"]
    assert config.no_new_privs is True


def test_unknown_toml_key_is_rejected(tmp_path: Path) -> None:
    """A typo in the TOML file is an error naming the key, not silently ignored."""
    config_file = tmp_path / "hotswapd.toml"
    config_file.write_text('stop-timeut = "1s"\n')
    with pytest.raises(UsageError, match="unknown option 'stop_timeut'"):
        build_config(_namespace(["--config", str(config_file)]), ["/bin/true"], {})


def test_duplicate_listener_names_are_rejected() -> None:
    """Two listeners with one name would make LISTEN_FDNAMES ambiguous."""
    with pytest.raises(UsageError, match="used twice"):
        parse_run_args(["--listen", "a=tcp://:1", "--listen", "a=tcp://:2", "--", "/bin/true"])


def test_split_command() -> None:
    """Everything after the first `--` is the program and its arguments, untouched."""
    assert split_command(["--health", "/h", "--", "srv", "--", "-x"]) == (
        ["--health", "/h"],
        ["srv", "--", "-x"],
    )


def test_program_without_double_dash() -> None:
    """The program may follow the options without `--`."""
    config = parse_run_args(["--settle", "0", "/bin/echo", "hi"])
    assert isinstance(config, Config)
    assert config.command == ("/bin/echo", "hi")


def _help_entries() -> dict[str, str]:
    """`hotswapd --help`, one entry per flag: the flag's heading and its help, on one line."""
    text = run_parser().format_help()
    entries = re.split(r"^  (?=--)", text, flags=re.MULTILINE)[1:]
    return {entry.split()[0]: " ".join(entry.split()) for entry in entries}


def test_help_shows_the_real_defaults() -> None:
    """Each `(default: X)` in --help parses to the default the run mode really uses."""
    entries = _help_entries()
    real = build_config({}, ["/app/server"], {})
    shown = 0
    for option in OPTIONS:
        assert "(default" not in option.help, f"{option.flag}: a default typed by hand"
        entry = entries[option.flag]
        found = re.findall(r"\(default: ([^)]+)\)", entry)
        value = getattr(real, option.name)
        if option.default_text() is None:  # no default (None, empty list) or a switch
            assert not found, f"{option.flag}: --help shows a default it does not have"
            assert value in (None, (), False), f"{option.flag}: a default --help does not show"
            continue
        assert len(found) == 1, f"{option.flag}: --help shows no default: {entry}"
        assert option.parse(found[0]) == value, f"{option.flag}: --help says {found[0]}"
        shown += 1
    assert shown >= 15


def test_every_option_is_a_field_a_flag_a_variable_and_a_key(tmp_path: Path) -> None:
    """One declaration gives the Config field, the flag, HOTSWAPD_NAME and the TOML key."""
    names = [option.name for option in OPTIONS]
    assert names[:3] == ["listen", "steering", "user"]  # declaration order is --help's
    config_file = tmp_path / "hotswapd.toml"
    config_file.write_text('settle = "4s"\n')
    assert build_config({"config": str(config_file)}, ["x"], {}).settle == 4.0
    assert build_config({}, ["x"], {"HOTSWAPD_SETTLE": "5s"}).settle == 5.0
    assert parse_run_args(["--settle", "6s", "x"]).settle == 6.0
    assert Config(command=("x",)).settle == Config.settle.default == 0.0
    with pytest.raises(AttributeError):
        Config(command=("x",)).settle = 2.0
