"""The `zodb` checker: ZODB FileStorages (Data.fs), read directly or through a read-only ZEO client."""

from __future__ import annotations

import os
from typing import Iterator, List

from fsaudit.checker import Checker, Option, Skip
from fsaudit.model import Finding, Severity
from fsaudit.target import Target
from fsaudit_checks.zodb.discovery import Storage, discover, guess_blob_dir
from fsaudit_checks.zodb.format import hex_id, tid_text, tid_time
from fsaudit_checks.zodb.storage import SEVERITY, StorageAudit, WindowWrites
from fsaudit_checks.zodb.walk import Walk

WARNING, INFO = Severity.WARNING, Severity.INFO
SEARCH_ROOTS = ("/srv", "/var/lib", "/opt", "/home")
CONFIG_ROOTS = ("/etc",)


class ZodbChecker(Checker):
    """Verify ZODB FileStorages: structure, lost tails, unpicklable records, dangling references, blobs."""

    name = "zodb"
    covers = "ZODB databases"
    category = "databases"
    options = (
        Option(
            "paths",
            "FileStorage files or directories to check (default: search the usual places)",
            multiple=True,
        ),
        Option(
            "search",
            "directories searched for FileStorages by their magic",
            multiple=True,
            default=SEARCH_ROOTS,
        ),
        Option(
            "blob_dir", "blob directory of the storages given in `paths` (default: from configs, or beside)"
        ),
        Option(
            "zeo", "ZEO servers (host:port or socket path) to check through a read-only client", multiple=True
        ),
        Option("zeo_storage", "storage name on the ZEO servers", default="1"),
        Option("zeo_timeout", "seconds to wait for a ZEO server", kind=float, default=30.0),
        Option("references", "parse every current object and check its references", kind=bool, default=True),
        Option(
            "history",
            "also parse every older revision (undo and history need them)",
            kind=bool,
            default=False,
        ),
        Option("max_depth", "directory depth of the search", kind=int, default=8),
        Option("max_files", "files whose magic the search reads, at most", kind=int, default=200_000),
    )
    codes = {
        "bad-magic": "the file is empty or lacks the FileStorage magic (its first block is damaged)",
        "truncated-transaction": "the file ends inside a transaction: its tail was torn off",
        "transaction-damaged": "a transaction header is invalid (tid order, status, lengths)",
        "record-damaged": "a data record header is invalid (tid, transaction position, lengths)",
        "length-mismatch": "a transaction's header length and redundant length disagree",
        "unreachable-range": "bytes between readable transactions: what was written there is lost",
        "prev-chain-broken": "a record's previous-revision pointer does not match the file",
        "backpointer-broken": "an undo record's back pointer does not lead to data of the same object",
        "unreadable-record": "an object's pickle cannot be parsed (or loaded through ZEO)",
        "dangling-reference": "an object references an object that does not exist (POSKeyError)",
        "root-missing": "the storage has no root object",
        "checkpoint-transaction": "the last transaction was never finished (interrupted commit)",
        "unreadable-revision": "an older revision's pickle cannot be parsed (with `history`)",
        "metadata-damaged": "a transaction's extension metadata cannot be unpickled",
        "index-beyond-end": "Data.fs.index covers more of the file than exists: the tail was lost",
        "index-mismatch": "Data.fs.index disagrees with the file",
        "index-unreadable": "Data.fs.index cannot be read",
        "blob-missing": "a blob record has no blob file",
        "blob-empty": "a blob file is empty",
        "written-in-window": "transactions were committed during the suspect window",
        "unreadable": "a storage file cannot be read",
        "storage-missing": "a configured storage file does not exist",
        "zeo-unreachable": "a ZEO server could not be reached or checked",
        "storage-checked": "summary of one checked storage",
    }
    # Findings listed per code and storage; the runner counts the rest.
    cap = 50
    cap_by = ("code", "severity", "path")

    def applies(self, target: Target) -> bool:
        if self.settings["paths"] or self.settings["zeo"]:
            return True
        if not any(target.exists(root, follow=True) for root in self.settings["search"]):
            raise Skip("none of " + ", ".join(self.settings["search"]) + " exists")
        return True

    def present(self, target: Target) -> str:
        named = [*self.settings["paths"], *self.settings["zeo"]]
        return f"ZODB storages ({', '.join(named)})" if named else ""

    def run(self, target: Target) -> Iterator[Finding]:
        for address in self.settings["zeo"]:
            yield from self._check_zeo(address)
        storages = self._storages(target)
        if not storages and not self.settings["zeo"]:
            raise Skip("no FileStorage found under " + ", ".join(self.settings["search"]))
        for storage in storages:
            yield from self._findings(StorageAudit(self.settings, self.context, target, storage).run())

    def _findings(self, problems) -> Iterator[Finding]:
        """The findings of what a storage's audit found (plain problems, and its last transaction)."""
        for problem in problems:
            if isinstance(problem, WindowWrites):
                yield from self.window_findings(problem.subject, problem.path, problem.last_tid, problem.walk)
            else:
                yield from self.report([problem])

    # -- finding the storages ------------------------------------------------------------------

    def _storages(self, target: Target) -> List[Storage]:
        blob_dir = os.fsencode(self.settings["blob_dir"]) if self.settings["blob_dir"] else None
        if self.settings["paths"]:
            storages = []
            for given in self.settings["paths"]:
                path = os.fsencode(given)
                try:
                    is_dir = target.stat(path).st_mode & 0o170000 == 0o040000
                except OSError:
                    is_dir = False
                if is_dir:
                    found = discover(
                        target, [given], [], self.settings["max_depth"], self.settings["max_files"]
                    )
                    storages.extend(found.storages.values())
                else:
                    storages.append(Storage(path, None, ["paths"]))
            for storage in storages:
                storage.blob_dir = blob_dir or storage.blob_dir
        else:
            found = discover(
                target,
                self.settings["search"],
                CONFIG_ROOTS,
                self.settings["max_depth"],
                self.settings["max_files"],
            )
            self.count("files_searched", found.files_examined)
            self.count("python_libraries_not_searched", found.library_dirs)
            self.count("directories_below_max_depth", found.too_deep)
            if found.unreadable_dirs:
                self.count("directories_unreadable", found.unreadable_dirs)
            if found.limit_reached:
                self.incomplete(
                    f"the search stopped after reading {found.files_examined} files (zodb.max_files)"
                )
            storages = list(found.storages.values())
        for storage in storages:
            if storage.blob_dir is None:
                storage.blob_dir = guess_blob_dir(target, storage.path)
        return sorted(storages, key=lambda storage: storage.path)

    # -- ZEO ---------------------------------------------------------------------------------------

    def _check_zeo(self, address_text: str) -> Iterator[Finding]:
        subject = f"zeo {address_text}"
        from fsaudit_checks.zodb.zeo import ZeoUnreachable, ZeoWalk, parse_address

        try:
            import ZEO  # noqa: F401 - only to tell a missing ZEO from a failing one
        except ImportError:
            self.incomplete("checking through ZEO needs the ZEO package: pip install 'fsaudit[zodb]'")
            return
        try:
            address = parse_address(address_text)
            walk = ZeoWalk(address, self.settings["zeo_storage"], self.settings["zeo_timeout"])
        except ValueError as error:
            yield self.finding("zeo-unreachable", WARNING, str(error), subject=subject)
            self.incomplete(f"ZEO server {address_text} was not checked")
            return
        try:
            for problem in walk.problems():
                yield self.finding(
                    problem.code,
                    SEVERITY[problem.code],
                    problem.message,
                    subject=f"{subject} oid {hex_id(problem.oid)}" if problem.oid else subject,
                    details={**problem.details, "zeo": address_text, "storage": self.settings["zeo_storage"]},
                    advice="Restore the storage behind this ZEO server from a backup; then check its "
                    "Data.fs directly with fsaudit on the server for the full structural check.",
                )
        except ZeoUnreachable as error:
            yield self.finding(
                "zeo-unreachable",
                WARNING,
                f"ZEO server {address_text}: {error}",
                subject=subject,
                advice="Check that the ZEO server is running and reachable from here.",
            )
            self.incomplete(f"ZEO server {address_text} could not be checked to the end")
            return
        self.count("zeo_objects", walk.objects)
        self.count("references_checked", walk.references)
        details = {"objects": walk.objects, "references": walk.references}
        if walk.last_tid:
            details.update(last_tid=hex_id(walk.last_tid), last_time=tid_text(walk.last_tid))
            yield from self.window_findings(subject, None, walk.last_tid, None)
        yield self.finding(
            "storage-checked",
            INFO,
            f"{walk.objects} objects reachable from the root were loaded through ZEO",
            subject=subject,
            details=details,
        )

    def window_findings(
        self, subject: str, path: bytes | None, last_tid: bytes, walk: Walk | None
    ) -> Iterator[Finding]:
        window = self.context.window
        moment = tid_time(last_tid)
        if window is None or moment is None:
            return
        in_window = walk.in_window if walk else int(window.contains(moment.timestamp()))
        if not in_window:
            return
        details = {
            "transactions_in_window": in_window,
            "last_tid": hex_id(last_tid),
            "last_time": tid_text(last_tid),
        }
        if walk and walk.first_in_window:
            details.update(first_tid=hex_id(walk.first_in_window), first_time=tid_text(walk.first_in_window))
        yield self.finding(
            "written-in-window",
            WARNING,
            f"{in_window} transaction(s) were committed during the suspect window; the last at "
            f"{tid_text(last_tid)}",
            path=path,
            subject=subject,
            details=details,
            advice="Writes from the window may be incomplete on disk even when the structure is intact: "
            "compare recent content with what users expect, or restore from a backup taken after the window.",
        )
