"""Checker `nix`: every valid path of the Nix store against the NAR hash and size its database
recorded, and the store against the database, without running nix."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, Optional, Tuple

from fsaudit.checker import Checker, Option, Skip
from fsaudit.model import Finding
from fsaudit.outcomes import changed_after
from fsaudit.target import Target
from fsaudit_checks.manifest.entries import iso
from fsaudit_checks.nix import nar, store
from fsaudit_checks.nix.store import Damage, ValidPath

# Lock files and nix's own directories sit beside the store paths.
_NOT_PATHS = (b".links",)


class NixChecker(Checker):
    """Verify every path of the Nix store (NixOS) against its recorded NAR hash and size."""

    name = "nix"
    covers = "system files (the Nix store)"
    category = "os-files"
    repairer = "fsaudit_checks.nix.repair:NixRepairer"
    options = (
        Option(
            "paths",
            "verify only these store paths (what repair uses to check again what it restored)",
            multiple=True,
        ),
        Option("unregistered", "look for store paths the database does not list", kind=bool, default=True),
        Option(
            "max_listed",
            "list at most this many store paths the database does not list (the rest are counted)",
            kind=int,
            default=1000,
        ),
    )
    codes = {
        "missing": "a valid store path is gone",
        "content-differs": "a store path's NAR serialisation differs from its recorded hash or size, and "
        "no file in it was written after it was registered (or one was, inside the suspect window)",
        "modified-after-install": "a store path differs from its recorded hash and a file in it was "
        "written after the path was registered, outside the suspect window (a local change, or damage)",
        "wrong-type": "a FIFO, socket or device (or a symlink loop) stands in a store path, where nix can "
        "only have files, directories and symlinks",
        "unreadable": "a file of a store path could not be read (I/O error): the path was not verified",
        "unregistered-path": "the store holds a path its database does not list: the database may have "
        "lost the registration (garbage collection would delete the path)",
        "database-damaged": "the store database cannot be read in full, or a row of it is unusable; every "
        "readable row was still verified",
    }

    def applies(self, target: Target) -> bool:
        if not target.exists(store.DATABASE, follow=True):
            raise Skip("no Nix store database (/nix/var/nix/db/db.sqlite)")
        return True

    def run(self, target: Target) -> Iterator[Finding]:
        yield from _Audit(self, target).run()


class _Audit:
    """One run of the checker over one target."""

    _COUNTERS = (
        "store_paths",
        "store_paths_verified",
        "files_verified",
        "bytes_hashed",
        "files_unreadable",
        "not_checked_permission",
        "paths_not_verified",
        "unregistered_paths",
    )

    def __init__(self, checker: NixChecker, target: Target):
        self.checker = checker
        self.target = target
        self.window = checker.context.window
        self.stop = threading.Event()

    def count(self, key: str, amount: int = 1) -> None:
        self.checker.count(key, amount)

    def advice(self, path: bytes) -> str:
        text = os.fsdecode(path)
        command = f"nix-store --repair-path {text} (or re-deploy the system: nixos-rebuild switch --repair)"
        if self.target.live:
            return f"restore the store path from its binary cache: {command}"
        return (
            f"restore the store path inside the VM, not on this host (this audit read the image at "
            f"{self.target.root_text}): {command}"
        )

    def finding(self, code, severity, message, valid: ValidPath | None, path=None, details=None, advice=None):
        full: Dict[str, Any] = {}
        subject = None
        if valid is not None:
            package, version = store.split_name(valid.name)
            subject = os.fsdecode(valid.path.rsplit(b"/", 1)[-1])
            full = {
                "package": package,
                "version": version,
                "architecture": "",
                "store_path": valid.path,
                "nar_hash": valid.recorded_hash,
                "nar_size": valid.nar_size,
                "registered": iso(valid.registered),
            }
            if valid.deriver:
                full["deriver"] = valid.deriver
            if valid.ca:
                full["ca"] = valid.ca
        full.update(details or {})
        if advice is None:
            advice = self.advice(valid.path) if valid is not None else ""
        return self.checker.finding(
            code, severity, message, path=path, subject=subject, details=full, advice=advice
        )

    def damage(self, damage: Damage) -> Finding:
        return self.finding(
            "database-damaged",
            "critical",
            f"the Nix store database: {damage.where} {damage.problem}",
            None,
            path=store.DATABASE,
            details={"file": store.DATABASE, "where": damage.where, "problem": damage.problem},
            advice="the store paths in the unreadable part were not verified: restore "
            "/nix/var/nix/db from a backup, or re-deploy the system so that nix registers its paths again; "
            "do not collect garbage before that (it would delete what the database forgot)",
        )

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> Iterator[Finding]:
        for key in self._COUNTERS:
            self.count(key, 0)
        try:
            with store.open_database(self.target) as database:
                self.checker.stats["database_copied"] = database.private
                yield from self._verify(database)
                if self.checker.settings["unregistered"]:
                    yield from self._unregistered(database)
        except (OSError, sqlite3.Error) as error:
            reason = getattr(error, "strerror", None) or str(error)
            yield self.damage(Damage("the file", f"cannot be opened: {reason}"))
            self.checker.incomplete("the Nix store database cannot be read: no store path was verified")
            return
        self._summarise()

    def _summarise(self) -> None:
        stats = self.checker.stats
        if stats["paths_not_verified"]:
            self.checker.incomplete(f"{stats['paths_not_verified']:,} store paths could not be verified")
        if stats["not_checked_permission"]:
            self.checker.incomplete(
                f"{stats['not_checked_permission']:,} files not checked: permission denied "
                "(run as root to check them)"
            )

    def _verify(self, database: store.Database) -> Iterator[Finding]:
        jobs = max(1, self.checker.context.jobs)
        pending: deque = deque()
        progress = self.checker.context.progress
        progress.start("nix: verifying store paths")
        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="fsaudit-nar")
        try:
            only = {os.fsencode(path) for path in self.checker.settings["paths"]}
            for row in database.paths():
                if only and not isinstance(row, Damage) and row.path not in only:
                    continue
                if isinstance(row, Damage):
                    pending.append((None, row))
                else:
                    self.count("store_paths")
                    pending.append((row, pool.submit(self._archive, row)))
                while len(pending) > jobs * 4 or (pending and _ready(pending[0])):
                    yield from self._judge(*pending.popleft())
            while pending:
                yield from self._judge(*pending.popleft())
        finally:
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            progress.stop()

    def _archive(self, valid: ValidPath) -> Tuple[nar.Plan, Optional[bytes], list]:
        archive = nar.plan(self.target, valid.path)
        digest, problems = None, archive.problems
        # When the size already differs there is no need to read the files.
        if not problems and (valid.nar_size is None or archive.size == valid.nar_size):
            digest, problems = nar.digest(self.target, archive, self.stop)
        archive.release()
        return archive, digest, problems

    def _judge(self, valid: Optional[ValidPath], work) -> Iterator[Finding]:
        if valid is None:
            yield self.damage(work)
            return
        archive, digest, problems = work.result()
        self.checker.context.progress.advance(1)
        if problems:
            yield from self._problems(valid, problems)
            return
        self.count("store_paths_verified")
        self.count("files_verified", archive.files)
        if digest is not None:
            self.count("bytes_hashed", archive.content_bytes)
        verified = self.checker.context.verified
        verified.add(valid.path)
        verified.update(archive.file_paths)
        size_differs = valid.nar_size is not None and archive.size != valid.nar_size
        if not size_differs and digest == valid.digest:
            return
        yield self._differs(valid, archive, digest, size_differs)

    def _differs(self, valid: ValidPath, archive: nar.Plan, digest, size_differs: bool) -> Finding:
        details: Dict[str, Any] = {
            "actual_nar_hash": f"sha256:{nar.base32_encode(digest)}" if digest is not None else None,
            "actual_nar_size": archive.size,
        }
        if archive.touched_count:
            details["written_files"] = archive.touched
            details["written_files_count"] = archive.touched_count
            details["last_written"] = iso(archive.latest_mtime)
        if size_differs:
            details["size_differs"] = True
        registered = valid.registered
        after = changed_after(archive.latest_mtime, registered)
        in_window = after and self.window is not None and self.window.contains(archive.latest_mtime)
        if after and not in_window:
            return self.finding(
                "modified-after-install",
                "warning",
                f"the store path differs from its recorded hash; files in it were written on "
                f"{iso(archive.latest_mtime)}, after it was registered: a local change, or damage",
                valid,
                path=valid.path,
                details=details,
                advice=f"if nobody changed it on purpose, {self.advice(valid.path)}",
            )
        if in_window:
            details["modified_in_window"] = True
            message = (
                "the store path differs from its recorded hash; files in it were written during the window"
            )
        elif size_differs:
            message = "the store path differs from its recorded NAR size (content, a file or a name changed)"
        else:
            message = "the store path differs from its recorded NAR hash"
        return self.finding("content-differs", "critical", message, valid, path=valid.path, details=details)

    def _problems(self, valid: ValidPath, problems: list) -> Iterator[Finding]:
        verified_nothing = True
        for problem in problems:
            if problem.kind == "missing":
                yield self.finding("missing", "critical", "the store path is gone", valid, path=valid.path)
                return
            if problem.kind == "wrong-type":
                yield self.finding(
                    "wrong-type",
                    "critical",
                    f"a {problem.found} stands in the store path, where nix has only files, directories "
                    "and symlinks",
                    valid,
                    path=problem.inner,
                    details={"found": problem.found},
                )
                verified_nothing = False
            elif problem.kind == "permission":
                self.count("not_checked_permission")
            elif problem.kind == "unreadable":
                self.count("files_unreadable")
                yield self.finding(
                    "unreadable",
                    "warning",
                    f"cannot read it: {problem.detail}; its store path was not verified",
                    valid,
                    path=problem.inner,
                    details={"error": problem.detail},
                    advice="check the disk; " + self.advice(valid.path),
                )
            elif problem.kind == "limit":
                self.checker.incomplete(f"{os.fsdecode(valid.path)}: {problem.detail}")
        if verified_nothing:
            self.count("paths_not_verified")

    # -- the store against the database --------------------------------------------------------------

    def _unregistered(self, database: store.Database) -> Iterator[Finding]:
        listed = 0
        limit = max(0, self.checker.settings["max_listed"])
        try:
            names = sorted(store.store_names(self.target))
        except OSError as error:
            self.checker.incomplete(f"the store directory cannot be listed: {error.strerror or error}")
            return
        for name in names:
            if name in _NOT_PATHS or name.endswith(b".lock") or not store.STORE_NAME.match(name):
                self.count("store_entries_ignored")
                continue
            path = store.STORE + b"/" + name
            known = database.registered(path)
            if known is None:
                self.checker.incomplete("the database cannot say which store paths it lists")
                return
            if known:
                continue
            self.count("unregistered_paths")
            listed += 1
            if listed > limit:
                continue
            yield self.finding(
                "unregistered-path",
                "warning",
                "the store holds this path but the database does not list it: the database may have lost "
                "its registration (a lost write), or a build was interrupted",
                None,
                path=path,
                details={"store_path": path},
                advice="do not collect garbage (it would delete the path); if the system uses it, restore "
                "/nix/var/nix/db from a backup or re-deploy the system so that nix registers it again",
            )
        if listed > limit:
            self.checker.stats["unregistered_not_listed"] = listed - limit


def _ready(item) -> bool:
    work = item[1]
    return not hasattr(work, "done") or work.done()
