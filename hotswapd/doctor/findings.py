"""What every `hotswapd doctor` check shares: the Finding it yields and the reads it makes.

A check is a generator of Findings, one printed line each: `ok|warn|fail  <check>:
<finding> — <fix>`. That line is the contract with the user (and with the transcript in
docs/operations.md), so its format lives here once, not in each check.

Checks read the kernel's own reports (/proc, /sys) as text. A process can exit and a file
can be absent between listing and reading, so every read answers None or "" instead of
raising, and a check takes what it cannot read as absent instead of crashing the run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warn | fail
    check: str
    finding: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level:<4}  {self.check}: {self.finding}"
        return f"{text} — {self.fix}" if self.fix else text


def read_text(path: str) -> str | None:
    """The whole file, or None when it cannot be read (gone, absent, not permitted)."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def status_field(pid: int | str, key: str) -> str:
    """One `Key:` field of /proc/PID/status, stripped; "" when the process or key is gone."""
    for line in (read_text(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return ""
