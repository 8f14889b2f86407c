"""`hotswapd doctor [OPTIONS] [-- PROGRAM ...]`: diagnose this container for this configuration.

It takes the run mode's own options, so the exact ENTRYPOINT line can be checked where it
will run. Each finding is one line, `ok|warn|fail  <check>: <finding> — <fix>`, and any
fail exits 1. Everything is read from the kernel's own reports (/proc/self/mountinfo,
/proc/*/fdinfo, /proc/sys, the cgroup files) rather than guessed from the image, because
the failures it looks for are the ones that only exist at run time: a tmpfs hiding the
image's files, a single-file bind mount that never sees a rebuild, inotify limits used
up by other containers of the same user, a dynamic binary in a `scratch` image.

Doctor changes nothing. To look underneath a mount it forks a child that unmounts it in
a private mount namespace of its own (a doctor run is not PID 1's supervisor: it may fork).

This module is the command: the options, the order of the checks, the printed lines and
the exit code, plus the checks that fit in a screen (init, signals, program, listen,
memory, control). The Finding line and the /proc reads are in doctor/findings.py, the
mount checks in doctor/mounts.py, the inotify check in doctor/inotify.py. Every rule the
runtime also applies (the mount table, blind filesystems, inotify limits, what a mount
hides, the cgroup's memory, socket states, the control path) is imported from the module
the runtime uses, so doctor's verdict cannot drift from what the runtime does.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
from collections.abc import Iterator

from hotswapd.boot.config import Config, parse_run_args
from hotswapd.boot.control_paths import default_choice, server_path, server_problem
from hotswapd.boot.listeners import steering_modes
from hotswapd.boot.spawn import resolve_program
from hotswapd.boot.units import format_size, signal_name, signal_problem
from hotswapd.doctor.findings import Finding, read_text, status_field

# `X as X` re-exports: tests/test_doctor.py counts inotify use as doctor.inotify_usage.
from hotswapd.doctor.inotify import IN_MODIFY as IN_MODIFY
from hotswapd.doctor.inotify import check_inotify
from hotswapd.doctor.inotify import inotify_usage as inotify_usage
from hotswapd.doctor.mounts import check_path
from hotswapd.errors import EXIT_FAILURE, EXIT_OK, SpawnError
from hotswapd.gates import elf
from hotswapd.host import cgroup
from hotswapd.host.mountinfo import Mount, read_mounts
from hotswapd.host.shadow import hidden_by_mount, hidden_finding
from hotswapd.host.unixsock import socket_state


def _signals_in(mask: str) -> list[int]:
    bits = int(mask or "0", 16)
    return [sig for sig in range(1, 65) if bits & (1 << (sig - 1))]


def check_init() -> Iterator[Finding]:
    if os.getpid() == 1:
        yield Finding(
            "ok",
            "init",
            "running as PID 1: every orphan is reaped here and every "
            "signal sent to the container arrives here",
        )
        return
    cmdline = (read_text("/proc/1/cmdline") or "").replace("\0", " ").strip() or "?"
    if "hotswapd" in cmdline:
        yield Finding("ok", "init", f"PID 1 is hotswapd ({cmdline[:60]})")
        return
    yield Finding(
        "warn",
        "init",
        f"not PID 1 (PID 1 is '{cmdline[:60]}'): hotswapd will run as "
        "a child subreaper, reaping the orphans below it only",
        'make hotswapd the ENTRYPOINT in exec form: ENTRYPOINT ["hotswapd", ..., "--", '
        '"/app/server"]',
    )
    if signal.SIGTERM not in _signals_in(status_field(1, "SigCgt")):
        yield Finding(
            "warn",
            "signals",
            f"PID 1 ('{cmdline[:40]}') has no SIGTERM handler: "
            "`docker stop` will wait, then SIGKILL everything without a drain",
            "exec hotswapd as PID 1, or use `exec hotswapd ...` in the entry script",
        )


def check_signals(config: Config) -> Iterator[Finding]:
    ignored = _signals_in(status_field("self", "SigIgn"))
    blocked = _signals_in(status_field("self", "SigBlk"))
    relevant = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, config.swap_signal}
    for what, sigs in (("ignored", ignored), ("blocked", blocked)):
        hit = sorted(set(sigs) & relevant)
        if hit:
            yield Finding(
                "warn",
                "signals",
                f"{', '.join(map(signal_name, hit))} {what} on entry "
                "(inherited from whatever started this)",
                "hotswapd installs its own "
                "handlers and children start with defaults; check the parent (nohup, "
                "`trap '' TERM`)",
            )
    problem = signal_problem("swap", config.swap_signal)  # the rule the options parser applies
    if problem is not None:
        yield Finding("fail", "signals", f"--swap-signal {problem}")
        return
    clean = "" if relevant & {*ignored, *blocked} else "; none inherited as ignored or blocked"
    yield Finding(
        "ok",
        "signals",
        f"swap on {signal_name(config.swap_signal)}, stop on TERM/INT, "
        f"drain with {signal_name(config.drain_signal)}{clean}",
    )


def check_program(config: Config, table: list[Mount]) -> Iterator[Finding]:
    if not config.command:
        yield Finding("warn", "program", "none given", "add -- PROGRAM [ARGS...] to check it")
        return
    try:
        path = resolve_program(config.command[0], os.environ)
    except SpawnError as exc:
        name = config.command[0]
        mount = hidden_by_mount(name, table) if "/" in name else None
        if mount is not None:
            finding, fix = hidden_finding(name, mount)
            yield Finding("fail", "program", finding, fix)
        else:
            yield Finding("fail", "program", str(exc), "fix the path after '--'")
        return
    problem = elf.check_program(path)
    if problem:
        yield Finding("fail", "program", f"{path} {problem}")
        return
    interpreter = elf.elf_interpreter(path) if elf.is_elf(path) else None
    if not elf.is_elf(path):
        yield Finding("ok", "program", f"{path} is a #! script")
    elif interpreter is None:
        yield Finding("ok", "program", f"{path} is a static ELF binary (runs in scratch)")
    elif os.path.exists(interpreter):
        yield Finding(
            "ok",
            "program",
            f"{path} is dynamically linked; its loader {interpreter} "
            "is present (its shared libraries are not checked)",
        )
    else:
        yield Finding(
            "fail",
            "program",
            f"{path} is dynamically linked but its ELF interpreter "
            f"{interpreter} is missing: exec fails with 'no such file or directory'",
            "build it static (CGO_ENABLED=0 go build) or use a base image with that libc",
        )
    yield from check_path("program dir", os.path.dirname(path), config, table)


def check_listen(config: Config) -> Iterator[Finding]:
    if not config.listen:
        yield Finding(
            "warn",
            "listen",
            "no --listen: the server binds its own port, so a new "
            "generation cannot start while the old one holds it",
            "add --listen http=tcp://:8080 (the server must accept inherited sockets)",
        )
    for spec in config.listen:
        check = f"listen {spec.name}={spec.url}"
        if spec.kind == "unix":
            directory = os.path.dirname(spec.path)
            try:
                state = socket_state(spec.path)
            except OSError as exc:
                yield Finding("fail", check, _unreachable(spec.path, exc), "choose another path")
                continue
            if not os.access(directory, os.W_OK):
                yield Finding(
                    "fail",
                    check,
                    f"{directory} is missing or not writable",
                    "create it or mount a volume there",
                )
            elif state in ("live", "not-a-socket"):
                yield Finding(
                    "warn",
                    check,
                    f"{spec.path} is {state.replace('-', ' ')} now",
                    "fine if this hotswapd is running; otherwise remove it",
                )
            else:
                yield Finding("ok", check, f"{spec.path} can be created")
            continue
        try:
            info = socket.getaddrinfo(
                spec.host or None, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(info[0], socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(info[4])
            yield Finding("ok", check, "bindable")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                yield Finding(
                    "warn",
                    check,
                    "in use now",
                    "fine if this hotswapd is running; otherwise stop what holds it (ss -ltnp)",
                )
            else:
                yield Finding(
                    "fail",
                    check,
                    f"cannot bind: {exc.strerror or exc}",
                    "ports below 1024 need root or CAP_NET_BIND_SERVICE; use an "
                    "address of this container",
                )
    # The run mode's own decision (boot/listeners.py): which listener is steered, and why.
    for name, mode, why in steering_modes(config.listen, config.steering):
        if mode == "steered":
            yield Finding("ok", f"steering {name}", f"steered: {why}")
        else:
            yield Finding(
                "warn" if config.steering != "off" and "unix" not in why else "ok",
                f"steering {name}",
                f"shared: {why}",
                "generations share one socket: a candidate takes live connections before its "
                "verdict, and its shutdown() reaches the others (see docs/swap.md)",
            )


def check_memory() -> Iterator[Finding]:
    figures = cgroup.memory()  # the reader the memory gate's headroom check uses
    limit, usage = (None, 0) if figures is None else (figures.limit, figures.usage)
    if limit is None:
        yield Finding(
            "ok",
            "memory",
            "no cgroup memory limit: two generations always fit "
            "(a leaking build is still caught by --max-memory-growth)",
        )
        return
    used = usage or 0
    text = (
        f"cgroup limit {format_size(limit)}, {format_size(used)} in use, "
        f"{format_size(limit - used)} free"
    )
    if limit - used < used:
        yield Finding(
            "warn",
            "memory",
            f"{text}: a swap runs two generations at once and the "
            "new one needs about as much as what runs now",
            "raise the container's memory limit to at least twice the server's memory",
        )
    else:
        yield Finding("ok", "memory", f"{text}: room for a second generation")


def _unreachable(path: str, exc: OSError) -> str:
    """Why `path` cannot even be looked at, naming the directory that refuses this uid."""
    directory = os.path.dirname(path)
    while directory != "/" and os.access(directory, os.X_OK):
        directory = os.path.dirname(directory)
    try:
        st = os.stat(directory)
        owner = f" (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
    except OSError:
        owner = ""
    return (
        f"cannot look at {path}: {exc.strerror or exc} for uid {os.geteuid()}: "
        f"{directory} is not searchable{owner}"
    )


def check_control(config: Config) -> Iterator[Finding]:
    """The run mode's own choice: an explicit path must pass `server_problem` (else exit 2),
    a default one is the first usable of the defaults, each skipped one said why."""
    path, explicit = server_path(config, os.environ)
    skipped = [] if explicit else default_choice(os.environ)[1]
    passed = f" (skipped {'; '.join(skipped)})" if skipped else ""
    if path is None:
        yield Finding(
            "warn",
            "control",
            "control socket off or no usable runtime directory: "
            f"`hotswapd ctl` and `deploy` cannot reach hotswapd{passed}",
            "give --control-socket PATH in a directory only this user can write",
        )
        return
    unreachable = ""
    try:
        state = socket_state(path)
        mode = stat.S_IMODE(os.stat(path).st_mode) if state == "live" else 0
    except OSError as exc:  # a root-owned 0750 /run/hotswapd, seen by another uid
        state, unreachable = "unreachable", _unreachable(path, exc)
    if state == "live":
        level = "fail" if mode & 0o077 else "ok"
        yield Finding(
            level,
            "control",
            f"a hotswapd is listening on {path} (mode {mode:04o})",
            "chmod 600 it; any user who can connect can swap" if level == "fail" else "",
        )
        return
    problem = server_problem(path) if explicit else None
    if problem:  # the very line the run mode exits 2 with
        yield Finding("fail", "control", problem.removeprefix("--control-socket "))
    elif state == "unreachable":
        fix = f"give --control-socket a path in a directory uid {os.geteuid()} can write"
        yield Finding("fail", "control", unreachable, fix)
    elif state == "not-a-socket":
        yield Finding("fail", "control", f"{path} exists and is not a socket", "remove it")
    else:
        stale = " (replacing a stale socket)" if state == "stale" else ""
        yield Finding("ok", "control", f"{path} will be created mode 0600{stale}{passed}")


def diagnose(config: Config) -> list[Finding]:
    table = read_mounts()
    findings = [*check_init(), *check_signals(config), *check_inotify(config)]
    for spec in config.watch:
        findings += check_path("watch", spec.path, config, table)
    findings += [
        *check_program(config, table),
        *check_listen(config),
        *check_memory(),
        *check_control(config),
    ]
    # A mount shared by the program and a watched path is reported once, not per path.
    seen: set[tuple[str, str]] = set()
    unique = []
    for finding in findings:
        key = (finding.level, finding.finding)
        if finding.level == "ok" or key not in seen:
            unique.append(finding)
            seen.add(key)
    return unique


def print_help() -> None:
    """`hotswapd doctor --help`: the run mode's options, which doctor takes as they are."""
    import argparse

    from hotswapd.boot.config import add_options

    parser = argparse.ArgumentParser(
        prog="hotswapd doctor",
        usage="hotswapd doctor [OPTIONS] [-- PROGRAM [ARGS...]]",
        description="Diagnose this container for this configuration: give it the exact "
        "options and program of the ENTRYPOINT. One line per check (ok, warn, fail); any "
        "fail exits 1. It changes nothing.",
    )
    add_options(parser)
    parser.print_help()


def main(args: list[str]) -> int:
    options = args[: args.index("--")] if "--" in args else args
    if "--help" in options or "-h" in options:
        print_help()
        return EXIT_OK
    config = parse_run_args(args, require_command=False)
    findings = diagnose(config)
    for finding in findings:
        print(finding.line(), flush=True)
    fails = sum(finding.level == "fail" for finding in findings)
    warns = sum(finding.level == "warn" for finding in findings)
    print(f"doctor: {len(findings) - fails - warns} ok, {warns} warn, {fails} fail")
    return EXIT_FAILURE if fails else EXIT_OK
