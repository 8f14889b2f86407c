"""Which filesystems inotify is blind on: one rule for the watcher's mode and doctor's verdict.

inotify reports only the changes made through this kernel. Where a file is changed from
the other side of a network or a VM boundary it sees nothing: network filesystems (a
rebuild on another machine), FUSE (Docker Desktop's grpcfuse, sshfs, gcsfuse, ...), and
the VM shares of Docker Desktop (virtiofs, shown as "fakeowner" in recent versions), WSL2
(9p) and VirtualBox (vboxsf). The watcher polls there in auto mode and refuses to start in
inotify mode; doctor warns (or fails) with the same sentence, from `blind_reason`.
"""

from __future__ import annotations

BLIND_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "virtiofs",
        "9p",
        "fakeowner",
        "vboxsf",
        "grpcfuse",  # older Docker Desktop shows the FUSE share without its "fuse." prefix
    }
)
BLIND_FIX = "use --watch-mode poll"


def is_blind(fs_type: str) -> bool:
    """True for filesystem types where inotify misses changes (see BLIND_FS_TYPES)."""
    return (
        fs_type in BLIND_FS_TYPES or fs_type == "fuse" or fs_type.startswith(("fuse.", "fuseblk"))
    )


def blind_reason(directory: str, fs_type: str, point: str) -> str:
    """Why inotify cannot be trusted for `directory`: the one sentence both sides print."""
    return (
        f"{directory} is on {fs_type} (mounted at {point}), where inotify misses changes "
        "made outside this kernel (host, NFS server, Docker Desktop)"
    )
