"""hotswapd.host.atomic: installs and writes on real filesystems, full, read-only and foreign."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from hotswapd.errors import HotswapdError
from hotswapd.host import atomic
from hotswapd.host.atomic import AtomicWriteError, atomic_install, atomic_write, is_temp_name

MiB = 1 << 20
OLD = b"old generation\n" * 64
SYSFS_ATTRIBUTE = "/sys/kernel/uevent_seqnum"  # stat says 4096 bytes, reading gives a few
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture(params=[True, False], ids=["O_TMPFILE", "named-temp"])
def use_tmpfile(request: pytest.FixtureRequest) -> bool:
    """Run the test through the O_TMPFILE path and through the named temp file fallback."""
    value: bool = request.param
    return value


def make_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def payload(size: int) -> bytes:
    """Bytes that differ at every offset, so a misplaced chunk cannot go unnoticed."""
    return os.urandom(size)


def names(directory: Path) -> set[str]:
    return set(os.listdir(directory))


# --------------------------------------------------------------------------- successes


def test_install_copies_content_and_source_mode(tmp_path: Path, use_tmpfile: bool) -> None:
    """The installed file has the source's bytes and mode, and no temp file is left."""
    data = payload(3 * MiB + 123)
    src = make_file(tmp_path / "build", data, 0o751)
    dest = make_file(tmp_path / "server", OLD, 0o700)
    atomic_install(str(src), str(dest), use_tmpfile=use_tmpfile)
    assert dest.read_bytes() == data
    assert dest.stat().st_mode & 0o7777 == 0o751
    assert names(tmp_path) == {"build", "server"}


def test_install_explicit_mode_wins(tmp_path: Path, use_tmpfile: bool) -> None:
    """An explicit mode replaces the source's mode bits (and the umask plays no part)."""
    src = make_file(tmp_path / "build", b"x", 0o600)
    dest = tmp_path / "server"
    old_umask = os.umask(0o077)
    try:
        atomic_install(str(src), str(dest), mode=0o755, use_tmpfile=use_tmpfile)
    finally:
        os.umask(old_umask)
    assert dest.stat().st_mode & 0o7777 == 0o755


def test_install_empty_source(tmp_path: Path, use_tmpfile: bool) -> None:
    """An empty source installs an empty file over a non-empty one."""
    src = make_file(tmp_path / "empty", b"")
    dest = make_file(tmp_path / "state", OLD)
    atomic_install(str(src), str(dest), use_tmpfile=use_tmpfile)
    assert dest.read_bytes() == b""


def test_write_creates_and_replaces_with_mode(tmp_path: Path, use_tmpfile: bool) -> None:
    """atomic_write creates a missing file, then replaces it, with mode 0644 despite the umask."""
    dest = tmp_path / "state.json"
    old_umask = os.umask(0o077)
    try:
        atomic_write(str(dest), b'{"generation": 1}', use_tmpfile=use_tmpfile)
        assert dest.read_bytes() == b'{"generation": 1}'
        atomic_write(str(dest), b'{"generation": 2}', mode=0o600, use_tmpfile=use_tmpfile)
    finally:
        os.umask(old_umask)
    assert dest.read_bytes() == b'{"generation": 2}'
    assert dest.stat().st_mode & 0o7777 == 0o600
    assert names(tmp_path) == {"state.json"}


def test_install_replaces_a_running_binary(tmp_path: Path, use_tmpfile: bool) -> None:
    """Installing over a binary that is being executed works (no ETXTBSY): it swaps the name."""
    dest = tmp_path / "server"
    shutil.copy2(os.path.realpath("/bin/sleep"), dest)
    running = subprocess.Popen([str(dest), "60"])
    try:
        atomic_install(os.path.realpath("/bin/true"), str(dest), use_tmpfile=use_tmpfile)
        assert subprocess.run([str(dest)]).returncode == 0
        assert running.poll() is None  # the old inode keeps running
    finally:
        running.kill()
        running.wait()


def test_install_replaces_a_symlink_not_its_target(tmp_path: Path, use_tmpfile: bool) -> None:
    """A symlink at dest is replaced by the file; the file it pointed to is untouched."""
    target = make_file(tmp_path / "v1", OLD)
    dest = tmp_path / "server"
    dest.symlink_to(target)
    src = make_file(tmp_path / "v2", b"new")
    atomic_install(str(src), str(dest), use_tmpfile=use_tmpfile)
    assert not dest.is_symlink()
    assert dest.read_bytes() == b"new"
    assert target.read_bytes() == OLD


@needs_root
def test_install_from_another_filesystem(
    tmp_path: Path, mount_tmpfs: Callable[[str], Path], use_tmpfile: bool
) -> None:
    """A source on another filesystem installs fine: the temp is made in dest's directory."""
    other = mount_tmpfs("size=8m")
    assert os.stat(other).st_dev != os.stat(tmp_path).st_dev
    data = payload(2 * MiB)
    src = make_file(other / "build", data, 0o755)
    dest = make_file(tmp_path / "server", OLD, 0o755)
    atomic_install(str(src), str(dest), use_tmpfile=use_tmpfile)
    assert dest.read_bytes() == data
    assert names(other) == {"build"}
    assert names(tmp_path) == {other.name, "server"}


# --------------------------------------------------------------------------- failures


def test_missing_source_leaves_dest(tmp_path: Path, use_tmpfile: bool) -> None:
    """A missing source fails in one line naming the step, and dest is untouched."""
    dest = make_file(tmp_path / "server", OLD, 0o755)
    src = tmp_path / "build"
    with pytest.raises(AtomicWriteError) as caught:
        atomic_install(str(src), str(dest), use_tmpfile=use_tmpfile)
    assert str(caught.value) == (
        f"cannot install {dest}: opening the source {src} failed: No such file or directory"
    )
    assert isinstance(caught.value, HotswapdError)
    assert dest.read_bytes() == OLD
    assert names(tmp_path) == {"server"}


def test_directory_source_is_refused(tmp_path: Path, use_tmpfile: bool) -> None:
    """A directory given as the source is refused and dest is untouched."""
    dest = make_file(tmp_path / "server", OLD)
    (tmp_path / "build").mkdir()
    with pytest.raises(AtomicWriteError, match="is not a regular file"):
        atomic_install(str(tmp_path / "build"), str(dest), use_tmpfile=use_tmpfile)
    assert dest.read_bytes() == OLD
    assert names(tmp_path) == {"build", "server"}


@pytest.mark.skipif(not os.path.exists(SYSFS_ATTRIBUTE), reason="no sysfs")
def test_source_shorter_than_its_size_leaves_dest(tmp_path: Path, use_tmpfile: bool) -> None:
    """A source that ends before the size stat gave (it was cut) fails and dest is untouched."""
    dest = make_file(tmp_path / "server", OLD)
    with pytest.raises(AtomicWriteError, match=r"shrank to \d+ of 4096 bytes while being copied"):
        atomic_install(SYSFS_ATTRIBUTE, str(dest), use_tmpfile=use_tmpfile)
    assert dest.read_bytes() == OLD
    assert names(tmp_path) == {"server"}


def test_copy_stops_when_source_is_truncated_after_stat(tmp_path: Path) -> None:
    """A source truncated between the stat and the copy is detected, not copied short."""
    src = make_file(tmp_path / "build", payload(MiB))
    with open(src, "rb") as reader, open(tmp_path / "copy", "wb") as writer:
        size = os.fstat(reader.fileno()).st_size
        os.truncate(src, size // 2)  # the build tool starts writing it again
        with pytest.raises(atomic._Failed, match=f"shrank to {size // 2} of {size} bytes"):
            atomic._copy(reader.fileno(), writer.fileno(), size, str(src))


def test_missing_dest_directory_is_named(tmp_path: Path, use_tmpfile: bool) -> None:
    """A dest in a directory that does not exist fails at opening that directory."""
    dest = tmp_path / "missing" / "state"
    with pytest.raises(AtomicWriteError) as caught:
        atomic_write(str(dest), b"x", use_tmpfile=use_tmpfile)
    assert str(caught.value) == (
        f"cannot write {dest}: opening the directory {tmp_path / 'missing'} failed: "
        "No such file or directory"
    )


@needs_root
@pytest.mark.parametrize("operation", ["install", "write"])
def test_full_disk_leaves_dest_and_frees_the_temp(
    tmp_path: Path, mount_tmpfs: Callable[[str], Path], use_tmpfile: bool, operation: str
) -> None:
    """ENOSPC while writing 1 MiB into a 64 KiB tmpfs leaves dest, no temp, no space used."""
    small = mount_tmpfs("size=64k")
    dest = make_file(small / "server", OLD, 0o755)
    free_before = os.statvfs(small).f_bfree
    data = payload(MiB)
    src = make_file(tmp_path / "build", data, 0o755)

    def attempt() -> None:
        if operation == "install":
            atomic_install(str(src), str(dest), use_tmpfile=use_tmpfile)
        else:
            atomic_write(str(dest), data, use_tmpfile=use_tmpfile)

    with pytest.raises(AtomicWriteError) as caught:
        attempt()
    assert str(caught.value) == (
        f"cannot {operation} {dest}: writing the temp copy in {small} failed: "
        "No space left on device"
    )
    assert dest.read_bytes() == OLD
    assert dest.stat().st_mode & 0o7777 == 0o755
    assert names(small) == {"server"}
    assert os.statvfs(small).f_bfree == free_before


@needs_root
def test_read_only_dest_directory_leaves_dest(
    tmp_path: Path, mount_tmpfs: Callable[[str], Path], use_tmpfile: bool
) -> None:
    """A dest on a read-only mount fails with EROFS at creating the temp, dest untouched."""
    app = mount_tmpfs("size=1m")
    dest = make_file(app / "server", OLD, 0o755)
    subprocess.run(["mount", "-o", "remount,ro", str(app)], check=True)
    src = make_file(tmp_path / "build", b"new", 0o755)
    with pytest.raises(AtomicWriteError) as caught:
        atomic_install(str(src), str(dest), use_tmpfile=use_tmpfile)
    assert str(caught.value) == (
        f"cannot install {dest}: creating a temp file in {app} failed: Read-only file system"
    )
    assert dest.read_bytes() == OLD
    assert names(app) == {"server"}


# --------------------------------------------------------------------------- the temp file


def test_o_tmpfile_has_no_name_until_complete(tmp_path: Path) -> None:
    """With O_TMPFILE the temp copy is invisible in the directory while it is written."""
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd, name = atomic._open_temp(dir_fd, "server", use_tmpfile=True)
        try:
            os.write(fd, b"half a bin")
            assert name is None
            assert names(tmp_path) == set()
            assert os.readlink(f"/proc/self/fd/{fd}").endswith(" (deleted)")
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def test_named_fallback_is_hidden_and_recognisable(tmp_path: Path) -> None:
    """Without O_TMPFILE the temp is a hidden .<name>.hotswapd-tmp-<hex> file in dest's dir."""
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd, name = atomic._open_temp(dir_fd, "server", use_tmpfile=False)
        os.close(fd)
    finally:
        os.close(dir_fd)
    assert name is not None
    assert re.fullmatch(r"\.server\.hotswapd-tmp-[0-9a-f]{12}", name)
    assert names(tmp_path) == {name}
    assert is_temp_name(name)
    assert not is_temp_name("server")
    assert not is_temp_name(".server.swp")
