"""Bad input from any source is one line and exit 2, and nothing is started.

Each case runs the real hotswapd with a program that would leave a marker file, so
"nothing started" is observed, not assumed. In-process cases hold the flag, the
HOTSWAPD_* variable and the TOML key to the same rule.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest

from hotswapd.boot.config import build_config, parse_flags
from hotswapd.errors import UsageError
from tests.harness import run_to_exit


def refused(
    tmp_path: Path, options: list[str], env: dict[str, str] | None = None, timeout: float = 30
) -> str:
    """Run hotswapd with `options`; assert exit 2, one stderr line, no child; return the line."""
    marker = tmp_path / "started"
    exit_code, run = run_to_exit(
        options,
        ["/bin/sh", "-c", f"touch {marker}"],
        timeout=timeout,
        pid1=False,
        env=env,
        cwd=tmp_path,
    )
    assert exit_code == 2, run.tail()
    assert len(run.stderr_lines) == 1, run.stderr_lines
    assert not marker.exists(), "the program was started"
    line = run.stderr_lines[0]
    assert line.startswith("hotswapd: ")
    assert "Traceback" not in line
    assert not line.endswith("None")
    return line


def toml(tmp_path: Path, text: str | bytes) -> list[str]:
    path = tmp_path / "hotswapd.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return ["--config", str(path)]


# --------------------------------------------------------------------------- values, every source


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("stop_timeout", "nan", "a duration must be a finite number"),
        ("settle", "inf", "a duration must be a finite number"),
        ("drain_timeout", "-1", "durations cannot be negative"),
        ("max_memory_growth", "nan", "a ratio must be a finite number"),
        ("watch", "[1, 2]", "expected a string, not a number"),
        ("control_socket", '["a"]', "expected a string, not a list"),
        ("listen", "[{a = 1}]", "expected a string, not a table"),
        ("no_new_privs", "1", "expected a string, not a number"),
        ("swap_signal", "true", "expected a string, not a boolean"),
        ("metrics", "9100", "expected a string, not a number"),
    ],
)
def test_toml_values_are_validated(tmp_path: Path, key: str, value: str, needle: str) -> None:
    """TOML nan/inf/negatives and values of the wrong type are one line naming the key."""
    line = refused(tmp_path, toml(tmp_path, f"{key} = {value}\n"))
    assert f"hotswapd.toml: {key}: invalid value" in line
    assert needle in line
    assert os.listdir(tmp_path) == ["hotswapd.toml"]  # no file named "['a']"


@pytest.mark.parametrize(
    ("name", "raw", "toml_raw", "needle"),
    [
        ("stop_timeout", "9" * 400, '"' + "9" * 400 + '"', "use 500ms, 30s"),
        ("poll_interval", "0", "0", "must be more than 0"),
        ("debounce", "-2s", "-2", "cannot be negative"),
        ("canary", "9000h", '"9000h"', "durations go up to 8760h"),
        ("user", "99999999999", '"99999999999"', "ids go from 0 to 4294967294"),
        ("metrics", "999.999.999.999:9100", '"999.999.999.999:9100"', "is not an IP address"),
        ("metrics", ":99999", '":99999"', "ports go from 0 to 65535"),
        ("health_url", "http://127.0.0.1:70000/", '"http://127.0.0.1:70000/"', "ports go from"),
        ("swap_signal", "TERM", '"TERM"', "TERM means stop"),
        ("health", "/a b\r\nX: y", '"/a b\\r\\nX: y"', "no spaces or control characters"),
    ],
)
def test_flag_env_and_toml_share_one_rule(
    tmp_path: Path, name: str, raw: str, toml_raw: str, needle: str
) -> None:
    """The same bad value is refused the same way as a flag, a HOTSWAPD_* variable and a key."""
    flag = "--" + name.replace("_", "-")
    config_file = tmp_path / "hotswapd.toml"
    config_file.write_text(f"{name} = {toml_raw}\n")
    sources = [
        (parse_flags([flag, raw])[0], {}, flag),
        ({}, {"HOTSWAPD_" + name.upper(): raw}, "HOTSWAPD_" + name.upper()),
        ({"config": str(config_file)}, {}, f"{config_file}: {name}"),
    ]
    for flags, env, where in sources:
        with pytest.raises(UsageError) as caught:
            build_config(flags, ["/bin/true"], env)
        message = str(caught.value)
        assert message.startswith(f"{where}: invalid value "), message
        assert needle in message
        assert "\n" not in message


def test_bad_values_on_the_command_line(tmp_path: Path) -> None:
    """--user 99999999999 and a too-long unix path are one line, exit 2 (no OverflowError)."""
    line = refused(tmp_path, ["--user", "99999999999"])
    assert line == (
        "hotswapd: --user: invalid value '99999999999': user and group ids go from 0 to 4294967294"
    )
    long_path = "/tmp/" + "x" * 120 + ".sock"
    line = refused(tmp_path, ["--listen", f"unix://{long_path}"])
    assert "a unix socket path is at most 107 bytes" in line


def test_a_value_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    """A TOML string with control characters is quoted escaped, so the error is one line."""
    line = refused(tmp_path, toml(tmp_path, 'on_exit = "a\\nb\\u001b[31m"\n'))
    assert "invalid value 'a\\nb\\x1b[31m'" in line


# --------------------------------------------------------------------------- the config file


def test_non_utf8_config_is_one_line(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is one line with the offset, not a UnicodeDecodeError."""
    line = refused(tmp_path, toml(tmp_path, b'settle = "1s"\n# caf\xe9\n'))
    assert line.endswith("not UTF-8 text (bad byte at offset 19); save the file as UTF-8")


def test_config_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    """--config naming a FIFO is refused at once (opened O_NONBLOCK), never waited on."""
    fifo = tmp_path / "cfg.toml"
    os.mkfifo(fifo)
    line = refused(tmp_path, ["--config", str(fifo)], timeout=10)
    assert line == f"hotswapd: --config {fifo}: not a regular file; give the path of a TOML file"


def test_config_directory_and_device_are_refused(tmp_path: Path) -> None:
    """A directory or /dev/zero as --config is one line each (never read without end)."""
    assert refused(tmp_path, ["--config", str(tmp_path)]).endswith(
        "a directory; give the path of a TOML file"
    )
    assert refused(tmp_path, ["--config", "/dev/zero"]).endswith(
        "not a regular file; give the path of a TOML file"
    )


def test_config_command_must_be_strings(tmp_path: Path) -> None:
    """`command` in the file is a non-empty list of strings."""
    config = toml(tmp_path, "command = [1]\n")
    exit_code, run = run_to_exit(config, [], pid1=False)
    assert exit_code == 2
    assert run.stderr_lines == [f"hotswapd: {config[1]}: command: use a non-empty list of strings"]


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    "name", ["TERM", "INT", "QUIT", "KILL", "STOP", "CHLD", "TSTP", "CONT", "WINCH", "SEGV"]
)
def test_swap_signal_that_means_something_else_is_refused(tmp_path: Path, name: str) -> None:
    """--swap-signal refuses stop, uncatchable, job-control, child-state and kernel signals."""
    line = refused(tmp_path, ["--swap-signal", name])
    assert line.startswith(f"hotswapd: --swap-signal: invalid value '{name}': {name} ")
    assert line.endswith("use USR2 (the default), USR1, HUP or RTMIN+N")


@pytest.mark.parametrize(
    ("option", "name"),
    [
        ("--drain-signal", "KILL"),
        ("--drain-signal", "STOP"),
        ("--drain-signal", "CHLD"),
        ("--stop-signal", "STOP"),
        ("--stop-signal", "CONT"),
        ("--stop-signal", "TTIN"),
    ],
)
def test_drain_and_stop_signals_that_cannot_work(tmp_path: Path, option: str, name: str) -> None:
    """A drain or stop signal that cannot drain or stop anything is refused, naming the option."""
    line = refused(tmp_path, [option, name])
    assert line.startswith(f"hotswapd: {option}: invalid value '{name}': {name} ")
    assert line.endswith("use TERM")


def test_signals_that_do_their_job_are_accepted() -> None:
    """USR1, HUP and RTMIN+N swap; KILL may stop; QUIT may drain; HUP may be a watch action."""
    argv = ["--swap-signal", "RTMIN+2", "--stop-signal", "KILL", "--drain-signal", "QUIT"]
    argv += ["--watch", "/etc/app.conf=signal:HUP"]
    config = build_config(parse_flags(argv)[0], ["/bin/true"], {})
    assert config.swap_signal == signal.SIGRTMIN + 2
    assert config.stop_signal == signal.SIGKILL
    assert config.drain_signal == signal.SIGQUIT
    assert config.watch[0].signal == signal.SIGHUP
    for name in ("USR1", "HUP", "USR2"):
        assert build_config(parse_flags(["--swap-signal", name])[0], ["x"], {}).swap_signal
    with pytest.raises(UsageError, match="--watch: invalid value '/x=signal:STOP'"):
        build_config(parse_flags(["--watch", "/x=signal:STOP"])[0], ["x"], {})


# --------------------------------------------------------------------------- hotswapd's own sockets


def test_control_socket_in_proc_is_refused_before_any_child(tmp_path: Path) -> None:
    """--control-socket /proc/1/x.sock is exit 2 before generation 1, not after it."""
    line = refused(tmp_path, ["--control-socket", "/proc/1/x.sock"])
    assert line.startswith("hotswapd: --control-socket /proc/1/x.sock: ")
    assert not os.path.lexists("/proc/1/x.sock")


def test_metrics_port_in_use_leaves_nothing_behind(tmp_path: Path) -> None:
    """A taken --metrics port is exit 2, no child; the trial control socket and its dir are gone."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    control = tmp_path / "run" / "ctl" / "control.sock"
    try:
        line = refused(
            tmp_path, ["--control-socket", str(control), "--metrics", f"127.0.0.1:{port}"]
        )
    finally:
        holder.close()
    assert line.startswith(f"hotswapd: --metrics 127.0.0.1:{port}: cannot listen: ")
    assert not (tmp_path / "run").exists()  # the trial control socket and its dirs are removed


def test_metrics_on_an_address_not_here(tmp_path: Path) -> None:
    """--metrics on an IP this machine does not have is exit 2 with no child."""
    line = refused(tmp_path, ["--metrics", "192.0.2.1:9100"])
    assert "cannot listen: Cannot assign requested address" in line


def test_good_sockets_are_served_after_the_trial_bind(tmp_path: Path) -> None:
    """The trial bind releases what it takes: the control socket and metrics still serve."""
    control = tmp_path / "ctl" / "control.sock"
    exit_code, run = run_to_exit(
        ["--control-socket", str(control), "--metrics", "127.0.0.1:0"], ["/bin/true"], pid1=False
    )
    assert exit_code == 0, run.tail()
    assert run.events("control_listening", path=str(control))
    assert run.events("metrics_listening")
    assert stat.S_IMODE(os.stat(control.parent).st_mode) == 0o700


def test_a_program_that_cannot_start_leaves_no_socket_behind(tmp_path: Path) -> None:
    """exit 127 for a missing program removes the pre-bound control socket and its directory."""
    control = tmp_path / "ctl" / "control.sock"
    exit_code, run = run_to_exit(
        ["--control-socket", str(control), "--metrics", "127.0.0.1:0"],
        [str(tmp_path / "missing")],
        pid1=False,
    )
    assert exit_code == 127
    assert len(run.stderr_lines) == 1
    assert not (tmp_path / "ctl").exists()


def test_empty_env_values_mean_unset() -> None:
    """An empty HOTSWAPD_USER or HOTSWAPD_CONTROL_SOCKET (a blank compose variable) is unset/off."""
    config = build_config({}, ["/bin/true"], {"HOTSWAPD_USER": "", "HOTSWAPD_CONTROL_SOCKET": ""})
    assert not config.user
    assert config.no_new_privs is False
    assert config.control_socket == ""


def test_listen_ipv6_literals_are_checked() -> None:
    """An IPv6 listen address is checked as the kernel reads it; a link-local scope is kept."""
    flags = parse_flags(["--listen", "a=tcp://[fe80::1%lo]:80", "--listen", "b=tcp://[::1]:0"])[0]
    assert [spec.host for spec in build_config(flags, ["x"], {}).listen] == ["fe80::1%lo", "::1"]
    with pytest.raises(UsageError, match="invalid value 'tcp://\\[::g\\]:80'"):
        build_config(parse_flags(["--listen", "tcp://[::g]:80"])[0], ["x"], {})
