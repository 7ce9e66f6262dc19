"""Planning what the debian checker verifies: every path each package lists, in database order, with
what it is compared with, and the hash requests for the regular files among them: batches of a
package's files (`DigestBatch`), so that the audit process does nothing per file that matches.

Nothing here decides whether something is damaged: what the database itself says is wrong (a
damaged `.list`, a package without checksums) is handed on as a problem built by the verdicts, and
every file goes to the verdicts with its hash result.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from fsaudit.hashing import DigestBatch
from fsaudit.target import Target
from fsaudit_checks.debian import dpkg_db, placement
from fsaudit_checks.debian.classify import AptCache
from fsaudit_checks.debian.dpkg_db import Damage, Package
from fsaudit_checks.debian.placement import Diversion, PathFilter


@dataclass
class Owner:
    """One package being verified, with what the checker learns about it on the way."""

    package: Package
    has_md5sums: bool = False
    install_time: float | None = None
    # Its database files could not be read for permission: nothing of it was verified.
    not_checked: bool = False
    unverified: List[bytes] = field(default_factory=list)
    damaged: List[Tuple[bytes, bytes, dict]] = field(default_factory=list)


# Files of a package hashed as one request: few enough that a window of them keeps every reader busy
# on network storage, and that the last of them are shared out evenly (the engine alone, hashing the
# benchmark's cached 1 GB tree in batches of 128: 1.05 to 1.27 s, of 32: 0.97 to 1.17 s).
BATCH = 32


@dataclass(slots=True)
class Item:
    """One thing to verify, in database order. A "batch" item hashes files of its package (`request`,
    a DigestBatch; `entries`: the kinds, paths and expected digests of its files, three lists in the
    batch's order, their locations being the batch's paths); a "file" or "conffile" item is one that
    shares its file with an earlier one (same host path) and reuses that result, or one whose path
    could not be resolved (`error`)."""

    owner: Owner
    kind: str  # "batch", "file", "conffile", "other", "end", "problem"
    path: bytes = b""
    location: bytes = b""
    expected: str = ""
    host: bytes = b""
    parent: bool = False
    request: DigestBatch | None = None
    error: OSError | None = None
    problem: object = None
    entries: tuple = ()


class _Batch:
    """A package's files on their way into DigestBatches of BATCH files. Parallel lists, not a tuple
    per file: 25,000 tuples more for the garbage collector to walk cost the audit process 10 ms."""

    def __init__(self, owner: Owner):
        self.owner = owner
        self._start()

    def _start(self) -> None:
        self.kinds: List[str] = []
        self.paths: List[bytes] = []
        self.expected: List[str] = []
        self.locations: List[bytes] = []
        self.hosts: List[bytes] = []
        self.digests: List[str] = []

    def add(self, kind: str, path: bytes, location: bytes, host: bytes, expected: str) -> Optional[Item]:
        """A file into the batch; the batch's item when it is full."""
        self.kinds.append(kind)
        self.paths.append(path)
        self.expected.append(expected)
        self.locations.append(location)
        self.hosts.append(host)
        self.digests.append(expected.lower())
        return self.take() if len(self.hosts) >= BATCH else None

    def take(self) -> Optional[Item]:
        """The item of the files added since the last one, if any."""
        if not self.hosts:
            return None
        request = DigestBatch(self.locations, self.hosts, self.digests, "md5")
        item = Item(self.owner, "batch", request=request, entries=(self.kinds, self.paths, self.expected))
        self._start()
        return item


@dataclass
class Database:
    """What the whole dpkg database says beyond the packages: diversions and path filters."""

    diversions: Dict[bytes, Diversion]
    filter: PathFilter


class Planner:
    """Turns packages into items to verify, and the items that need a hash into hash requests.

    `judge` builds the problems the database shows on the way (see verdicts.Judge); `count` adds to
    the checker's counters.
    """

    def __init__(
        self,
        target: Target,
        database: Database,
        judge,
        count: Callable[[str, int], None],
        hashes_from_cache: bool,
        cache: AptCache,
    ):
        self.target = target
        self.database = database
        self.judge = judge
        self.count = count
        self.hashes_from_cache = hashes_from_cache
        self.cache = cache

    def requests(self, packages: List[Package], order: deque) -> Iterator[DigestBatch]:
        """The batches that hash every regular file of `packages`; every item goes to `order` as well,
        so results can be matched with their items in database order."""
        requested: Set[bytes] = set()
        for package in packages:
            for item in self.items(package, requested):
                order.append(item)
                if item.request is not None:
                    yield item.request

    def items(self, package: Package, requested: Set[bytes]) -> Iterator[Item]:
        """Everything to verify for one package, ending with an "end" item. A file goes into a batch
        unless an earlier one hashes its host path (in `requested`, which it joins): then it is an
        item of its own, after the batch that hashes it."""
        target = self.target
        judge = self.judge
        owner = Owner(package)
        if package.state not in dpkg_db.SETTLED_STATES and package.state != "unknown":
            yield Item(owner, "problem", problem=judge.unsettled(owner))
        list_path = dpkg_db.info_path(target, package, "list")
        if list_path is None:
            self.count("packages_without_list", 1)
            yield Item(owner, "problem", problem=judge.no_list(owner))
            yield Item(owner, "end")
            return
        try:
            owner.install_time = target.lstat(list_path).st_mtime
            listed, damage = dpkg_db.read_list(target, list_path)
        except PermissionError:
            yield from self._not_checked(owner)
            return
        except OSError as error:
            self.count("packages_without_list", 1)
            yield Item(owner, "problem", problem=judge.no_list(owner, error))
            yield Item(owner, "end")
            return
        for item in damage:
            yield Item(owner, "problem", problem=judge.database_damage(item, owner))
        try:
            sums, from_cache = yield from self._sums(owner)
        except PermissionError:
            yield from self._not_checked(owner)
            return
        owner.has_md5sums = sums is not None
        sums = sums or {}
        conffiles = {c.path: c for c in package.conffiles if not c.obsolete and c.md5 != "newconffile"}
        # Obsolete conffiles and ones dpkg has not configured yet have no hash to compare with.
        unchecked_conffiles = {c.path for c in package.conffiles} - set(conffiles)
        listed_set = set(listed)
        parents = {path.rsplit(b"/", 1)[0] or b"/" for path in listed}
        extra = [p for p in sums if p not in listed_set and p not in conffiles]
        unlisted = [p for p in extra if not self.database.filter.excluded(p)]
        self.count("excluded", len(extra) - len(unlisted))
        if unlisted and not from_cache:
            yield Item(owner, "problem", problem=judge.unlisted(owner, unlisted))
        batch = _Batch(owner)
        for path in listed + unlisted:
            # Once per packaged path (25,000 in the benchmark's audit): a file costs a few lookups
            # and appends here, nothing more until its batch comes back.
            expected = sums.get(path)
            conffile = conffiles.get(path) if conffiles else None
            if conffile is not None:
                extra = self._file(batch, requested, "conffile", path, conffile.md5)
            elif expected is not None:
                extra = self._file(batch, requested, "file", path, expected)
            elif path in unchecked_conffiles:
                continue
            else:
                location = placement.diverted_location(path, package.name, self.database.diversions)
                extra = (Item(owner, "other", path, location, parent=path in parents),)
            if extra:
                yield from extra
        for path, conffile in conffiles.items():
            if path not in listed_set:
                yield from self._file(batch, requested, "conffile", path, conffile.md5)
        last = batch.take()
        if last is not None:
            yield last
        yield Item(owner, "end")

    def _not_checked(self, owner: Owner) -> Iterator[Item]:
        """A package whose database files this user may not read: not verified, and no damage."""
        owner.not_checked = True
        self.count("packages_not_checked_permission", 1)
        yield Item(owner, "end")

    def _sums(self, owner: Owner):
        """(path -> md5 or None, whether it came from the apt cache); yields problem items on the way."""
        package = owner.package
        path = dpkg_db.info_path(self.target, package, "md5sums")
        if path is not None:
            try:
                sums, damage = dpkg_db.read_md5sums(self.target, path)
            except PermissionError:
                raise
            except OSError as error:
                damage, sums = [Damage(path, f"cannot read it: {error.strerror or error}")], None
            for item in damage:
                yield Item(owner, "problem", problem=self.judge.database_damage(item, owner))
            if sums is not None:
                return sums, False
        if self.hashes_from_cache:
            sums, reason = self._sums_from_cache(package)
            if sums is not None:
                self.count("packages_hashed_from_cache", 1)
                return sums, True
        else:
            reason = "set debian.hashes_from_cache=true to take them from a .deb in /var/cache/apt/archives"
        self.count("packages_without_md5sums", 1)
        yield Item(owner, "problem", problem=self.judge.no_md5sums(owner, reason))
        return None, False

    def _sums_from_cache(self, package: Package):
        from fsaudit_checks.debian import debfile  # reading .deb files: only when asked for

        deb = self.cache.deb(package)
        if deb is None:
            return None, "no .deb of this version in /var/cache/apt/archives"
        try:
            members = debfile.md5sums(self.target, deb)
        except (debfile.DebError, OSError) as error:
            return None, f"its .deb in the apt cache cannot be read: {error}"
        return {path: md5 for path, (kind, md5) in members.items() if kind == "file" and md5}, None

    def _file(
        self, batch: _Batch, requested: Set[bytes], kind: str, path: bytes, expected: str
    ) -> Sequence[Item]:
        """A packaged file into the batch; the items to yield now (a full batch, or an item of its own)."""
        owner = batch.owner
        diversions = self.database.diversions
        location = placement.diverted_location(path, owner.package.name, diversions) if diversions else path
        try:
            host = self.target.resolve(location, follow=False)
        except OSError as error:
            return (Item(owner, kind, path, location, expected=expected, error=error),)
        if host in requested:
            # Listed twice (by two packages, or through a symlinked directory): read once. The
            # batch that reads it may be this one: it goes first.
            self.count("shared_files", 1)
            shared = Item(owner, kind, path, location, expected=expected, host=host)
            first = batch.take()
            return (shared,) if first is None else (first, shared)
        requested.add(host)
        full = batch.add(kind, path, location, host, expected)
        return () if full is None else (full,)
