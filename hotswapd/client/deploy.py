"""`hotswapd deploy SRC [DEST]`: install a new binary atomically, then swap to it.

The order is the safety argument. SRC is checked first (a regular, executable, complete
ELF: `elf.check_program`), so a truncated upload never reaches DEST. The copy goes through
`atomic.atomic_install`: a temp file in DEST's own directory, fsynced, its mode set, renamed
over DEST, the directory fsynced. Any failure on the way (ENOSPC, EXDEV, EACCES, a source
still being written) leaves DEST exactly as it was and removes the temp file. Only then is
the swap asked for, with `reload --wait`, so deploy's exit status is the swap's: 0 when the
new build serves, 1 when it was rolled back (the old build keeps serving).

DEST defaults to the active generation's executable, read from `ctl status`: the path
hotswapd will exec on the next swap.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from hotswapd.boot.control_paths import client_path
from hotswapd.client.ctl import Client, finish
from hotswapd.errors import EXIT_FAILURE, EXIT_OK, HotswapdError, UsageError
from hotswapd.gates import elf
from hotswapd.host.atomic import AtomicWriteError, atomic_install
from hotswapd.host.hashing import file_sha256


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"deploy: {message} (see 'hotswapd deploy --help')")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="hotswapd deploy",
        description="Install SRC over DEST atomically "
        "(DEST: the running program by default), then swap to it and wait.",
    )
    top.add_argument("src", metavar="SRC", help="the new build")
    top.add_argument(
        "dest",
        metavar="DEST",
        nargs="?",
        help="where to install it (default: the active generation's executable)",
    )
    top.add_argument(
        "--control-socket",
        metavar="PATH",
        help="the socket hotswapd listens on (env HOTSWAPD_CONTROL_SOCKET)",
    )
    top.add_argument(
        "--no-reload",
        action="store_true",
        help="install only (a --watch on DEST will trigger the swap)",
    )
    top.add_argument(
        "--force",
        action="store_true",
        help="install to a DEST that is not the program hotswapd runs (a --watch elsewhere)",
    )
    return top


def deploy(src: str, dest: str | None, client: Client | None, force: bool = False) -> int:
    problem = elf.check_program(src)
    if problem:
        print(
            f"hotswapd: deploy: {src} {problem}; {dest or 'DEST'} was not touched",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if client is not None:
        # Asked before installing: with no hotswapd listening, DEST is left alone.
        running = running_program(client.get_json("/status"))
        if dest is None:
            dest = running
        elif not force and os.path.realpath(dest) != os.path.realpath(running):
            raise UsageError(
                f"deploy: {dest} is not the program hotswapd runs ({running}): the reload "
                "would exec the old build and change nothing; omit DEST, or give --force "
                "to install there anyway"
            )
    assert dest is not None
    try:
        atomic_install(src, dest)
    except AtomicWriteError as exc:
        print(f"hotswapd: deploy: {exc}; {dest} was not changed", file=sys.stderr)
        return EXIT_FAILURE
    digest = file_sha256(dest) or "?"
    print(f"installed {src} as {dest} (sha256 {digest[:12]})", flush=True)
    if client is None:
        return EXIT_OK
    print("reload:", flush=True)
    return finish(client.post("/reload", {"wait": True, "reason": f"deploy {dest}"}), "reload")


def running_program(status: dict[str, Any]) -> str:
    """The active generation's executable as a path here (relative ones are to hotswapd's cwd)."""
    active = next(
        gen["executable"]
        for gen in status["generations"]
        if gen["generation"] == status["active"]["generation"]
    )
    return os.path.join(str(status["hotswapd"]["cwd"]), str(active))


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    if options.no_reload and options.dest is None:
        raise UsageError("deploy: --no-reload needs DEST (without hotswapd, it cannot be asked)")
    client = None
    if not options.no_reload:
        client = Client(client_path(options.control_socket, os.environ))
    try:
        return deploy(options.src, options.dest, client, force=options.force)
    except UsageError:
        raise
    except HotswapdError as exc:
        raise HotswapdError(f"deploy: {exc}", exc.exit_code) from None
