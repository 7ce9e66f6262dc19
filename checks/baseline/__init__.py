"""Checker `baseline`: every file against a baseline recorded earlier with `fsaudit baseline create`."""

from __future__ import annotations

import stat
from typing import Iterator

from fsaudit.checker import Checker, Option, Skip
from fsaudit.hashing import HashRequest, HashResult, hash_files, start_workers
from fsaudit.outcomes import (
    ANOMALY_CODES,
    CONTENT_DIFFERS,
    OK,
    PERMISSION_DENIED,
    is_permission_denied,
    not_checked_for_permission,
    outcome,
    unverified_finding,
)
from fsaudit.target import Target
from fsaudit_checks.baseline.format import BaselineDamaged, Entry, entry_kind, read_baseline

RESTORE = "restore this file from backup (it changed without any write that the filesystem recorded)"


class BaselineChecker(Checker):
    """Files against a recorded baseline: content that changed while size and mtime did not is damage."""

    name = "baseline"
    covers = "files compared with the baseline"
    category = "applications"
    self_check = True
    options = (
        Option(
            "file",
            "The baseline file made by `fsaudit baseline create` (on this machine)",
            flag="--baseline",
        ),
    )
    codes = {
        "silent-change": "content or size changed while the modification time stayed the same: silent damage",
        "changed": "content changed along with a newer modification time: an ordinary update",
        "missing": "a file, directory or symlink in the baseline is gone",
        "wrong-type": "the entry is of another type than recorded (a directory where a file was, ...)",
        "metadata-changed": "mode, owner or group differ from the baseline",
        "link-changed": "a symlink points elsewhere than recorded",
        "unreadable": "a file could not be read",
        **ANOMALY_CODES,
        "baseline-damaged": "the baseline file itself is damaged or cut short: what follows was not compared",
    }

    def applies(self, target: Target) -> bool:
        if not self.settings["file"]:
            raise Skip("no baseline given: record one with `fsaudit baseline create PATH... --output FILE`")
        return True

    def run(self, target: Target) -> Iterator:
        path = self.settings["file"]
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the with block below
        except OSError as error:
            raise Skip(f"cannot read the baseline {path}: {error.strerror}") from None
        with handle:
            try:
                header, entries = read_baseline(handle)
            except BaselineDamaged as error:
                yield self._damaged(path, str(error))
                return
            self.stats["baseline_created"] = header.get("created", "")
            start_workers(self.context)  # the worker processes start while the baseline is read
            damaged = []
            yield from self._compare(target, self._checked(target, entries, damaged))
            for problem in damaged:
                yield self._damaged(path, problem)

    def _damaged(self, path: str, problem: str):
        self.incomplete("the baseline file is damaged")
        return self.finding(
            "baseline-damaged",
            "warning",
            problem,
            subject=path,
            advice="record a new baseline once the system is known to be good",
        )

    def _checked(self, target: Target, entries: Iterator[Entry], damaged: list) -> Iterator[HashRequest]:
        """Hash requests for recorded files; other entries are compared here and findings queued."""
        try:
            for entry in entries:
                self.count("entries")
                if entry.kind == "file":
                    yield HashRequest(entry.path, "sha256", expected_size=entry.size, key=entry, follow=False)
                else:
                    self._pending.extend(self._other(target, entry))
        except BaselineDamaged as error:
            damaged.append(str(error))

    def _compare(self, target: Target, requests: Iterator[HashRequest]) -> Iterator:
        # Findings about directories and symlinks, met while feeding file requests to the hash engine.
        self._pending: list = []
        for result in hash_files(target, requests, self.context, self.stats):
            yield from self._pending
            self._pending.clear()
            yield from self._file(target, result)
        yield from self._pending

    def _other(self, target: Target, entry: Entry) -> list:
        try:
            st = target.lstat(entry.path)
        except FileNotFoundError:
            return [
                self.finding(
                    "missing",
                    "critical",
                    f"recorded {_word(entry.kind)} is gone",
                    path=entry.path,
                    advice=RESTORE,
                )
            ]
        except OSError as error:
            if is_permission_denied(error):
                not_checked_for_permission(self)
                return []
            return [
                self.finding(
                    "unreadable",
                    "warning",
                    f"cannot be examined: {error.strerror}",
                    path=entry.path,
                    advice="check the disk and the permissions",
                )
            ]
        findings = []
        kind = entry_kind(st.st_mode)
        if kind != entry.kind:
            return [
                self.finding(
                    "wrong-type",
                    "critical",
                    f"a {_word(kind)} stands where a {_word(entry.kind)} was",
                    path=entry.path,
                    advice=RESTORE,
                )
            ]
        if kind == "link":
            try:
                link = target.readlink(entry.path)
            except OSError:
                link = None
            if link != entry.link:
                findings.append(
                    self.finding(
                        "link-changed",
                        "warning",
                        "symlink points elsewhere than recorded",
                        path=entry.path,
                        details={"recorded": entry.link, "now": link},
                        advice="if nobody changed it, restore the link from backup",
                    )
                )
        findings.extend(self._metadata(entry, st))
        self.count("entries_verified")
        return findings

    def _metadata(self, entry: Entry, st) -> list:
        changes = {}
        if stat.S_IMODE(st.st_mode) != stat.S_IMODE(entry.mode):
            changes["mode"] = (oct(stat.S_IMODE(entry.mode)), oct(stat.S_IMODE(st.st_mode)))
        if st.st_uid != entry.uid:
            changes["uid"] = (entry.uid, st.st_uid)
        if st.st_gid != entry.gid:
            changes["gid"] = (entry.gid, st.st_gid)
        if not changes:
            return []
        return [
            self.finding(
                "metadata-changed",
                "warning",
                f"{', '.join(changes)} changed since the baseline",
                path=entry.path,
                details={k: {"recorded": a, "now": b} for k, (a, b) in changes.items()},
                advice="if nobody changed them, restore the recorded permissions and owner",
            )
        ]

    def _file(self, target: Target, result: HashResult) -> Iterator:
        entry: Entry = result.request.key
        verdict = outcome(result, entry.sha256)
        if verdict == PERMISSION_DENIED:
            not_checked_for_permission(self)
            return
        if verdict != OK and verdict != CONTENT_DIFFERS:
            yield unverified_finding(self, verdict, result, entry.path, RESTORE, "recorded file")
            return
        self.count("files_verified")
        self.context.verified.add(entry.path)
        same_content = not result.size_differs and result.digest == entry.sha256
        same_mtime = result.st.st_mtime_ns == entry.mtime_ns
        details = {
            "recorded_size": entry.size,
            "size": result.size,
            "recorded_sha256": entry.sha256,
            "sha256": result.digest,
        }
        if not same_content and same_mtime:
            yield self.finding(
                "silent-change",
                "critical",
                "content changed although the size and modification time say it did not",
                path=entry.path,
                details=details,
                advice=RESTORE,
            )
        elif not same_content:
            self.count("files_changed")
            yield self.finding(
                "changed",
                "info",
                "changed since the baseline, with a newer modification time",
                path=entry.path,
                details=details,
            )
        yield from self._metadata(entry, result.st)


def _word(kind: str) -> str:
    return {"file": "file", "dir": "directory", "link": "symlink"}.get(kind, "special file")
