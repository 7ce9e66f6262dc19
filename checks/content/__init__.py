"""Checker `content`: files at risk validated by their format (archives, images, binaries, configs, ...)."""

from __future__ import annotations

import stat
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Tuple

from fsaudit.checker import Checker, Option, Skip
from fsaudit.outcomes import is_permission_denied, not_checked_for_permission
from fsaudit.target import NotRegularFile, Target
from fsaudit_checks.content.bytecode import source_of
from fsaudit_checks.content.formats import (
    MAGIC_BYTES,
    Cut,
    Format,
    Job,
    Limits,
    Problem,
    Unsupported,
    recognise,
)
from fsaudit_checks.content.worker import WorkerPool

# Where a customer's data usually lives: searched for files modified in the window when no paths are given.
DEFAULT_PATHS = ("/home", "/srv", "/var/www", "/opt", "/etc", "/usr/local", "/root")
# __pycache__ is searched: its bytecode is compared with the source beside it.
PRUNE = {b".git", b".hg", b".svn"}
PARSE_TIMEOUT = 60


class ContentChecker(Checker):
    """Files at risk checked by their format: archives, images, ELF, configs, source, bytecode, SQLite."""

    name = "content"
    covers = "files checked by their format"
    category = "applications"
    self_check = True
    options = (
        Option(
            "paths",
            "Check every file under these directories (default: files changed in the window)",
            multiple=True,
        ),
        Option("max_size", "Larger files are counted, not checked (bytes)", kind=int, default=2 << 30),
        Option(
            "max_depth", "Directories deeper below a path are not searched (reported)", kind=int, default=256
        ),
        Option(
            "max_ratio",
            "Decompress at most this many times a file's compressed size (at least 64 MiB)",
            kind=int,
            default=1000,
        ),
        Option("max_memory_mb", "Memory a format parser may use for one file (MiB)", kind=int, default=768),
        Option("timeout", "Seconds the check of one file may take", kind=int, default=PARSE_TIMEOUT),
    )
    codes = {
        "checksum-mismatch": "a checksum inside the file (gzip, bzip2, xz, zstd or zip CRC; PNG chunk CRC)"
        " is wrong",
        "structure-damaged": "the file's structure is broken: cut short, bad header or signature, ELF tables"
        " out of bounds, SQLite integrity_check errors, bytecode that cannot be loaded",
        "bytecode-mismatch": "a Python source differs from what its cached bytecode was compiled from, while"
        " the bytecode's header still records the source's size and mtime: the source changed silently",
        "zero-blocks": "a text or source file holds zero-filled 4 KiB blocks or NUL runs"
        " (a lost extent update)",
        "parse-error": "a JSON, XML, TOML, YAML or Python file does not parse",
        "unreadable": "a file could not be read",
        "partly-checked": "a bound stopped the check of a file before its end (decompressed size or ratio,"
        " memory, time) or its parser crashed: the rest of it was not checked",
        "not-checked": "files or directories left out by a bound (max_size, max_depth): how many",
    }

    def applies(self, target: Target) -> bool:
        if not self.settings["paths"] and self.context.window is None:
            raise Skip("give the paths to check (--set content.paths=DIR) or a suspect window (--window)")
        return True

    def _candidates(self, target: Target) -> Iterator[Tuple[bytes, int]]:
        window = None if self.settings["paths"] else self.context.window
        tops = self.settings["paths"] or DEFAULT_PATHS
        limit = self.settings["max_size"]
        max_depth = self.settings["max_depth"]

        def onerror(path: bytes, error: OSError) -> None:
            self.count("directories_unreadable")
            self.incomplete("some directories could not be read")

        for top in tops:
            if not target.exists(top, follow=True):
                continue
            start = target.inner_path(target.resolve(top))
            base_depth = start.rstrip(b"/").count(b"/")

            def prune(path: bytes, entry, base_depth: int = base_depth) -> bool:
                if entry.name in PRUNE:
                    return True
                if path.count(b"/") - base_depth > max_depth:
                    self.count("directories_too_deep")
                    self.deepest = self.deepest or path
                    return True
                return False

            for directory, entries in target.walk(
                start, onerror=onerror, prune=prune, max_depth=max_depth + 1
            ):
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    if window and not (window.contains(st.st_mtime) or window.contains(st.st_ctime)):
                        continue
                    if st.st_size > limit:
                        self.count("files_too_large")
                        continue
                    yield (b"" if directory == b"/" else directory) + b"/" + entry.name, st.st_size

    def run(self, target: Target) -> Iterator:
        self.deepest: Optional[bytes] = None
        workers = self.context.jobs  # at least 1 (fsaudit.settings)
        limits = Limits(max_ratio=max(1, self.settings["max_ratio"]))
        pool = WorkerPool(workers, self.settings["max_memory_mb"] << 20, self.settings["timeout"], limits)
        pending: deque = deque()
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fsaudit-content") as executor:
                for path, _size in self._candidates(target):
                    pending.append(executor.submit(self._validate, target, pool, path))
                    if len(pending) >= workers * 4:
                        yield from self._report(*pending.popleft().result())
                while pending:
                    yield from self._report(*pending.popleft().result())
        finally:
            pool.close()
        yield from self._left_out()

    def _validate(
        self, target: Target, pool: WorkerPool, path: bytes
    ) -> Tuple[bytes, Optional[Format], object]:
        """(path, format, outcome): outcome is None (sound), a Problem, a Cut, "unknown",
        "unsupported: ..." or an OSError."""
        source = None
        fmt = None
        try:
            with target.open(path, follow=False) as handle:
                head = handle.read(MAGIC_BYTES)
                fmt, magic_ok = recognise(path, head)
                if fmt is None:
                    return path, None, "unknown"
                if not magic_ok:
                    return (
                        path,
                        fmt,
                        Problem("structure-damaged", f"does not start with the {fmt.name} signature"),
                    )
                job = Job(path)
                if fmt.name == "pyc":
                    job.source_path = source_of(path)
                    source = self._open_source(target, job.source_path)
                    if source is None:
                        job.source_path = None
                    else:
                        self.count("bytecode_compared_with_source")
                return path, fmt, pool.check(fmt, job, handle, source)
        except Unsupported as reason:
            return path, None, f"unsupported: {reason}"
        except Cut as reason:
            return path, fmt, reason
        except NotRegularFile:
            return path, None, "unknown"
        except OSError as error:
            return path, None, error
        finally:
            if source is not None:
                source.close()

    def _open_source(self, target: Target, source_path: Optional[bytes]):
        if source_path is None:
            return None
        try:
            return target.open(source_path, follow=True)
        except OSError:
            return None

    def _report(self, path: bytes, fmt: Optional[Format], result: object) -> Iterator:
        if result == "unknown":
            self.count("files_unknown_format")
            return
        if isinstance(result, str):
            self.count("files_unsupported")
            return
        if is_permission_denied(result):
            not_checked_for_permission(self)
            return
        if isinstance(result, OSError):
            self.count("files_unreadable")
            yield self.finding(
                "unreadable",
                "warning",
                f"could not be read: {result.strerror or result}",
                path=path,
                advice="check the disk; restore the file from backup",
            )
            return
        if isinstance(result, Cut):
            self.count("files_partly_checked")
            yield self.finding(
                "partly-checked",
                "warning",
                f"{fmt.name if fmt else 'file'}: not checked to its end: {result}",
                path=path,
                details={"format": fmt.name if fmt else None},
                advice="check this file by hand (or raise the content checker's bounds) if it matters",
            )
            return
        self.count("files_checked")
        self.count(f"format_{fmt.name}")
        if result is None:
            return
        if result.code == "bytecode-mismatch":
            yield self.finding(
                result.code,
                "critical",
                result.message,
                path=result.path or path,
                details={"format": fmt.name, "bytecode": path},
                advice="restore this source file from its package, repository or backup, then delete its"
                " cached bytecode (Python rebuilds it)",
            )
            return
        severity = "warning" if result.code == "parse-error" else "critical"
        yield self.finding(
            result.code,
            severity,
            f"{fmt.name}: {result.message}",
            path=path,
            details={"format": fmt.name},
            advice=fmt.advice,
        )

    def _left_out(self) -> Iterator:
        """One finding for what the bounds left out of the search, so "ok" never covers it."""
        deep = self.stats.get("directories_too_deep", 0)
        large = self.stats.get("files_too_large", 0)
        parts = []
        if deep:
            parts.append(
                f"{deep:,} directories deeper than {self.settings['max_depth']} levels were not searched"
            )
        if large:
            parts.append(f"{large:,} files larger than {self.settings['max_size']:,} bytes were not checked")
        if not parts:
            return
        yield self.finding(
            "not-checked",
            "warning",
            "; ".join(parts),
            path=self.deepest,
            details={"directories_too_deep": deep, "files_too_large": large},
            advice="raise content.max_depth or content.max_size to check them, or check them by hand",
        )
