"""Command line: `main(argv) -> int` for run, ctl, deploy and doctor.

Every error is one line on stderr and an exit code from hotswapd.errors. The run
mode imports nothing heavy here: generation 1 must be spawned first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from hotswapd import __version__
from hotswapd.errors import EXIT_USAGE, HotswapdError, UsageError

SUBCOMMANDS = ("ctl", "deploy", "doctor")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def run_parser(prog: str = "hotswapd") -> Parser:
    from hotswapd.config import add_options

    parser = Parser(
        prog=prog,
        usage=f"{prog} [OPTIONS] -- PROGRAM [ARGS...]\n       "
        f"{prog} ctl status|reload|rollback|signal ...\n       "
        f"{prog} deploy SRC [DEST]\n       {prog} doctor [OPTIONS] [-- PROGRAM ...]",
        description="PID 1 for a Go server: reaps, forwards signals, and hot-swaps it "
        "(SIGUSR2, --watch, `hotswapd ctl reload`) with health and memory gates.",
    )
    parser.add_argument("--version", action="version", version=f"hotswapd {__version__}")
    add_options(parser)
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split `OPTIONS -- PROGRAM ARGS`; without `--` the first non-option starts PROGRAM."""
    args = list(argv)
    if "--" in args:
        index = args.index("--")
        return args[:index], args[index + 1 :]
    return args, []


def parse_run_args(argv: Sequence[str], require_command: bool = True) -> object:
    """Parse run-mode arguments into a Config (shared with doctor)."""
    import os

    from hotswapd.config import build_config

    options, command = split_command(argv)
    parser = run_parser()
    if command:
        namespace = parser.parse_args(options)
    else:
        parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        namespace = parser.parse_args(options)
        command = list(namespace.command)
    return build_config(namespace, command, os.environ, require_command=require_command)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in SUBCOMMANDS:
            return _subcommand(args[0], args[1:])
        from hotswapd.config import Config
        from hotswapd.run import run

        config = parse_run_args(args)
        assert isinstance(config, Config)
        return run(config)
    except HotswapdError as exc:
        print(f"hotswapd: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _subcommand(name: str, args: list[str]) -> int:
    if name == "ctl":
        from hotswapd.ctl import main as ctl_main

        return ctl_main(args)
    if name == "deploy":
        from hotswapd.deploy import main as deploy_main

        return deploy_main(args)
    if name == "doctor":
        from hotswapd.doctor import main as doctor_main

        return doctor_main(args)
    raise UsageError(f"unknown subcommand '{name}'", EXIT_USAGE)
