"""--user children cannot get root back: no_new_privs is the default, --allow-new-privs the opt-out.

The proof is a setuid-root copy of `id` in a directory the child can reach: without
no_new_privs it runs with euid 0; with it the kernel ignores the setuid bit.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import run_to_exit
from tests.helpers import wait_until

Start = Any  # the `hotswapd` fixture
NOBODY = 65534


@pytest.fixture
def setuid_id() -> Iterator[Path]:
    """A setuid-root copy of /usr/bin/id that uid 65534 can execute."""
    directory = Path(tempfile.mkdtemp(prefix="hotswapd-setuid-"))
    try:
        directory.chmod(0o755)
        program = directory / "id"
        shutil.copy("/usr/bin/id", program)
        os.chown(program, 0, 0)
        program.chmod(0o4755)
        assert program.stat().st_mode & stat.S_ISUID
        yield program
    finally:
        shutil.rmtree(directory)


def child_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def start_child(hotswapd: Start, options: list[str], setuid_id: Path) -> tuple[int, str]:
    """Run `setuid_id -u` in a --user nobody child; (the child's pid, the euid it printed)."""
    script = f"echo euid $({setuid_id} -u); echo ready $$; exec sleep 60"
    run = hotswapd(["--user", "nobody", *options], ["/bin/sh", "-c", script], pid1=False)
    wait_until(lambda: any(line.startswith("ready ") for line in run.stdout_lines), 15, "ready")
    ready = next(line for line in run.stdout_lines if line.startswith("ready "))
    euid = next(line for line in run.stdout_lines if line.startswith("euid "))
    return int(ready.split()[1]), euid.split()[1]


def test_user_children_get_no_new_privs_by_default(hotswapd: Start, setuid_id: Path) -> None:
    """With --user alone the child has NoNewPrivs 1, and a setuid-root program stays uid 65534."""
    pid, euid = start_child(hotswapd, [], setuid_id)
    status = child_status(pid)
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["NoNewPrivs"] == "1"
    assert int(status["CapEff"], 16) == 0
    assert euid == str(NOBODY)  # the setuid bit gave nothing


def test_allow_new_privs_is_the_explicit_opt_out(hotswapd: Start, setuid_id: Path) -> None:
    """--allow-new-privs leaves NoNewPrivs 0: the setuid-root program runs as root (the risk)."""
    pid, euid = start_child(hotswapd, ["--allow-new-privs"], setuid_id)
    assert child_status(pid)["NoNewPrivs"] == "0"
    assert euid == "0"


def test_no_new_privs_and_allow_new_privs_contradict() -> None:
    """Both switches at once is one line and exit 2."""
    exit_code, run = run_to_exit(
        ["--user", "nobody", "--no-new-privs", "--allow-new-privs"], ["/bin/true"], pid1=False
    )
    assert exit_code == 2
    assert run.stderr_lines == [
        "hotswapd: --no-new-privs and --allow-new-privs contradict each other"
    ]
