"""Durations, sizes, signals and booleans as users write them: 500ms, 64MiB, TERM, true.

Each parser takes a raw value from any source — a flag or `HOTSWAPD_*` (always a
string) or the TOML file (a string, number, boolean, list or table) — and either
returns a value that is in range or raises `BadValue` with what is accepted. One
parser per kind, so a flag and a TOML key cannot be held to different rules.

Parsed with str methods, not `re`: this runs before generation 1 is spawned.
"""

from __future__ import annotations

from hotswapd.boot import sigbits

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    from collections.abc import Callable

_DURATION_UNITS = (("ms", 1000.0), ("h", 1 / 3600), ("m", 1 / 60), ("s", 1.0))  # divisors
MAX_DURATION_S = 365 * 24 * 3600.0  # a year: past it, a timeout is a typo (or inf)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
}


class BadValue(ValueError):
    """A value that does not parse; the message says what is accepted."""


def kind(value: object) -> str:
    """What a TOML value is, in the words a user knows (for 'expected a string, not a list')."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, str):
        return "string"
    return type(value).__name__  # TOML dates and times


def need_str(value: object, hint: str) -> str:
    """`value` as a string, or BadValue naming what it is instead (TOML lists, numbers, …)."""
    if not isinstance(value, str):
        raise BadValue(f"expected a string, not a {kind(value)}: {hint}")
    if "\0" in value:
        raise BadValue(f"a NUL byte cannot be part of a value: {hint}")
    return value


_INF = float("inf")


def is_finite(number: float) -> bool:
    return number == number and abs(number) != _INF  # NaN is the one value unequal to itself


def plain_number(text: str) -> float | None:
    """A finite plain decimal like 12 or 1.5 (no sign, exponent, inf or nan)."""
    if text and text.replace(".", "", 1).isdigit() and text.isascii():
        number = float(text)
        return number if is_finite(number) else None  # 400 nines are inf
    return None


def parse_duration(value: object) -> float:
    """Seconds from 500ms, 30s, 2m, 1h or a bare number: finite, 0 up to a year."""
    hint = "use 500ms, 30s, 2m or a number of seconds"
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if not is_finite(seconds):
            raise BadValue(f"a duration must be a finite number; {hint}")
    else:
        raw = need_str(value, hint).strip().lower()
        if raw.startswith("-"):
            raise BadValue("durations cannot be negative")
        divisor = 1.0
        for unit, unit_divisor in _DURATION_UNITS:
            if raw.endswith(unit):
                raw, divisor = raw[: -len(unit)].strip(), unit_divisor
                break
        number = plain_number(raw)
        if number is None:
            raise BadValue(hint)
        seconds = number / divisor  # divided, not multiplied: 300ms is exactly 0.3
    if seconds < 0:
        raise BadValue("durations cannot be negative")
    if seconds > MAX_DURATION_S:
        raise BadValue("durations go up to 8760h (a year)")
    return seconds


def positive_duration(value: object) -> float:
    """A duration that must be above zero (a zero poll interval would spin)."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise BadValue("must be more than 0, e.g. 1s or 500ms")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest spelling parse_duration reads back as exactly `seconds` (30s, 300ms)."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, divisor in (("h", 1 / 3600), ("m", 1 / 60)):
        if seconds >= 1 / divisor and (seconds * divisor).is_integer():
            return f"{seconds * divisor:g}{unit}"
    return f"{seconds:g}s"


def parse_size(value: object) -> int:
    """Bytes from 64MiB, 1GiB, 512: finite, not negative."""
    hint = "use 64MiB, 1GiB or a number of bytes"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise BadValue("sizes cannot be negative")
        return value
    raw = need_str(value, hint).strip().lower()
    split = len(raw)
    while split > 0 and raw[split - 1].isalpha():
        split -= 1
    number, unit = plain_number(raw[:split].strip()), raw[split:]
    if number is None or unit not in _SIZE_UNITS:
        raise BadValue(hint)
    return int(number * _SIZE_UNITS[unit])


def format_size(size: float) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(size) >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{int(size)} B"


def parse_signal(value: object) -> int:
    """Accept TERM, SIGTERM, 15 and RTMIN+3, as kill(1) does."""
    hint = "use a signal name such as TERM, QUIT, HUP or USR2"
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    raw = need_str(value, hint).strip().upper()
    if raw.isdigit() and raw.isascii():
        number = int(raw)
        if 0 < number < sigbits.NSIG:
            return number
        raise BadValue(f"signal numbers go from 1 to {sigbits.NSIG - 1}")
    name = raw if raw.startswith("SIG") else "SIG" + raw
    for base_name, base in (("SIGRTMIN", sigbits.SIGRTMIN), ("SIGRTMAX", sigbits.SIGRTMAX)):
        if name.startswith(base_name):
            offset = name[len(base_name) :]
            if offset and not (offset[0] in "+-" and offset[1:].isdigit() and offset.isascii()):
                break
            number = base + (int(offset) if offset else 0)
            if sigbits.SIGRTMIN <= number <= sigbits.SIGRTMAX:
                return number
            raise BadValue("real-time signals go from RTMIN to RTMAX")
    number_or_none = sigbits.number(name)
    if number_or_none is None or name.startswith("SIG_"):  # SIG_DFL, SIG_BLOCK, …: not signals
        raise BadValue(hint)
    return number_or_none


def _numbers(*names: str) -> frozenset[int]:
    return frozenset(n for n in (sigbits.number(name) for name in names) if n is not None)


# Signal rules per role. A signal is refused where it cannot do
# the job: job-control and child-state signals mean something to the kernel, never to a
# server; the swap signal must be one hotswapd can catch and one nobody sends for another
# reason — TERM and INT are `docker stop` and Ctrl-C, QUIT is Ctrl-\ and the STOPSIGNAL of
# nginx-style images, WINCH comes with every terminal resize, PIPE and the fault signals
# come from the kernel.
_NEVER = _numbers("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCONT", "SIGCHLD")
_MEANS_STOP = _numbers("SIGTERM", "SIGINT", "SIGQUIT")
_FROM_KERNEL = _numbers("SIGKILL", "SIGPIPE", "SIGWINCH", "SIGABRT") | _numbers(
    "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS"
)
_SWAP_HINT = "use USR2 (the default), USR1, HUP or RTMIN+N"


def signal_problem(role: str, number: int) -> str | None:
    """Why signal `number` cannot serve as `role` (swap, drain, stop, watch), or None."""
    name = signal_name(number)[3:]
    if number in _NEVER:
        what = "child-state" if number == sigbits.number("SIGCHLD") else "job-control"
        if role == "swap":
            return f"{name} is a {what} signal; {_SWAP_HINT}"
        return f"{name} is a {what} signal and would not stop or drain anything; use TERM"
    if role == "swap":
        if number == sigbits.SIGKILL:
            return f"KILL cannot be caught; {_SWAP_HINT}"
        if number in _MEANS_STOP:
            return f"{name} means stop (docker stop, Ctrl-C or Ctrl-\\, STOPSIGNAL); {_SWAP_HINT}"
        if number in _FROM_KERNEL:
            return f"{name} is sent by the kernel or the terminal, not by people; {_SWAP_HINT}"
    if role == "drain" and number == sigbits.SIGKILL:
        return "KILL cannot drain (the old generation gets it at --drain-timeout anyway); use TERM"
    return None


def signal_for(role: str) -> Callable[[object], int]:
    """A signal parser that also applies `role`'s rule (see signal_problem)."""

    def parse(value: object) -> int:
        number = parse_signal(value)
        problem = signal_problem(role, number)
        if problem is not None:
            raise BadValue(problem)
        return number

    return parse


# In this order so an alias never wins (SIGIO, not SIGPOLL; SIGCHLD, not SIGCLD).
_SIGNAL_NAMES = tuple(
    f"SIG{name}"
    for name in (  # noqa: SIM905 - one line of words reads better than 31 lines of strings
        "HUP INT QUIT USR1 USR2 TERM WINCH KILL CONT STOP TSTP ALRM PIPE ABRT TTIN TTOU URG "
        "XCPU XFSZ VTALRM PROF PWR IO CHLD SEGV BUS FPE ILL TRAP SYS STKFLT"
    ).split()
)


def signal_name(number: int) -> str:
    """SIGTERM for 15, SIGRTMIN+3 for a real-time signal (no enum import needed)."""
    if sigbits.SIGRTMIN <= number <= sigbits.SIGRTMAX:
        return f"SIGRTMIN+{number - sigbits.SIGRTMIN}"
    for name in _SIGNAL_NAMES:
        if sigbits.number(name) == number:
            return name
    return f"SIG{number}"


def format_signal(number: int) -> str:
    """USR2 for SIGUSR2: how the docs and --help write a signal."""
    return signal_name(number)[3:]


def parse_bool(value: object) -> bool:
    """A TOML boolean, or true/false, yes/no, on/off, 1/0 as text."""
    if isinstance(value, bool):
        return value
    low = need_str(value, "use true or false").strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise BadValue("use true or false")
