"""The values of `--steering` and the steps of `--canary`, as pure parsers.

Import-light (no re, typing or dataclasses at run time): options are read before
the first fork. Each parser takes one raw value from any source (a flag, an env
string, a TOML value) and returns the field or raises `BadValue` with one line that
names what is accepted.
"""

from __future__ import annotations

from hotswapd.boot.units import BadValue, parse_duration

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    CanarySteps = tuple[tuple[int, float], ...]  # (percent of new connections, seconds)

STEERING_CHOICES = ("auto", "on", "off")
EQUAL_SHARE = 50  # a bare DURATION: both generations share equally for that long
CANARY_ACCEPTS = (
    "DURATION (both share equally) or PERCENT%:DURATION[,PERCENT%:DURATION...] "
    "with PERCENT 1..99 and DURATION above 0, e.g. 5%:10s,25%:10s"
)


def parse_steering(value: object) -> str:
    """`auto` (steer where the kernel accepts the program), `on` (or exit 2), `off`."""
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text not in STEERING_CHOICES:
        raise BadValue(f"'{value}' is not one of auto, on, off")
    return text


def parse_canary(value: object) -> CanarySteps:
    """The canary steps; () for none (`0`, `0s`, `off`, an empty value)."""
    if isinstance(value, bool):
        raise BadValue(f"'{value}' is not {CANARY_ACCEPTS}")
    if isinstance(value, (int, float)):
        seconds = _duration(value, str(value))
        return () if seconds == 0 else ((EQUAL_SHARE, seconds),)
    if not isinstance(value, str):
        raise BadValue(f"'{value}' is not {CANARY_ACCEPTS}")
    text = value.strip()
    if text.lower() in ("", "off", "none"):
        return ()
    if "%" not in text:
        seconds = _duration(text, text)
        return () if seconds == 0 else ((EQUAL_SHARE, seconds),)
    steps = []
    for part in text.split(","):
        percent_text, colon, duration_text = part.strip().partition(":")
        if not colon:
            raise BadValue(f"step '{part.strip()}' has no duration: {CANARY_ACCEPTS}")
        if not percent_text.endswith("%") or not percent_text[:-1].strip().isdigit():
            raise BadValue(
                f"step '{part.strip()}': '{percent_text}' is not PERCENT% ({CANARY_ACCEPTS})"
            )
        percent = int(percent_text[:-1])
        if not 1 <= percent <= 99:
            raise BadValue(
                f"step '{part.strip()}': {percent}% is not in 1..99 (100% is the "
                f"cutover itself; {CANARY_ACCEPTS})"
            )
        seconds = _duration(duration_text, part.strip())
        if seconds <= 0:
            raise BadValue(
                f"step '{part.strip()}': a step must last longer than 0 ({CANARY_ACCEPTS})"
            )
        steps.append((percent, seconds))
    return tuple(steps)


def _duration(raw: object, where: str) -> float:
    try:
        return parse_duration(raw)
    except BadValue as exc:
        raise BadValue(f"'{where}': {exc} ({CANARY_ACCEPTS})") from None


def canary_steps(value: object) -> CanarySteps:
    """The steps from `config.canary`, whether it is already steps or a bare duration."""
    if isinstance(value, tuple):
        return value
    return parse_canary(value)


def format_canary(steps: CanarySteps) -> str:
    """The steps as a user writes them (for --help and status)."""
    if not steps:
        return "0s"
    return ",".join(f"{percent}%:{seconds:g}s" for percent, seconds in steps)
