"""Hostile children and a careful harness: what a child does may not mislead or flood PID 1."""

from __future__ import annotations

import pytest

from tests.harness import CHILD, Hotswapd


def test_harness_refuses_to_signal_an_unknown_pid() -> None:
    """A hotswapd that exits at once leaves no pid to signal: the harness raises, never kill(-1)."""
    run = Hotswapd(["--no-such-option"], [*CHILD])
    assert run.wait(30) == 2
    with pytest.raises(LookupError):
        run.signal(0)  # signal 0 only checks: before the fix this was kill(-1, 0), no error
    run.kill_tree()
