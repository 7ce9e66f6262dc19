"""Checker `debian`: verify every file installed by dpkg against the package database.

`plan` lists what to verify in database order, the shared engine hashes the regular files, and
`verdicts` judges each result; this module reads the database, runs them, and turns their problems
into Findings.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat
from typing import Dict, Iterator, List, Tuple

from fsaudit import outcomes
from fsaudit.checker import Checker, Option, Skip
from fsaudit.hashing import BatchResult, hash_files, start_workers
from fsaudit.model import Finding
from fsaudit.target import Target
from fsaudit_checks.debian import dpkg_db, placement
from fsaudit_checks.debian.classify import AptCache
from fsaudit_checks.debian.dpkg_db import Package
from fsaudit_checks.debian.plan import Database, Item, Planner
from fsaudit_checks.debian.verdicts import Judge, Problem, result_of

_COUNTERS = (
    "packages",
    "packages_verified",
    "files_verified",
    "conffiles_verified",
    "files_unverified",
    "unreadable",
    "not_checked_permission",
    "excluded",
    "bytes_hashed",
    "files_hashed",
    "shared_files",
    "directories_verified",
    "symlinks_verified",
    "journal_entries",
)


class DebianChecker(Checker):
    """Verify every file installed by dpkg (md5sums, conffiles) and the dpkg database itself."""

    name = "debian"
    covers = "system files (Debian packages)"
    category = "os-files"
    repairer = "fsaudit_checks.debian.repair:DebianRepairer"
    options = (
        Option(
            "hashes_from_cache",
            "take the hashes of packages without md5sums from their .deb in /var/cache/apt/archives",
            kind=bool,
            default=False,
        ),
        Option(
            "classify",
            "compare damaged files with the .deb files in the apt cache to classify the damage",
            kind=bool,
            default=True,
        ),
        Option("packages", "verify only these packages (names)", multiple=True),
    )
    codes = {
        "missing": "a file installed by a package is gone",
        "content-differs": "a file's content differs from the packaged file although its mtime was not "
        "changed after the package's installation, or was changed in the suspect window (details."
        "classification says how: truncated, zero-filled, older-version, random, empty, unknown)",
        "modified-after-install": "a file's content differs from the packaged file and its mtime is after "
        "the package's installation, outside the suspect window, or a packaged path is gone and its "
        "directory changed after the installation by no package installation: a change made on the system",
        "wrong-type": "a directory, FIFO, device, socket or symlink stands where the package installed "
        "a regular file (or a non-directory where it installed a directory)",
        "unreadable": "a packaged file could not be read (an I/O error): it was not verified",
        **outcomes.ANOMALY_CODES,
        "conffile-changed": "a configuration file differs from the packaged one (the administrator may "
        "have edited it; details say whether it changed after installation)",
        "conffile-missing": "a configuration file of a package is gone",
        "directory-missing": "a directory the package installed is gone",
        "symlink-missing": "a listed path that is no regular file (a symlink or an empty directory) is gone",
        "no-md5sums": "the package has no md5sums file: its files' content was not verified",
        "md5sums-incomplete": "regular files of the package have no checksum (a truncated md5sums file): "
        "they were not verified",
        "database-damaged": "a dpkg database file (status, updates/, info/*.list, info/*.md5sums, "
        "diversions) is malformed or inconsistent; everything readable was still verified",
        "package-unsettled": "dpkg did not finish installing or configuring the package",
    }

    def applies(self, target: Target) -> bool:
        if not target.exists(dpkg_db.STATUS, follow=True):
            raise Skip("no dpkg database (/var/lib/dpkg/status)")
        return True

    def run(self, target: Target) -> Iterator[Finding]:
        yield from _Audit(self, target).run()


class _Audit:
    """One run of the checker over one target: read the database, plan, hash, judge."""

    def __init__(self, checker: DebianChecker, target: Target):
        self.checker = checker
        self.target = target
        self.cache = AptCache(target)
        # Host path -> the result of the batch that read it: a file listed twice is read once.
        self.hashed: Dict[bytes, BatchResult] = {}
        # The checker's own counter, not a method around it (the planner and the judge count with it).
        self.count = checker.count

    def finding(self, problem: Problem) -> Finding:
        package = problem.owner.package if problem.owner else None
        details = dict(package.details()) if package else {}
        details.update(problem.details)
        return self.checker.finding(
            problem.code,
            problem.severity,
            problem.message,
            path=problem.path,
            subject=package.subject if package else None,
            details=details,
            advice=problem.advice or (self.judge.advice(package) if package else ""),
        )

    def run(self) -> Iterator[Finding]:
        target = self.target
        context = self.checker.context
        self.judge = Judge(
            target,
            placement.PathFilter([]),
            self.cache,
            self.count,
            context.verified,
            window=context.window,
            classify=self.checker.settings["classify"],
        )
        start_workers(context)  # the worker processes boot while the database is read
        try:
            packages, damage, applied = dpkg_db.read_status(target)
        except OSError as error:
            yield self.finding(self.judge.status_unreadable(error))
            self.checker.incomplete("the dpkg status file could not be read: no package was verified")
            return
        # Every counter is shown, zeros too: "0 unreadable" is a statement, a missing key is not.
        for key in _COUNTERS:
            self.count(key, 0)
        self.count("journal_entries", applied)
        for item in damage:
            yield self.finding(self.judge.database_damage(item))
        diversions, damage = placement.read_diversions(target)
        for item in damage:
            yield self.finding(self.judge.database_damage(item))
        database = Database(diversions, placement.read_path_filter(target))
        self.judge.filter = database.filter
        self.planner = Planner(
            target, database, self.judge, self.count, self.checker.settings["hashes_from_cache"], self.cache
        )
        self.count("packages", len(packages))
        wanted = set(self.checker.settings["packages"])
        installed = sorted(
            (
                p
                for p in packages.values()
                if p.state in dpkg_db.UNPACKED_STATES and (not wanted or p.name in wanted)
            ),
            key=lambda p: (p.name, p.architecture),
        )
        orphans = [p for p in self._orphan_lists(packages) if not wanted or p.name in wanted]
        for package in orphans:
            yield self.finding(self.judge.orphan(package))
        everything = installed + orphans
        context.progress.start("debian: verifying packages", total=len(everything))
        try:
            yield from self._verify(everything)
        finally:
            context.progress.stop()
        self._summarise()

    def _orphan_lists(self, packages: Dict[Tuple[str, str], Package]) -> List[Package]:
        known = set()
        for package in packages.values():
            known.add(package.name)
            known.add(f"{package.name}:{package.architecture}")
        orphans = []
        for base in sorted(dpkg_db.list_owners(self.target)):
            if base in known:
                continue
            name, _, arch = base.partition(":")
            orphans.append(Package(name=name, architecture=arch, status="unknown ok unknown"))
        return orphans

    def _summarise(self) -> None:
        stats = self.checker.stats
        not_verified = stats.get("files_unverified", 0) + stats.get("unreadable", 0)
        if not_verified:
            self.checker.incomplete(f"{not_verified} packaged files could not be verified")
        if stats.get("packages_without_list", 0):
            self.checker.incomplete(
                f"{stats['packages_without_list']} packages have no file list: not verified"
            )
        denied = stats.get("not_checked_permission", 0)
        if denied:
            self.checker.incomplete(
                f"{denied:,} files not checked: permission denied (run as root to check them)"
            )
        denied = stats.get("packages_not_checked_permission", 0)
        if denied:
            self.checker.incomplete(
                f"{denied:,} packages not checked: permission denied on their database files "
                "(run as root to check them)"
            )

    def _verify(self, packages: List[Package]) -> Iterator[Finding]:
        order: deque = deque()
        requests = self.planner.requests(packages, order)
        for result in hash_files(self.target, requests, self.checker.context, self.checker.stats):
            while True:
                item = order.popleft()
                if item.request is result.request:
                    self._keep(result)
                    yield from self._judged(self.judge.batch(item, result))
                    break
                yield from self._process(item)
        while order:
            yield from self._process(order.popleft())
        yield from self._judged(self.judge.finish())

    def _keep(self, result: BatchResult) -> None:
        """The batch that read each file, for later items that share one of them."""
        self.hashed.update(zip(result.request.hosts, repeat(result)))

    def _process(self, item: Item) -> Iterator[Finding]:
        if item.kind == "problem":
            yield self.finding(item.problem)
        elif item.kind in ("file", "conffile"):
            yield from self._judged(self.judge.file(item, result_of(item, self.hashed.get(item.host))))
        elif item.kind == "other":
            yield from self._judged(self.judge.other(item))
        elif item.kind == "end":
            self.checker.context.progress.advance(1)
            yield from self._judged(self.judge.end(item.owner))

    def _judged(self, problems: Iterator[Problem]) -> Iterator[Finding]:
        for problem in problems:
            yield self.finding(problem)
