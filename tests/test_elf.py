"""hotswapd.gates.elf: real binaries, damaged copies of them, and ELF files built byte by byte."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hotswapd.gates.elf import check_program, elf_interpreter, is_elf

TRUE = os.path.realpath("/bin/true")
PYTHON = os.path.realpath(sys.executable)
TINI_STATIC = "/usr/bin/tini-static"
STILL_WRITING = "(still being written? wait for the build to finish)"
NATIVE = (64 if sys.maxsize > 2**32 else 32, sys.byteorder == "little")
# mov edi, 42; mov eax, 60 (exit); syscall: the whole program of the crafted x86-64 binary
EXIT_42_X86_64 = b"\xbf\x2a\x00\x00\x00\xb8\x3c\x00\x00\x00\x0f\x05"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def craft_elf(
    path: Path,
    *,
    bits: int = 64,
    little: bool = True,
    interp: bytes | None = None,
    code: bytes = EXIT_42_X86_64,
    e_type: int = 2,
    section_table_at: int = 0,
) -> int:
    """Write a minimal executable ELF (PT_INTERP if asked, one PT_LOAD over the whole file).

    Returns the file size. `section_table_at` places a 3-entry section header table there.
    """
    order = "<" if little else ">"
    ehsize, phentsize, shentsize = (64, 56, 64) if bits == 64 else (52, 32, 40)
    phnum = 2 if interp is not None else 1
    interp_blob = interp + b"\0" if interp is not None else b""
    interp_off = ehsize + phnum * phentsize
    code_off = interp_off + len(interp_blob)
    size = code_off + len(code)
    base = 0x400000 if bits == 64 else 0x8048000
    machine = 62 if bits == 64 else 3  # x86-64, i386
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1 if little else 2, 1]) + bytes(9)
    shnum = 3 if section_table_at else 0
    header = struct.pack(
        order + ("HHIQQQIHHHHHH" if bits == 64 else "HHIIIIIHHHHHH"),
        e_type,
        machine,
        1,
        base + code_off,
        ehsize,
        section_table_at,
        0,
        ehsize,
        phentsize,
        phnum,
        shentsize if shnum else 0,
        shnum,
        0,
    )
    headers = []
    if interp is not None:
        headers.append(_phdr(order, bits, 3, 4, interp_off, base + interp_off, len(interp_blob), 1))
    headers.append(_phdr(order, bits, 1, 5, 0, base, size, 0x1000))
    path.write_bytes(ident + header + b"".join(headers) + interp_blob + code)
    path.chmod(0o755)
    return size


def _phdr(
    order: str, bits: int, kind: int, flags: int, offset: int, vaddr: int, size: int, align: int
) -> bytes:
    if bits == 64:
        return struct.pack(order + "IIQQQQQQ", kind, flags, offset, vaddr, vaddr, size, size, align)
    return struct.pack(order + "8I", kind, offset, vaddr, vaddr, size, size, flags, align)


def copy_executable(src: str, dest: Path, keep: float = 1.0, mode: int = 0o755) -> Path:
    """Copy the first `keep` fraction of `src` to `dest` with `mode`."""
    data = Path(src).read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    dest.chmod(mode)
    return dest


# --------------------------------------------------------------------------- complete programs


@pytest.mark.parametrize("path", [TRUE, PYTHON], ids=["true", "python"])
def test_real_dynamic_binaries_are_complete(path: str) -> None:
    """/bin/true and the running Python pass the check and are recognised as ELF."""
    assert check_program(path) is None
    assert is_elf(path)


@pytest.mark.parametrize("path", [TRUE, PYTHON], ids=["true", "python"])
def test_dynamic_binary_names_its_loader(path: str) -> None:
    """A dynamically linked binary reports its PT_INTERP, an existing absolute loader path."""
    loader = elf_interpreter(path)
    assert loader is not None
    assert os.path.isabs(loader)
    assert os.path.exists(loader)
    assert "ld" in os.path.basename(loader)


@pytest.mark.skipif(not os.path.exists(TINI_STATIC), reason="tini-static is not installed")
def test_installed_static_binary_has_no_loader() -> None:
    """A real static binary (tini-static) is complete and has no interpreter."""
    assert check_program(TINI_STATIC) is None
    assert elf_interpreter(TINI_STATIC) is None


def test_crafted_static_binary_is_complete_and_has_no_loader(tmp_path: Path) -> None:
    """A hand-made ELF64 with one PT_LOAD and no PT_INTERP passes and has no interpreter."""
    program = tmp_path / "static"
    craft_elf(program)
    assert check_program(str(program)) is None
    assert elf_interpreter(str(program)) is None
    assert is_elf(str(program))


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the crafted code is x86-64")
def test_crafted_static_binary_really_runs(tmp_path: Path) -> None:
    """The hand-made binary that check_program accepts is exec'd by the kernel and exits 42."""
    program = tmp_path / "exit42"
    craft_elf(program)
    assert check_program(str(program)) is None
    assert subprocess.run([str(program)]).returncode == 42


@pytest.mark.parametrize(
    "first_line", [b"#!/bin/sh\n", b"#! /usr/bin/env sh\n", b"#!\t/bin/sh -e\n"]
)
def test_shebang_script_is_a_program(tmp_path: Path, first_line: bytes) -> None:
    """An executable #! script naming an interpreter passes, and is not taken for ELF."""
    script = tmp_path / "run.sh"
    script.write_bytes(first_line + b"exec true\n")
    script.chmod(0o755)
    assert check_program(str(script)) is None
    assert not is_elf(str(script))
    assert elf_interpreter(str(script)) is None
    assert subprocess.run([str(script)]).returncode == 0


@pytest.mark.parametrize(("bits", "little"), [(64, True), (64, False), (32, True), (32, False)])
def test_both_classes_and_byte_orders_are_parsed(tmp_path: Path, bits: int, little: bool) -> None:
    """ELF32 and ELF64 in either byte order yield their PT_INTERP; only the native kind runs."""
    program = tmp_path / f"elf{bits}{'le' if little else 'be'}"
    craft_elf(program, bits=bits, little=little, interp=b"/lib/ld-test.so.1")
    assert elf_interpreter(str(program)) == "/lib/ld-test.so.1"
    reason = check_program(str(program))
    if (bits, little) == NATIVE:
        assert reason is None
    else:
        endian = "little" if little else "big"
        assert reason is not None
        assert reason.startswith(f"is a {bits}-bit {endian}-endian ELF binary but this ")
        assert reason.endswith(f"(rebuild it for {os.uname().machine})")


# --------------------------------------------------------------------------- incomplete programs


@pytest.mark.parametrize("path", [TRUE, PYTHON], ids=["true", "python"])
def test_half_copied_binary_is_truncated(tmp_path: Path, path: str) -> None:
    """A binary cut at half its size is reported as truncated, still being written."""
    half = copy_executable(path, tmp_path / "half", keep=0.5)
    reason = check_program(str(half))
    assert reason is not None
    assert reason.startswith("is truncated: ")
    assert reason.endswith(f"but the file has {half.stat().st_size} bytes " + STILL_WRITING)
    assert is_elf(str(half))


def test_truncated_segment_names_segment_and_sizes(tmp_path: Path) -> None:
    """A PT_LOAD segment ending past EOF is named, with its end and the file size."""
    program = tmp_path / "cut"
    size = craft_elf(program, interp=b"/lib/ld.so")
    os.truncate(program, size - 5)
    assert check_program(str(program)) == (
        f"is truncated: segment 1 ends at byte {size} but the file has {size - 5} bytes "
        + STILL_WRITING
    )


def test_section_table_past_the_end_is_truncated(tmp_path: Path) -> None:
    """A section header table ending past EOF (it comes last) means the file is truncated."""
    program = tmp_path / "sections"
    size = craft_elf(program, section_table_at=4096)
    assert check_program(str(program)) == (
        f"is truncated: the section header table ends at byte {4096 + 3 * 64} "
        f"but the file has {size} bytes " + STILL_WRITING
    )


@pytest.mark.parametrize("keep", [3, 10, 40, 100])
def test_cut_inside_the_headers_is_truncated(tmp_path: Path, keep: int) -> None:
    """A binary cut inside the ELF header or program header table is reported as truncated."""
    program = tmp_path / "stub"
    craft_elf(program)
    os.truncate(program, keep)
    reason = check_program(str(program))
    assert reason is not None
    assert reason.startswith("is truncated: ")
    assert reason.endswith(STILL_WRITING)


def test_empty_file_is_still_being_written(tmp_path: Path) -> None:
    """An empty executable file (a build that just created it) is reported as empty."""
    empty = tmp_path / "empty"
    empty.touch(mode=0o755)
    assert check_program(str(empty)) == f"is empty {STILL_WRITING}"


def test_relocatable_object_is_not_a_program(tmp_path: Path) -> None:
    """An ELF object file (.o) is refused: it has to be linked first."""
    obj = tmp_path / "main.o"
    craft_elf(obj, e_type=1)
    assert check_program(str(obj)) == (
        "is an ELF relocatable object file, not an executable (link it into a program)"
    )


# --------------------------------------------------------------------------- not a program


def test_binary_without_exec_bit_needs_chmod(tmp_path: Path) -> None:
    """A complete binary without any execute bit is refused with the chmod fix."""
    plain = copy_executable(TRUE, tmp_path / "true", mode=0o644)
    assert check_program(str(plain)) == "is not executable (chmod +x)"


@needs_root
def test_binary_on_noexec_mount_names_the_mount(mount_tmpfs: Callable[[str], Path]) -> None:
    """An executable file on a noexec filesystem is blamed on the mount, not on its mode."""
    program = copy_executable(TRUE, mount_tmpfs("size=1m,noexec") / "true")
    assert check_program(str(program)) == (
        "is on a filesystem mounted noexec (remount it exec, or move the program)"
    )


def test_directory_is_not_a_program(tmp_path: Path) -> None:
    """A directory (even with its x bits) is refused as a directory."""
    assert check_program(str(tmp_path)) == "is a directory (name the program inside it)"
    assert not is_elf(str(tmp_path))


def test_missing_path_does_not_exist(tmp_path: Path) -> None:
    """A path that does not exist is reported as such, and is not ELF."""
    missing = tmp_path / "server"
    assert check_program(str(missing)) == "does not exist (check the path, or build it first)"
    assert not is_elf(str(missing))
    assert elf_interpreter(str(missing)) is None


def test_broken_symlink_names_its_target(tmp_path: Path) -> None:
    """A symlink to a missing file is reported with the target it points to."""
    link = tmp_path / "server"
    link.symlink_to(tmp_path / "releases" / "v2")
    assert check_program(str(link)) == (
        f"is a broken symlink to {tmp_path}/releases/v2 (point it at the program)"
    )


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO is refused by its type, without opening it (which would block)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o755)
    assert check_program(str(fifo)) == (
        "is not a regular file (it is a FIFO; name the program itself)"
    )


def test_random_bytes_are_neither_elf_nor_script(tmp_path: Path) -> None:
    """An executable file of random bytes is neither an ELF binary nor a #! script."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"MZ" + random.Random(1234).randbytes(4096))
    junk.chmod(0o755)
    assert check_program(str(junk)) == (
        "is neither an ELF binary nor a #! script (is it the right file?)"
    )
    assert not is_elf(str(junk))
    assert elf_interpreter(str(junk)) is None


@pytest.mark.parametrize(
    ("first_line", "expected"),
    [
        (b"#!\n", "is a #! script without an interpreter (start it with e.g. #!/bin/sh)"),
        (b"#!   \n", "is a #! script without an interpreter (start it with e.g. #!/bin/sh)"),
        (b"#!/bin/sh\r\n", "has a Windows line ending in its #! line (convert it with dos2unix)"),
    ],
    ids=["nothing", "blanks", "crlf"],
)
def test_bad_shebang_lines_are_explained(tmp_path: Path, first_line: bytes, expected: str) -> None:
    """A #! line with no interpreter, or with a CRLF ending, is refused with its fix."""
    script = tmp_path / "run.sh"
    script.write_bytes(first_line + b"true\r\n")
    script.chmod(0o755)
    assert check_program(str(script)) == expected


def test_copy_of_real_binary_is_complete(tmp_path: Path) -> None:
    """A full copy of /bin/true (as a build would leave it) passes once complete."""
    program = tmp_path / "true"
    shutil.copyfile(TRUE, program)
    program.chmod(0o755)
    assert check_program(str(program)) is None
    assert elf_interpreter(str(program)) == elf_interpreter(TRUE)
