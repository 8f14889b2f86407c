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
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import signal
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hotswapd import control, elf
from hotswapd.cli import parse_run_args
from hotswapd.config import Config
from hotswapd.errors import EXIT_FAILURE, EXIT_OK, SpawnError
from hotswapd.spawn import resolve_program
from hotswapd.units import format_size

BLIND_FS = ("nfs", "nfs4", "cifs", "smb3", "9p", "virtiofs", "vboxsf", "fakeowner", "grpcfuse")
CLONE_NEWNS, MS_REC, MS_PRIVATE, MNT_DETACH = 0x20000, 0x4000, 0x40000, 2
IN_MODIFY = 0x2


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warn | fail
    check: str
    finding: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level:<4}  {self.check}: {self.finding}"
        return f"{text} — {self.fix}" if self.fix else text


@dataclass(frozen=True)
class Mount:
    point: str
    root: str  # the part of the source filesystem shown here ("/" unless a bind mount)
    fstype: str
    source: str


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _status_field(pid: int | str, key: str) -> str:
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return ""


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
    cmdline = (_read("/proc/1/cmdline") or "").replace("\0", " ").strip() or "?"
    if "hotswapd" in cmdline:
        yield Finding("ok", "init", f"PID 1 is hotswapd ({cmdline[:60]})")
        return
    yield Finding("warn", "init", f"not PID 1 (PID 1 is '{cmdline[:60]}'): hotswapd will run as "
                  "a child subreaper, reaping the orphans below it only",
                  'make hotswapd the ENTRYPOINT in exec form: ENTRYPOINT ["hotswapd", ..., "--", '
                  '"/app/server"]')  # fmt: skip
    if signal.SIGTERM not in _signals_in(_status_field(1, "SigCgt")):
        yield Finding(
            "warn",
            "signals",
            f"PID 1 ('{cmdline[:40]}') has no SIGTERM handler: "
            "`docker stop` will wait, then SIGKILL everything without a drain",
            "exec hotswapd as PID 1, or use `exec hotswapd ...` in the entry script",
        )


def check_signals(config: Config) -> Iterator[Finding]:
    ignored = _signals_in(_status_field("self", "SigIgn"))
    blocked = _signals_in(_status_field("self", "SigBlk"))
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


def inotify_usage(euid: int) -> tuple[int, int]:
    """(instances, watches) held by processes of this effective uid, from /proc/*/fdinfo.

    The kernel charges both limits per user (all of that user's containers together); an
    fd shared by fork is counted once per process, so this can only over-count."""
    instances = watches = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        uids = _status_field(pid, "Uid").split()
        if len(uids) < 2 or int(uids[1]) != euid:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
            except OSError:
                continue
            instances += 1
            info = _read(f"/proc/{pid}/fdinfo/{fd}") or ""
            watches += sum(line.startswith("inotify wd:") for line in info.splitlines())
    return instances, watches


def inotify_probe(directories: set[str]) -> str | None:
    """Ask the kernel itself: make an instance, watch each directory, close it.

    The /proc count sees only this pid namespace, but the limits are per user across
    every container on the host; only a real attempt gives the kernel's answer."""
    libc: Any = ctypes.CDLL(None, use_errno=True)  # untyped C calls
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        what = "no inotify instance left" if err == errno.EMFILE else "inotify_init1 failed"
        return f"{what} ({os.strerror(err)})"
    try:
        for directory in sorted(directories):
            if libc.inotify_add_watch(fd, os.fsencode(directory), IN_MODIFY) < 0:
                err = ctypes.get_errno()
                if err == errno.ENOSPC:
                    return f"no inotify watch left for {directory} ({os.strerror(err)})"
                if err != errno.ENOENT:  # a missing directory is the watcher's to report
                    return f"cannot watch {directory}: {os.strerror(err)}"
    finally:
        os.close(fd)
    return None


def check_inotify(config: Config) -> Iterator[Finding]:
    limits = {
        name: int((_read(f"/proc/sys/fs/inotify/{name}") or "0").strip() or 0)
        for name in ("max_user_instances", "max_user_watches")
    }
    euid = os.geteuid()
    instances, watches = inotify_usage(euid)
    directories = {os.path.dirname(spec.path) for spec in config.watch}
    usage = (
        f"uid {euid} holds {instances} of {limits['max_user_instances']} instances and "
        f"{watches} of {limits['max_user_watches']} watches (in this pid namespace)"
    )
    if not config.watch or config.watch_mode == "poll":
        yield Finding("ok", "inotify", f"not used ({'poll mode' if config.watch else 'no --watch'})"
                      f"; {usage}")  # fmt: skip
        return
    problem = inotify_probe(directories)
    if problem:
        level = "fail" if config.watch_mode == "inotify" else "warn"
        after = "the watch will fail" if level == "fail" else "auto mode will fall back to polling"
        yield Finding(level, "inotify", f"{problem}; {usage}: {after}",
                      "raise it on the host (per user, shared by every container): sysctl -w "
                      "fs.inotify.max_user_instances=512 fs.inotify.max_user_watches=524288, or "
                      "use --watch-mode poll")  # fmt: skip
        return
    yield Finding("ok", "inotify", f"{usage}; a trial instance watching "
                  f"{', '.join(sorted(directories))} worked")  # fmt: skip


def mounts() -> list[Mount]:
    found = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        found.append(Mount(_unescape(fields[4]), _unescape(fields[3]), tail[0], tail[1]))
    return found


def _unescape(text: str) -> str:
    """mountinfo writes a space in a path as \\040 (and tab, newline, backslash likewise)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def mount_of(path: str, table: list[Mount]) -> Mount | None:
    """The mount that shows `path`: the longest mount point above it, the last one stacked."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for mount in table:
        point = mount.point.rstrip("/") or "/"
        if (real == point or real.startswith(point.rstrip("/") + "/")) and (
            best is None or len(point) >= len(best.point.rstrip("/") or "/")
        ):
            best = mount
    return best


@functools.cache
def hidden_entries(point: str) -> list[str] | None:
    """What a mount hides: list `point` with that mount detached, in a private namespace.

    None when it cannot be seen (no CAP_SYS_ADMIN, or the kernel refused)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe only
        code = 1
        try:
            os.close(read_fd)
            libc: Any = ctypes.CDLL(None, use_errno=True)  # untyped C calls
            if (libc.unshare(CLONE_NEWNS) == 0 and libc.mount(b"none", b"/", None,
                    MS_REC | MS_PRIVATE, None) == 0 and libc.umount2(
                    os.fsencode(point), MNT_DETACH) == 0):  # fmt: skip
                os.write(write_fd, json.dumps(sorted(os.listdir(point))[:1000]).encode())
                code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    names: list[str] = json.loads(b"".join(chunks))
    return names


def check_path(label: str, path: str, config: Config, table: list[Mount]) -> Iterator[Finding]:
    watched = label == "watch"
    mount = mount_of(path, table)
    if mount is None:
        return
    check = f"{label} {path}"
    bind = f", a bind mount of {mount.root}" if mount.root != "/" else ""
    where = f"{mount.fstype} mounted on {mount.point} from {mount.source}{bind}"
    if mount.point == os.path.realpath(path) and os.path.isfile(path):
        level = "warn" if watched else "ok"
        yield Finding(
            level,
            check,
            f"single-file bind mount ({where}): a rebuild that replaces "
            "the file on the host (rename) is never seen here; the old inode stays",
            "bind-mount the directory instead (-v ./build:/app)" if watched else "",
        )
    elif watched and (mount.fstype in BLIND_FS or mount.fstype.startswith("fuse")):
        level = "fail" if config.watch_mode == "inotify" else "warn"
        yield Finding(
            level,
            check,
            f"{where}: inotify does not see changes made on the other "
            "side (host, NFS server, Docker Desktop)",
            "use --watch-mode poll",
        )
    elif mount.fstype == "overlay":
        yield Finding("ok", check, f"{where} (the container's own layer: changes made inside "
                      "the container are seen, host files are not)")  # fmt: skip
    else:
        yield Finding("ok", check, where)
    if mount.point != "/" and not (os.path.isfile(mount.point)):
        hidden = hidden_entries(mount.point)
        if hidden:
            shown = ", ".join(hidden[:5]) + (", ..." if len(hidden) > 5 else "")
            entries = f"{len(hidden)} {'entry' if len(hidden) == 1 else 'entries'}"
            yield Finding("warn", check, f"the {mount.fstype} mount on {mount.point} hides "
                          f"{entries} underneath ({shown})", "files the image put "
                          f"there are invisible: mount the volume elsewhere, or move them out of "
                          f"{mount.point}")  # fmt: skip


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
            state = control.socket_state(spec.path)
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
    for line in (_read("/proc/self/cgroup") or "").splitlines():
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
        limit, usage = (_read(os.path.join(base, name)) for name in names)
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
    path, explicit = control.server_path(config, os.environ)
    if path is None:
        yield Finding("warn", "control", "control socket off or no writable runtime directory: "
                      "`hotswapd ctl` and `deploy` cannot reach hotswapd",
                      "give --control-socket PATH in a writable directory")  # fmt: skip
        return
    directory = os.path.dirname(path)
    problem = control.dir_problem(directory) if not explicit or os.path.basename(
        directory) == "hotswapd" else None  # fmt: skip
    state = control.socket_state(path)
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
