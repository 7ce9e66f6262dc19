"""The mount table, read to keep tree walks on local disk filesystems.

A walk of `/` (or of `--root`, where an image may have its own /proc or a tmpfs mounted inside it)
must not descend into kernel pseudo filesystems, memory filesystems or network shares: what is there
is not on the audited disk, and reading it can hang or take hours. Bind mounts that show again a tree
the walk already covers (a loop, in the worst case) are skipped the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List

MOUNTINFO = "/proc/self/mountinfo"

# Not on a local disk: kernel state, memory, or another machine.
PSEUDO_FSTYPES = frozenset(
    {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "cgroup", "cgroup2", "securityfs", "debugfs"}
    | {"tracefs", "pstore", "bpf", "mqueue", "hugetlbfs", "configfs", "fusectl", "binfmt_misc", "autofs"}
    | {"efivarfs", "rpc_pipefs", "nfsd", "selinuxfs", "nsfs", "sockfs", "pipefs"}
)
NETWORK_FSTYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "ncpfs", "lustre", "gfs2"}
    | {"ocfs2", "beegfs", "gpfs", "fuse.sshfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.glusterfs"}
    | {"fuse.ceph-fuse", "fuse.cephfs", "fuse.davfs", "fuse.gvfsd-fuse", "fuse.goofys", "fuse.juicefs"}
)
_MAX_MOUNTS = 100_000
_MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo (host paths, raw bytes)."""

    mount_id: int
    device: str
    root: bytes
    point: bytes
    fstype: str


def _unescape(field: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash in names as octal escapes."""
    if b"\\" not in field:
        return field
    out = bytearray()
    index = 0
    while index < len(field):
        if field[index : index + 1] == b"\\" and field[index + 1 : index + 4].isdigit():
            out.append(int(field[index + 1 : index + 4], 8) & 0xFF)
            index += 4
        else:
            out += field[index : index + 1]
            index += 1
    return bytes(out)


def parse_mountinfo(data: bytes) -> List[Mount]:
    """The mounts listed in mountinfo `data`; malformed lines are ignored."""
    mounts = []
    for line in data.splitlines()[:_MAX_MOUNTS]:
        head, sep, tail = line.partition(b" - ")
        fields = head.split()
        rest = tail.split()
        if not sep or len(fields) < 5 or not rest:
            continue
        try:
            mount_id = int(fields[0])
        except ValueError:
            continue
        mounts.append(
            Mount(
                mount_id=mount_id,
                device=fields[2].decode("ascii", "replace"),
                root=_unescape(fields[3]),
                point=_unescape(fields[4]),
                fstype=rest[0].decode("ascii", "replace"),
            )
        )
    return mounts


def read_mounts(path: str = MOUNTINFO) -> List[Mount]:
    """This machine's mount table; OSError when it cannot be read."""
    chunks = []
    size = 0
    with open(path, "rb") as handle:
        # In pieces: a single read(limit) would allocate the whole limit at once.
        while size < _MAX_BYTES:
            chunk = handle.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return parse_mountinfo(b"".join(chunks))


def _below(path: bytes, top: bytes) -> bool:
    """`path` lies strictly below the directory `top` (host paths)."""
    if top == b"/":
        return path != b"/" and path.startswith(b"/")
    return path.startswith(top + b"/")


def _within(path: bytes, top: bytes) -> bool:
    return path == top or _below(path, top)


def excluded_mounts(mounts: Iterable[Mount], top: bytes) -> Dict[bytes, str]:
    """Mount points strictly below the host directory `top` that a walk of `top` must not enter,
    each with the reason. `top` itself is always walked: the user asked for it."""
    visible: Dict[bytes, Mount] = {}
    for mount in mounts:
        # A later mount at the same point hides the earlier one.
        visible[mount.point] = mount
    containing = max(
        (m for m in visible.values() if _within(top, m.point)), key=lambda m: len(m.point), default=None
    )
    excluded: Dict[bytes, str] = {}
    walked: List[Mount] = [containing] if containing else []
    for mount in sorted(visible.values(), key=lambda m: m.mount_id):
        if not _below(mount.point, top):
            continue
        if mount.fstype in PSEUDO_FSTYPES:
            excluded[mount.point] = f"{mount.fstype}: not on a disk"
            continue
        if mount.fstype in NETWORK_FSTYPES:
            excluded[mount.point] = f"{mount.fstype}: a network filesystem"
            continue
        duplicate = _shown_elsewhere(mount, walked, top)
        if duplicate is not None:
            excluded[mount.point] = (
                f"bind mount of {duplicate.decode('utf-8', 'backslashreplace')}, walked there"
            )
            continue
        walked.append(mount)
    # Below an excluded mount point nothing is walked, so mounts there need no entry of their own.
    return {point: why for point, why in excluded.items() if not any(_below(point, p) for p in excluded)}


def _shown_elsewhere(mount: Mount, walked: List[Mount], top: bytes):
    """The host path inside `top` where another walked mount already shows `mount`'s tree, if any."""
    for other in walked:
        if other.device != mount.device:
            continue
        if other.root != b"/" and not _within(mount.root, other.root):
            continue
        suffix = mount.root[len(other.root) :] if other.root != b"/" else mount.root
        where = other.point.rstrip(b"/") + b"/" + suffix.lstrip(b"/") if suffix.strip(b"/") else other.point
        if where != mount.point and _within(where, top) and not _below(where, mount.point):
            return where
    return None
