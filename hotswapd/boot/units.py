"""Durations, sizes, signals and booleans as users write them: 500ms, 64MiB, TERM, true.

Parsed with str methods, not `re`: this runs before generation 1 is spawned.
"""

from __future__ import annotations

from hotswapd.boot import sigbits

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


def plain_number(text: str) -> float | None:
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
            number = plain_number(raw[: -len(unit)].strip())
            if number is None:
                raise BadValue(hint)
            return number * factor
    number = plain_number(raw)
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
    number, unit = plain_number(raw[:split].strip()), raw[split:]
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


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise BadValue("use true or false")
