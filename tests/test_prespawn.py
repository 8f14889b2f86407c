"""The pre-spawn rule as a test: what hotswapd has loaded when it forks generation 1.

Generation 1 is started before asyncio, aiohttp and friends are imported, so PID 1
costs the server nothing at start (DESIGN rule 6). An import audit hook records
`sys.modules` at the first `os.fork`; the modules hotswapd added by then must be within
the allowlist below — the one place the rule is written down. Adding `import typing`
(or asyncio, enum, re, dataclasses) to a boot module fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

# hotswapd's own modules that may run before the first fork: the boot path and the leaf
# modules it uses. Anything from core/, gates/ (but notify's socket), watch/, control/ is late.
ALLOWED_PACKAGES = ("hotswapd.boot", "hotswapd.host", "hotswapd.steer")
ALLOWED_MODULES = {
    "hotswapd",
    "hotswapd.cli",
    "hotswapd.errors",
    "hotswapd.gates",
    "hotswapd.gates.notify",
    "hotswapd.gates.analysis",  # --analysis is parsed with the other options
}
# Standard-library and C modules the boot path needs, beyond what the interpreter loads.
ALLOWED_STDLIB = {
    "__future__",
    "_socket",
    "errno",
    "fcntl",
    "resource",
    "prctl",
    "_prctl",
    "array",
    "_struct",
    "struct",
}
# Never before the first fork, whatever the options.
FORBIDDEN = {
    "asyncio",
    "aiohttp",
    "psutil",
    "structlog",
    "prometheus_client",
    "typing",
    "dataclasses",
    "enum",
    "ssl",
    "selectors",
    "threading",
    "socket",
    "signal",
}

AUDIT = """
import os, sys
out = os.environ["HOTSWAPD_TEST_AUDIT_OUT"]
base = set(sys.modules)
seen = []
def hook(event, args):
    if event == "os.fork" and not seen:
        seen.append(1)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, "\\n".join(sorted(set(sys.modules) - base)).encode())
        os.close(fd)
sys.addaudithook(hook)
from hotswapd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _loaded_by(code: str) -> set[str]:
    """Modules a fresh interpreter adds by running `code` (what an option may cost)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; b = set(sys.modules); {code}; "
            "print('\\n'.join(sorted(set(sys.modules) - b)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def _modules_at_first_fork(tmp_path: Path, options: list[str]) -> set[str]:
    out = tmp_path / "modules.txt"
    env = dict(os.environ, HOTSWAPD_TEST_AUDIT_OUT=str(out), PYTHONPATH=str(REPO))
    env.pop("HOTSWAPD_CONFIG", None)
    subprocess.run(
        [sys.executable, "-c", AUDIT, *options, "--", "/bin/true"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.exists(), "hotswapd never forked"
    return set(out.read_text().split())


def _extras(name: str, tmp_path: Path) -> tuple[list[str], set[str]]:
    """The options of one scenario and the modules those options may add."""
    if name == "plain":
        return ["--listen", "tcp://127.0.0.1:0"], set()
    if name == "notify":
        return ["--ready", "notify"], set()
    if name == "watch":
        return ["--watch", str(REPO / "README.md")], set()
    if name == "config":
        config = tmp_path / "hotswapd.toml"
        config.write_text('settle = "0"\nlisten = ["tcp://127.0.0.1:0"]\n')
        return ["--config", str(config)], _loaded_by("import tomllib")
    if name == "user":
        return ["--user", "nobody"], {"pwd", "grp"}
    raise AssertionError(name)


@pytest.mark.parametrize("scenario", ["plain", "notify", "watch", "config", "user"])
def test_only_the_boot_path_is_loaded_before_the_first_fork(scenario: str, tmp_path: Path) -> None:
    """Before generation 1 is forked, hotswapd has loaded only its boot path."""
    options, extra = _extras(scenario, tmp_path)
    loaded = _modules_at_first_fork(tmp_path, options)
    assert "hotswapd.boot.run" in loaded, "the audit did not see the run mode"
    allowed = ALLOWED_MODULES | ALLOWED_STDLIB | extra
    unexpected = sorted(
        name
        for name in loaded
        if name not in allowed
        and not name.startswith(tuple(p + "." for p in ALLOWED_PACKAGES))
        and name not in ALLOWED_PACKAGES
    )
    assert not unexpected, f"loaded before the first fork with {options}: {unexpected}"
    if scenario != "config":  # tomllib itself needs re, typing and enum: the option's cost
        assert not (loaded & FORBIDDEN), sorted(loaded & FORBIDDEN)


def test_the_audit_would_see_a_heavy_import(tmp_path: Path) -> None:
    """The audit is not blind: a module imported before the fork shows up in its list."""
    out = tmp_path / "modules.txt"
    env = dict(os.environ, HOTSWAPD_TEST_AUDIT_OUT=str(out), PYTHONPATH=str(REPO))
    leaky = AUDIT.replace(
        "from hotswapd.cli import main", "import asyncio\nfrom hotswapd.cli import main"
    )
    subprocess.run(
        [sys.executable, "-c", leaky, "--", "/bin/true"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert "asyncio" in set(out.read_text().split())
