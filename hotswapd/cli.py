"""Command line: `main(argv) -> int` for run, ctl, deploy, doctor and health.

Every error is one line on stderr and an exit code from hotswapd.errors. The run
mode imports nothing heavy here — not even argparse (the option table is parsed by
`config.parse_flags`): generation 1 must be spawned first. argparse is loaded only
for `--help` and the other subcommands.
"""

from __future__ import annotations

import sys

from hotswapd import __version__
from hotswapd.errors import EXIT_USAGE, HotswapdError, UsageError

TYPE_CHECKING = False  # see config.py
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

SUBCOMMANDS = ("ctl", "deploy", "doctor", "health")


def run_parser(prog: str = "hotswapd") -> argparse.ArgumentParser:
    """The argparse description of the run mode: for --help, not for parsing."""
    import argparse

    from hotswapd.boot.config import add_options

    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [OPTIONS] -- PROGRAM [ARGS...]\n       "
        f"{prog} ctl status|reload|rollback|signal ...\n       "
        f"{prog} deploy SRC [DEST]\n       {prog} doctor [OPTIONS] [-- PROGRAM ...]\n       "
        f"{prog} health [--control-socket PATH]",
        description="PID 1 for a Go server: reaps, forwards signals, and hot-swaps it "
        "(SIGUSR2, --watch, `hotswapd ctl reload`) with health and memory gates. Every option "
        "is also HOTSWAPD_<NAME> in the environment and a key in the --config TOML file.",
    )
    parser.add_argument("--version", action="version", version=f"hotswapd {__version__}")
    add_options(parser)
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split `OPTIONS -- PROGRAM ARGS` at the first `--`."""
    args = list(argv)
    if "--" in args:
        index = args.index("--")
        return args[:index], args[index + 1 :]
    return args, []


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in SUBCOMMANDS:
            return _subcommand(args[0], args[1:])
        options = split_command(args)[0]
        if "--help" in options or "-h" in options:
            run_parser().print_help()
            return 0
        if "--version" in options:
            print(f"hotswapd {__version__}")
            return 0
        from hotswapd.boot.config import parse_run_args
        from hotswapd.boot.run import run

        config = parse_run_args(args)
        return run(config)
    except HotswapdError as exc:
        print(f"hotswapd: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _subcommand(name: str, args: list[str]) -> int:
    if name == "ctl":
        from hotswapd.client.ctl import main as ctl_main

        return ctl_main(args)
    if name == "deploy":
        from hotswapd.client.deploy import main as deploy_main

        return deploy_main(args)
    if name == "health":
        from hotswapd.client.health import main as health_main

        return health_main(args)
    if name == "doctor":
        from hotswapd.doctor.command import main as doctor_main

        return doctor_main(args)
    raise UsageError(f"unknown subcommand '{name}'", EXIT_USAGE)
