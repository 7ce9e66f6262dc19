"""Checker `content`: files at risk validated by their format (archives, images, binaries, configs, ...)."""

from __future__ import annotations

import stat
from typing import Iterator, Optional, Tuple

from fsaudit.checker import Checker, Option, Skip
from fsaudit.hashing import read_files
from fsaudit.target import NotRegularFile, Target
from fsaudit_checks.content.formats import MAGIC_BYTES, Format, Problem, Unsupported, recognise

# Where a customer's data usually lives: searched for files modified in the window when no paths are given.
DEFAULT_PATHS = ("/home", "/srv", "/var/www", "/opt", "/etc", "/usr/local", "/root")
PRUNE = {b".git", b".hg", b".svn", b"__pycache__"}


class ContentChecker(Checker):
    """Files at risk checked by their format: archives, images, ELF, configs, source, bytecode, SQLite."""

    name = "content"
    self_check = True
    options = (
        Option(
            "paths",
            "Check every file under these directories (default: files changed in the window)",
            multiple=True,
        ),
        Option("max_size", "Larger files are counted, not checked (bytes)", kind=int, default=2 << 30),
    )
    codes = {
        "checksum-mismatch": "a checksum inside the file (gzip, bzip2, xz, zstd or zip CRC; PNG chunk CRC)"
        " is wrong",
        "structure-damaged": "the file's structure is broken: cut short, bad header or signature, ELF tables"
        " out of bounds, SQLite integrity_check errors, bytecode that cannot be loaded",
        "zero-blocks": "a text or source file holds zero-filled 4 KiB blocks or NUL runs"
        " (a lost extent update)",
        "parse-error": "a JSON, XML, TOML, YAML or Python file does not parse",
        "unreadable": "a file could not be read",
    }

    def applies(self, target: Target) -> bool:
        if not self.settings["paths"] and self.context.window is None:
            raise Skip("give the paths to check (--set content.paths=DIR) or a suspect window (--window)")
        return True

    def _candidates(self, target: Target) -> Iterator[Tuple[bytes, int]]:
        window = None if self.settings["paths"] else self.context.window
        tops = self.settings["paths"] or DEFAULT_PATHS
        limit = self.settings["max_size"]

        def onerror(path: bytes, error: OSError) -> None:
            self.count("directories_unreadable")
            self.incomplete("some directories could not be read")

        for top in tops:
            if not target.exists(top, follow=True):
                continue
            for directory, entries in target.walk(top, onerror=onerror, prune=lambda p, e: e.name in PRUNE):
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
        paths = (path for path, _size in self._candidates(target))
        for outcome in read_files(paths, lambda path: self._validate(target, path), self.context):
            yield from self._report(*outcome)

    def _validate(self, target: Target, path: bytes) -> Tuple[bytes, Optional[Format], object]:
        """(path, format, outcome): outcome is None (sound), a Problem, "unknown", "unsupported: ..."
        or an OSError."""
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
                handle.seek(0)
                return path, fmt, fmt.check(handle, path)
        except Unsupported as reason:
            return path, None, f"unsupported: {reason}"
        except NotRegularFile:
            return path, None, "unknown"
        except OSError as error:
            return path, None, error

    def _report(self, path: bytes, fmt: Optional[Format], result: object) -> Iterator:
        if result == "unknown":
            self.count("files_unknown_format")
            return
        if isinstance(result, str):
            self.count("files_unsupported")
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
        self.count("files_checked")
        self.count(f"format_{fmt.name}")
        if result is None:
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
