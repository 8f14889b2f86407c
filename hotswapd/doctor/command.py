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
memory, control). The Finding line and the /proc reads are in doctor_check.py; the mount
table and what a mount hides in doctor_mounts.py; the per-user inotify limits in
doctor_inotify.py.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
from collections.abc import Iterator

from hotswapd.boot.config import Config, parse_run_args
from hotswapd.boot.control_paths import dir_problem, server_path
from hotswapd.boot.spawn import resolve_program
from hotswapd.boot.units import format_size
from hotswapd.doctor.findings import Finding, read_text, status_field

# `X as X` re-exports: tests/test_doctor.py counts inotify use as doctor.inotify_usage.
from hotswapd.doctor.inotify import IN_MODIFY as IN_MODIFY
from hotswapd.doctor.inotify import check_inotify
from hotswapd.doctor.inotify import inotify_usage as inotify_usage
from hotswapd.doctor.mounts import Mount, check_path, mounts
from hotswapd.errors import EXIT_FAILURE, EXIT_OK, SpawnError
from hotswapd.gates import elf
from hotswapd.host.unixsock import socket_state


def _signals_in(mask: str) -> list[int]:
    bits = int(mask or "0", 16)
    return [sig for sig in range(1, 65) if bits & (1 << (sig - 1))]


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def check_init() -> Iterator[Finding]:
    if os.getpid() == 1:
        yield Finding("ok", "init", "running as PID 1: every orphan is reaped here and every "
                      "signal sent to the container arrives here")  # fmt: skip
        return
    cmdline = (read_text("/proc/1/cmdline") or "").replace("\0", " ").strip() or "?"
    if "hotswapd" in cmdline:
        yield Finding("ok", "init", f"PID 1 is hotswapd ({cmdline[:60]})")
        return
    yield Finding("warn", "init", f"not PID 1 (PID 1 is '{cmdline[:60]}'): hotswapd will run as "
                  "a child subreaper, reaping the orphans below it only",
                  'make hotswapd the ENTRYPOINT in exec form: ENTRYPOINT ["hotswapd", ..., "--", '
                  '"/app/server"]')  # fmt: skip
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
            yield Finding("warn", "signals", f"{', '.join(map(_signame, hit))} {what} on entry "
                          "(inherited from whatever started this)", "hotswapd installs its own "
                          "handlers and children start with defaults; check the parent (nohup, "
                          "`trap '' TERM`)")  # fmt: skip
    if config.swap_signal in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGSTOP):
        yield Finding(
            "fail",
            "signals",
            f"--swap-signal {_signame(config.swap_signal)} cannot be "
            "the swap signal (it stops or cannot be caught)",
            "use USR2 (the default)",
        )
        return
    clean = "" if relevant & {*ignored, *blocked} else "; none inherited as ignored or blocked"
    yield Finding("ok", "signals", f"swap on {_signame(config.swap_signal)}, stop on TERM/INT, "
                  f"drain with {_signame(config.drain_signal)}{clean}")  # fmt: skip


def check_program(config: Config, table: list[Mount]) -> Iterator[Finding]:
    if not config.command:
        yield Finding("warn", "program", "none given", "add -- PROGRAM [ARGS...] to check it")
        return
    try:
        path = resolve_program(config.command[0], os.environ)
    except SpawnError as exc:
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
        yield Finding("ok", "program", f"{path} is dynamically linked; its loader {interpreter} "
                      "is present (its shared libraries are not checked)")  # fmt: skip
    else:
        yield Finding("fail", "program", f"{path} is dynamically linked but its ELF interpreter "
                      f"{interpreter} is missing: exec fails with 'no such file or directory'",
                      "build it static (CGO_ENABLED=0 go build) or use a base image with that "
                      "libc")  # fmt: skip
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
            state = socket_state(spec.path)
            directory = os.path.dirname(spec.path)
            if not os.access(directory, os.W_OK):
                yield Finding("fail", check, f"{directory} is missing or not writable",
                              "create it or mount a volume there")  # fmt: skip
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
            info = socket.getaddrinfo(spec.host or None, spec.port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE)[0]  # fmt: skip
            with socket.socket(info[0], socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(info[4])
            yield Finding("ok", check, "bindable")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                yield Finding("warn", check, "in use now", "fine if this hotswapd is running; "
                              "otherwise stop what holds it (ss -ltnp)")  # fmt: skip
            else:
                yield Finding("fail", check, f"cannot bind: {exc.strerror or exc}",
                              "ports below 1024 need root or CAP_NET_BIND_SERVICE; use an "
                              "address of this container")  # fmt: skip


def cgroup_memory() -> tuple[int | None, int | None]:
    """(limit, usage) in bytes of this cgroup (v2, then v1); limit None when unlimited."""
    for line in (read_text("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, names = f"/sys/fs/cgroup{path.rstrip('/')}", ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base = f"/sys/fs/cgroup/memory{path.rstrip('/')}"
            if not os.path.isdir(base):  # a cgroup namespace shows its own root only
                base = "/sys/fs/cgroup/memory"
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        limit, usage = (read_text(os.path.join(base, name)) for name in names)
        if usage is None:
            continue
        number = int(limit) if limit and limit.strip().isdigit() else None
        return (number if number is not None and number < 1 << 60 else None), int(usage)
    return None, None


def check_memory() -> Iterator[Finding]:
    limit, usage = cgroup_memory()
    if limit is None:
        yield Finding("ok", "memory", "no cgroup memory limit: two generations always fit "
                      "(a leaking build is still caught by --max-memory-growth)")  # fmt: skip
        return
    used = usage or 0
    text = (f"cgroup limit {format_size(limit)}, {format_size(used)} in use, "
            f"{format_size(limit - used)} free")  # fmt: skip
    if limit - used < used:
        yield Finding("warn", "memory", f"{text}: a swap runs two generations at once and the "
                      "new one needs about as much as what runs now", "raise the container's "
                      "memory limit to at least twice the server's memory")  # fmt: skip
    else:
        yield Finding("ok", "memory", f"{text}: room for a second generation")


def check_control(config: Config) -> Iterator[Finding]:
    path, explicit = server_path(config, os.environ)
    if path is None:
        yield Finding("warn", "control", "control socket off or no writable runtime directory: "
                      "`hotswapd ctl` and `deploy` cannot reach hotswapd",
                      "give --control-socket PATH in a writable directory")  # fmt: skip
        return
    directory = os.path.dirname(path)
    problem = dir_problem(directory) if not explicit or os.path.basename(
        directory) == "hotswapd" else None  # fmt: skip
    state = socket_state(path)
    if problem:
        yield Finding("fail", "control", problem, f"remove {directory} or choose another path")
    elif state == "not-a-socket":
        yield Finding("fail", "control", f"{path} exists and is not a socket", "remove it")
    elif state == "live":
        mode = stat.S_IMODE(os.stat(path).st_mode)
        level = "fail" if mode & 0o077 else "ok"
        yield Finding(
            level,
            "control",
            f"a hotswapd is listening on {path} (mode {mode:04o})",
            "chmod 600 it; any user who can connect can swap" if level == "fail" else "",
        )
    else:
        yield Finding(
            "ok",
            "control",
            f"{path} will be created mode 0600 "
            f"{'(replacing a stale socket)' if state == 'stale' else ''}".rstrip(),
        )


def diagnose(config: Config) -> list[Finding]:
    table = mounts()
    findings = [*check_init(), *check_signals(config), *check_inotify(config)]
    for spec in config.watch:
        findings += check_path("watch", spec.path, config, table)
    findings += [*check_program(config, table), *check_listen(config), *check_memory(),
                 *check_control(config)]  # fmt: skip
    # A mount shared by the program and a watched path is reported once, not per path.
    seen: set[tuple[str, str]] = set()
    unique = []
    for finding in findings:
        key = (finding.level, finding.finding)
        if finding.level == "ok" or key not in seen:
            unique.append(finding)
            seen.add(key)
    return unique


def main(args: list[str]) -> int:
    config = parse_run_args(args, require_command=False)
    assert isinstance(config, Config)
    findings = diagnose(config)
    for finding in findings:
        print(finding.line(), flush=True)
    fails = sum(finding.level == "fail" for finding in findings)
    warns = sum(finding.level == "warn" for finding in findings)
    print(f"doctor: {len(findings) - fails - warns} ok, {warns} warn, {fails} fail")
    return EXIT_FAILURE if fails else EXIT_OK
