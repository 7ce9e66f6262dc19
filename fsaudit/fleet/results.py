"""The result directory of a fleet run, consistent at every moment (even after Ctrl-C or a crash):

    DIR/reports/NAME.json   each VM's own fsaudit report, exactly as it came back (after validation)
    DIR/hosts/NAME.json     what happened to the host (outcome, status, stderr, times); written last,
                            so its presence means the host is done
    DIR/index.json          the run (inventory, options, shards) and every host's summary; rewritten
                            as hosts finish and at the end

Every file is written to an unpredictably named temporary file in the same directory, fsync'ed and
renamed into place (`fsaudit.output`): someone who can write the directory cannot redirect a write.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import tempfile
from typing import IO, Any, Dict, Iterator, List, Tuple

from fsaudit import output
from fsaudit.errors import FsauditError, UsageError
from fsaudit.fleet.remote import HostResult
from fsaudit.model import dumps

INDEX_FORMAT = "fsaudit-fleet-index/1"
RECORD_LIMIT = 1 << 20  # a host record is a few hundred bytes
SPOOL_SUFFIX = ".part"  # a host's report while it arrives: `.NAME.<random>.part` in reports/
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,150}")


def file_stem(name: str) -> str:
    """A file name for host `name`: the name itself when safe, else a cleaned name plus a hash."""
    if _SAFE.fullmatch(name) and ".." not in name:
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._@+-]", "_", name)[:100].lstrip(".-") or "host"
    return f"{cleaned}-{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"


def write_atomic(path: str, data: bytes) -> None:
    try:
        output.write_atomic(path, data)
    except OSError as error:
        raise FsauditError(f"cannot write {path}: {error.strerror}") from None


def _json_bytes(data: Any) -> bytes:
    return (dumps(data, 2) + "\n").encode("utf-8")


class ResultDir:
    """The result directory of one run (or of several runs with --resume)."""

    def __init__(self, path: str, resume: bool = False):
        self.path = path
        self.hosts_dir = os.path.join(path, "hosts")
        self.reports_dir = os.path.join(path, "reports")
        index = os.path.join(path, "index.json")
        if os.path.exists(index) and not resume:
            raise UsageError(
                f"{path} already holds a fleet run: give --resume to finish it, or another --out"
            )
        if resume and not os.path.exists(index):
            raise UsageError(f"--resume: {path} holds no fleet run (no index.json)")
        try:
            os.makedirs(self.hosts_dir, exist_ok=True)
            os.makedirs(self.reports_dir, exist_ok=True)
        except OSError as error:
            raise FsauditError(f"cannot create {path}: {error.strerror}") from None
        lock = os.path.join(path, ".lock")
        try:
            # O_NOFOLLOW and no O_TRUNC: a symlink planted at this fixed name is refused, not followed
            self._lock = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise FsauditError(f"cannot create {lock}: {error.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            raise UsageError(f"{path} is in use by another fleet run") from None
        self._clean_leftovers()

    def close(self) -> None:
        os.close(self._lock)

    def _clean_leftovers(self) -> None:
        """Temporary files of an interrupted run (a host cut short leaves no host record)."""
        for directory in (self.path, self.hosts_dir, self.reports_dir):
            for name in os.listdir(directory):
                if name.startswith(".") and name.endswith((output.TEMPORARY_SUFFIX, SPOOL_SUFFIX)):
                    try:
                        os.unlink(os.path.join(directory, name))
                    except OSError:
                        pass

    def spool(self, name: str) -> Tuple[int, str]:
        """A new, unpredictably named file (descriptor, path) where one host's report is streamed."""
        return tempfile.mkstemp(prefix=f".{file_stem(name)}.", suffix=SPOOL_SUFFIX, dir=self.reports_dir)

    def save(self, result: HostResult, spool: str) -> None:
        """Put the host's report (already validated, in `spool`) in place, synced, then its record.
        Called in the fleet's writer thread: fsync never stalls the loop that talks to the hosts."""
        stem = file_stem(result.name)
        if result.outcome == "report":
            fd = os.open(spool, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(spool, os.path.join(self.reports_dir, f"{stem}.json"))
            result.report = f"reports/{stem}.json"
        write_atomic(os.path.join(self.hosts_dir, f"{stem}.json"), _json_bytes(result.to_dict()))

    def records(self) -> Iterator[HostResult]:
        return read_records(self.path)

    def write_index(self, run: Dict[str, Any], results: List[HostResult]) -> None:
        data = {
            "format": INDEX_FORMAT,
            "run": run,
            "hosts": [
                {k: getattr(r, k) for k in ("name", "address", "outcome", "status", "message", "report")}
                for r in sorted(results, key=lambda r: r.name)
            ],
        }
        write_atomic(os.path.join(self.path, "index.json"), _json_bytes(data))


def read_records(path: str) -> Iterator[HostResult]:
    """The host records of result directory `path` (unreadable ones are skipped: a record is only
    ever replaced whole, so a bad one is damage outside fsaudit)."""
    hosts_dir = os.path.join(path, "hosts")
    try:
        names = sorted(os.listdir(hosts_dir))
    except OSError:
        return
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with open_regular(os.path.join(hosts_dir, name)) as handle:
                yield HostResult.from_dict(json.loads(handle.read(RECORD_LIMIT)))
        except (OSError, ValueError, TypeError):
            continue


def open_regular(path: str) -> IO[bytes]:
    """`path` opened for reading if it is a regular file and not a symlink: a result directory others
    can write may hold links planted to make fsaudit read (and show) files of the control host."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
