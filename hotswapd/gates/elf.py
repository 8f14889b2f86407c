"""Is this file a complete executable?

The swap, the file watcher, `deploy` and `doctor` all act on a file that a build, a
`docker cp` or an editor may still be writing. Exec'ing a half-written binary either fails
with ENOEXEC (the headers are not there yet) or, worse, succeeds and then crashes with
SIGBUS the first time the loader touches a page of a segment that lies past the end of the
file. Reading only the ELF headers and checking that every PT_LOAD segment and both header
tables lie inside the file catches the truncation before the serving generation is touched,
for the price of a few hundred bytes of reads.

Every reason is one short phrase meant to follow the path, `f"{path} {reason}"`, and names
the fix. Stdlib only: this module is imported on the hot path.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from typing import NamedTuple

_MAGIC = b"\x7fELF"
_EI_NIDENT = 16
_ET_NAMES = {0: "untyped", 1: "relocatable object", 4: "core dump"}
_ET_EXEC, _ET_DYN = 2, 3
_PT_LOAD, _PT_INTERP = 1, 3
_SHEBANG_MAX = 256  # the kernel reads this much of a #! line (BINPRM_BUF_SIZE)
_INTERP_MAX = 4096  # PATH_MAX: a longer PT_INTERP could not be opened anyway
_STILL_WRITING = "(still being written? wait for the build to finish)"

_NATIVE_BITS = 64 if sys.maxsize > 2**32 else 32
_NATIVE_LITTLE = sys.byteorder == "little"


class _Class(NamedTuple):
    """The struct layouts of one ELF class; the byte order prefix is added when parsing."""

    bits: int
    ehdr: str  # e_type .. e_shstrndx, the fields after e_ident
    phdr: str
    shdr: str
    offset_at: int  # index of p_offset in an unpacked program header
    filesz_at: int  # index of p_filesz


_CLASSES = {
    1: _Class(32, "HHIIIIIHHHHHH", "8I", "10I", offset_at=1, filesz_at=4),
    2: _Class(64, "HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ", offset_at=2, filesz_at=5),
}
_SH_SIZE_AT = 5  # sh_size holds the real section count when e_shnum is 0 (both classes)


class _Segment(NamedTuple):
    number: int  # its place in the program header table
    kind: int
    offset: int
    filesz: int


class _Elf(NamedTuple):
    order: str  # "<" or ">"
    layout: _Class
    segments: list[_Segment]
    shoff: int
    shentsize: int
    shnum: int


def check_program(path: str) -> str | None:
    """None when `path` can be exec'd as it is now; otherwise one reason naming the fix."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _missing(path)
    except NotADirectoryError:
        return "does not exist (a component of the path is not a directory)"
    except OSError as exc:
        return f"cannot be examined: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory (name the program inside it)"
    if not stat.S_ISREG(st.st_mode):
        return f"is not a regular file (it is a {_file_kind(st.st_mode)}; name the program itself)"
    if not os.access(path, os.X_OK):
        return _not_executable(path, st.st_mode)
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the stat, do not hang on it.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        return f"cannot be read to check it: {exc.strerror or exc} (make it readable)"
    try:
        return _check_open(fd)
    finally:
        os.close(fd)


def elf_interpreter(path: str) -> str | None:
    """The PT_INTERP path (the dynamic loader), or None: static, not ELF, or unreadable.

    A dynamic binary whose loader is missing fails to exec with a baffling ENOENT (a glibc
    build in an Alpine image); `doctor` uses this to say so.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if os.pread(fd, len(_MAGIC), 0) != _MAGIC:
            return None
        parsed = _parse(fd, size, require_native=False)
        if isinstance(parsed, str):
            return None
        for segment in parsed.segments:
            if segment.kind == _PT_INTERP:
                raw = os.pread(fd, min(segment.filesz, _INTERP_MAX), segment.offset)
                return os.fsdecode(raw.split(b"\0", 1)[0]) or None
        return None
    except OSError:
        return None
    finally:
        os.close(fd)


def is_elf(path: str) -> bool:
    """True when `path` starts with the ELF magic (complete or not)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.pread(fd, len(_MAGIC), 0) == _MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the checks


def _check_open(fd: int) -> str | None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "changed while being checked (it is no longer a regular file)"
    size = st.st_size
    if size == 0:
        return f"is empty {_STILL_WRITING}"
    head = os.pread(fd, _SHEBANG_MAX, 0)
    if head.startswith(_MAGIC) or (len(head) < len(_MAGIC) and _MAGIC.startswith(head)):
        parsed = _parse(fd, size, require_native=True)
        return parsed if isinstance(parsed, str) else _check_tables(fd, parsed, size)
    if head.startswith(b"#!"):
        return _check_shebang(head)
    return "is neither an ELF binary nor a #! script (is it the right file?)"


def _check_shebang(head: bytes) -> str | None:
    # The kernel's rules (fs/binfmt_script.c): skip blanks after "#!", the interpreter runs
    # up to the next blank, NUL or newline. A "\r" is part of the name, hence ENOENT.
    line = head[2:].split(b"\n", 1)[0].lstrip(b" \t")
    interpreter = line.split(b"\0", 1)[0].replace(b"\t", b" ").split(b" ", 1)[0]
    if not interpreter.strip(b"\r"):
        return "is a #! script without an interpreter (start it with e.g. #!/bin/sh)"
    if interpreter.endswith(b"\r"):
        return "has a Windows line ending in its #! line (convert it with dos2unix)"
    return None


def _check_tables(fd: int, elf: _Elf, size: int) -> str | None:
    """Every PT_LOAD and PT_INTERP segment, then the section header table, lies in the file."""
    if not any(segment.kind == _PT_LOAD for segment in elf.segments):
        return "is an ELF file with no loadable segment (not a program; rebuild it)"
    for segment in elf.segments:
        end = segment.offset + segment.filesz
        # PT_LOAD is mapped by the kernel and PT_INTERP read by it: both must be in the file.
        if segment.kind in (_PT_LOAD, _PT_INTERP) and end > size:
            return _truncated(f"segment {segment.number}", end, size)
    return _check_section_table(fd, elf, size)


def _parse(fd: int, size: int, require_native: bool) -> _Elf | str:
    """Read the ELF header and program header table; a reason when they are not sane."""
    head = os.pread(fd, 64, 0)
    if len(head) < _EI_NIDENT:
        return _truncated("the ELF identification", _EI_NIDENT, len(head))
    layout = _CLASSES.get(head[4])
    if layout is None or head[5] not in (1, 2):
        return f"is a corrupt ELF file (class {head[4]}, byte order {head[5]}; rebuild it)"
    little = head[5] == 1
    order = "<" if little else ">"
    if require_native and (layout.bits, little) != (_NATIVE_BITS, _NATIVE_LITTLE):
        machine = os.uname().machine
        return (
            f"is a {_describe(layout.bits, little)} ELF binary but this {machine} machine runs "
            f"{_describe(_NATIVE_BITS, _NATIVE_LITTLE)} ones (rebuild it for {machine})"
        )
    ehdr_end = _EI_NIDENT + struct.calcsize(order + layout.ehdr)
    if len(head) < ehdr_end:
        return _truncated("the ELF header", ehdr_end, size)
    fields = struct.unpack_from(order + layout.ehdr, head, _EI_NIDENT)
    e_type, phoff, shoff = fields[0], fields[4], fields[5]
    phentsize, phnum, shentsize, shnum = fields[8:12]
    if e_type not in (_ET_EXEC, _ET_DYN):
        kind = _ET_NAMES.get(e_type, f"type {e_type}")
        return f"is an ELF {kind} file, not an executable (link it into a program)"
    phdr_size = struct.calcsize(order + layout.phdr)
    if phnum == 0:
        return "is an ELF file without program headers (not a program; rebuild it)"
    if phentsize != phdr_size:
        return f"is a corrupt ELF file (program headers of {phentsize} bytes; rebuild it)"
    table_end = phoff + phnum * phdr_size
    if table_end > size:
        return _truncated("the program header table", table_end, size)
    table = os.pread(fd, phnum * phdr_size, phoff)
    if len(table) < phnum * phdr_size:
        return _truncated("the program header table", table_end, phoff + len(table))
    segments = []
    for number, entry in enumerate(struct.iter_unpack(order + layout.phdr, table)):
        segments.append(
            _Segment(number, entry[0], entry[layout.offset_at], entry[layout.filesz_at])
        )
    return _Elf(order, layout, segments, shoff, shentsize, shnum)


def _check_section_table(fd: int, elf: _Elf, size: int) -> str | None:
    # The kernel ignores sections, but the table is written last by linkers, so a table
    # past the end is the surest sign of a file still being written.
    shoff = elf.shoff
    if shoff == 0:
        return None  # stripped of its section table (sstrip, some packers): nothing to check
    shdr_size = struct.calcsize(elf.order + elf.layout.shdr)
    if elf.shentsize != shdr_size:
        return f"is a corrupt ELF file (section headers of {elf.shentsize} bytes; rebuild it)"
    count = elf.shnum
    if count == 0:
        # More than 0xff00 sections: the real count is in section 0's sh_size.
        if shoff + shdr_size > size:
            return _truncated("the section header table", shoff + shdr_size, size)
        first = os.pread(fd, shdr_size, shoff)
        if len(first) < shdr_size:
            return _truncated("the section header table", shoff + shdr_size, shoff + len(first))
        count = struct.unpack(elf.order + elf.layout.shdr, first)[_SH_SIZE_AT]
    table_end = shoff + count * shdr_size
    if table_end > size:
        return _truncated("the section header table", table_end, size)
    return None


# --------------------------------------------------------------------------- phrasing


def _truncated(what: str, end: int, size: int) -> str:
    return f"is truncated: {what} ends at byte {end} but the file has {size} bytes {_STILL_WRITING}"


def _describe(bits: int, little: bool) -> str:
    return f"{bits}-bit {'little' if little else 'big'}-endian"


def _missing(path: str) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return "does not exist (check the path, or build it first)"
    return f"is a broken symlink to {target} (point it at the program)"


def _not_executable(path: str, mode: int) -> str:
    if mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        try:
            noexec = bool(os.statvfs(path).f_flag & os.ST_NOEXEC)
        except OSError:
            noexec = False
        if noexec:
            return "is on a filesystem mounted noexec (remount it exec, or move the program)"
        return "is not executable by this user (check its owner, group and mode)"
    return "is not executable (chmod +x)"


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"
