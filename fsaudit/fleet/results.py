"""The result directory of a fleet run, consistent at every moment (even after Ctrl-C or a crash):

    DIR/reports/NAME.json   each VM's own fsaudit report, exactly as it came back (after validation)
    DIR/hosts/NAME.json     what happened to the host (outcome, status, stderr, times); written last,
                            so its presence means the host is done
    DIR/index.json          the run (inventory, options, shards) and every host's summary; rewritten
                            as hosts finish and at the end

Every file is written to a temporary name in the same directory and renamed into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from typing import Any, Dict, Iterator, List

from fsaudit.errors import FsauditError, UsageError
from fsaudit.fleet.remote import HostResult

INDEX_FORMAT = "fsaudit-fleet-index/1"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,150}")


def file_stem(name: str) -> str:
    """A file name for host `name`: the name itself when safe, else a cleaned name plus a hash."""
    if _SAFE.fullmatch(name) and ".." not in name:
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._@+-]", "_", name)[:100].lstrip(".-") or "host"
    return f"{cleaned}-{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"


def write_atomic(path: str, data: bytes) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise FsauditError(f"cannot write {path}: {error.strerror}") from None


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


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
        self._lock = open(os.path.join(path, ".lock"), "w")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise UsageError(f"{path} is in use by another fleet run") from None
        self._clean_leftovers()

    def close(self) -> None:
        self._lock.close()

    def _clean_leftovers(self) -> None:
        """Temporary files of an interrupted run (a host cut short leaves no host record)."""
        for directory in (self.path, self.hosts_dir, self.reports_dir):
            for name in os.listdir(directory):
                if ".tmp-" in name or name.endswith(".part"):
                    try:
                        os.unlink(os.path.join(directory, name))
                    except OSError:
                        pass

    def spool_path(self, name: str) -> str:
        return os.path.join(self.reports_dir, f".{file_stem(name)}.json.part")

    def save(self, result: HostResult, spool: str) -> None:
        """Put the host's report (already validated, in `spool`) in place, then its record."""
        stem = file_stem(result.name)
        if result.outcome == "report":
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
        if not name.endswith(".json") or ".tmp-" in name:
            continue
        try:
            with open(os.path.join(hosts_dir, name), encoding="utf-8") as handle:
                yield HostResult.from_dict(json.load(handle))
        except (OSError, ValueError, TypeError):
            continue


def load_report_text(path: str, record: HostResult) -> str | None:
    if not record.report:
        return None
    try:
        with open(os.path.join(path, record.report), encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None
