"""Blob records against the blob directory (ZODB.blob's bushy or lawn layout)."""

from __future__ import annotations

import binascii
import os
from typing import Iterator

from fsaudit.model import Severity
from fsaudit.problems import Count, Item
from fsaudit.target import Target
from fsaudit_checks.zodb.discovery import blob_layout
from fsaudit_checks.zodb.format import hex_id, tid_text

CRITICAL, WARNING = Severity.CRITICAL, Severity.WARNING


def _oid_path(oid: bytes, layout: str) -> str:
    """The blob directory path of an oid, as ZODB.blob's bushy or lawn layout writes it."""
    if layout == "lawn":
        return _oid_repr(oid)
    return "/".join("0x" + binascii.hexlify(oid[i : i + 1]).decode() for i in range(8))


def _oid_repr(oid: bytes) -> str:
    digits = binascii.hexlify(oid).lstrip(b"0")
    if len(digits) & 1:
        digits = b"0" + digits
    return "0x" + (digits.decode() or "00")


class BlobCheck:
    """Blob records against the blob directory: the file of each current blob revision must exist."""

    def __init__(self, target: Target, blob_dir: bytes | None, problem):
        self.target = target
        self.problem = problem  # StorageAudit.problem: a plain problem of the storage
        self.blob_dir = blob_dir
        self.unverified = 0
        self.layout = blob_layout(target, blob_dir) if blob_dir else "bushy"

    def check(self, oid: bytes, tid: bytes) -> Iterator[Item]:
        if not self.blob_dir:
            self.unverified += 1
            return
        yield Count("blobs_checked")
        relative = f"{_oid_path(oid, self.layout)}/{_oid_repr(tid)}.blob"
        path = os.path.join(self.blob_dir, os.fsencode(relative))
        try:
            st = self.target.stat(path)
        except FileNotFoundError:
            yield self.problem(
                "blob-missing",
                CRITICAL,
                f"the blob of oid {hex_id(oid)} (revision {hex_id(tid)}) is missing: {os.fsdecode(path)}",
                subject=f"oid {hex_id(oid)}",
                details={"oid": hex_id(oid), "tid": hex_id(tid), "tid_time": tid_text(tid), "blob": path},
                advice="Restore the blob directory from the backup that matches Data.fs.",
            )
            return
        except OSError as error:
            yield self.problem(
                "blob-missing",
                CRITICAL,
                f"the blob of oid {hex_id(oid)} cannot be read: {error}",
                subject=f"oid {hex_id(oid)}",
                details={"oid": hex_id(oid), "tid": hex_id(tid), "blob": path},
                advice="Restore the blob directory from the backup that matches Data.fs.",
            )
            return
        if st.st_size == 0:
            yield self.problem(
                "blob-empty",
                WARNING,
                f"the blob of oid {hex_id(oid)} (revision {hex_id(tid)}) is an empty file",
                subject=f"oid {hex_id(oid)}",
                details={"oid": hex_id(oid), "tid": hex_id(tid), "tid_time": tid_text(tid), "blob": path},
                advice="Unless this blob was meant to be empty, its content was lost: restore the blob "
                "directory from a backup.",
            )
