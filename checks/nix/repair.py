"""Repairing what the nix check found: `nix-store --repair-path` on the running system; in an image,
nothing (the Nix store keeps no second copy of a path), only what to do.

The report only says which paths were found damaged; the store path each lies in must be a valid
path of the store database under the repaired root, and its NAR serialisation as it is now says
whether it is still damaged. `nix-store --repair-path` fetches a damaged path again from a binary
cache (or rebuilds it) and replaces it atomically; all store paths go to one invocation, and what is
still damaged afterwards is repaired once more.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from fsaudit.model import Finding, Severity
from fsaudit.outcomes import local_change
from fsaudit.repair import Outcome, Repairer, Section, Step, Stop, finding_path
from fsaudit.repair.commands import environment, tail, transact
from fsaudit.repair.packages import NOT_CHECKED, permission_denied
from fsaudit_checks.manifest.entries import iso
from fsaudit_checks.nix import nar, store
from fsaudit_checks.nix.store import ValidPath

# What the operator is told before each `nix-store --repair-path` run, and before the second.
REPAIRING = (
    "repairing {count} store path(s): {command}",
    "repairing {count} store path(s), once more: {command}",
)
FILE_CODES = frozenset({"missing", "content-differs", "wrong-type", "unreadable", "modified-after-install"})


@dataclass
class StoreStep:
    valid: ValidPath
    findings: List[Finding]


def store_path(path: bytes) -> bytes | None:
    """The store path (`/nix/store/HASH-NAME`) a path lies in, or None when it lies in none."""
    parts = path.split(b"/")
    if len(parts) < 4 or parts[:3] != [b"", b"nix", b"store"] or not store.STORE_NAME.match(parts[3]):
        return None
    return b"/".join(parts[:4])


class NixRepairer(Repairer):
    """Repairs store paths with `nix-store --repair-path` on the running system."""

    # -- planning --------------------------------------------------------------------------------

    def plan(self, findings: Sequence[Finding]) -> Section:
        section = Section(self.check)
        wanted: Dict[bytes, List[Finding]] = {}
        for finding in findings:
            why, path = self._store_path(finding)
            if why:
                section.cannot.append((finding, why))
            else:
                wanted.setdefault(path, []).append(finding)
        if not wanted:
            return section
        try:
            with store.open_database(self.target) as database:
                rows = {path: database.lookup(path) for path in wanted}
        except (OSError, sqlite3.Error) as error:
            why = f"the Nix store database at {self.request.root} cannot be read ({error})"
            section.cannot.extend((f, why) for fs in wanted.values() for f in fs)
            return section
        for path in sorted(wanted):
            named, row = wanted[path], rows[path]
            if not isinstance(row, ValidPath):
                why = (
                    f"the store database at {self.request.root} does not list {os.fsdecode(path)} as a valid "
                    "path: the report may be about another system or an older state of this one; audit again"
                )
                section.cannot.extend((f, why) for f in named)
                continue
            verdict, why = self._now(row)
            if verdict == "intact":
                section.intact.extend(named)
            elif verdict == "damaged" and self.request.live:
                shown = os.fsdecode(row.path)
                step = Step(
                    self.check, shown, named, [shown], "a binary cache, or a rebuild", StoreStep(row, named)
                )
                section.steps.append(step)
            elif verdict == "damaged":
                section.cannot.extend((f, self._in_an_image(row)) for f in named)
            elif verdict == "local-change":
                section.left_alone.extend((f, why) for f in named)
            else:
                section.cannot.extend((f, why) for f in named)
        if section.steps:
            section.actions = [
                f"$ {shlex.join(self.transaction(section.steps))}",
                "(nix fetches each path again from its binary cache, or rebuilds it, and checks it against "
                "its hash; what is still damaged afterwards is repaired once more)",
            ]
        return section

    def _store_path(self, finding: Finding) -> Tuple[str, bytes]:
        """(why not, '') or ('', the store path the finding lies in)."""
        if finding.code not in FILE_CODES:
            return finding.advice or "restore it from a backup", b""
        if permission_denied(finding):
            return NOT_CHECKED, b""
        path = finding_path(finding)
        inside = store_path(path) if path is not None else None
        if inside is None:
            return "the report gives no usable store path for it", b""
        return "", inside

    def _now(self, valid: ValidPath) -> Tuple[str, str]:
        """("intact" | "damaged" | "local-change" | "unchecked", why) for the store path now."""
        archive = nar.plan(self.target, valid.path)
        problems = archive.problems
        digest = None
        if not problems and (valid.nar_size is None or archive.size == valid.nar_size):
            digest, problems = nar.digest(self.target, archive)
        archive.release()
        if any(problem.kind == "permission" for problem in problems):
            return "unchecked", "cannot read it now (permission denied): run repair as root"
        if any(problem.kind == "limit" for problem in problems):
            return "unchecked", "too large to check now: " + problems[0].detail
        if not problems and digest is not None and digest == valid.digest:
            return "intact", ""
        registered = valid.registered
        window = self.request.window
        if (
            not problems
            and not self.request.include_modified
            and local_change(archive.latest_mtime, registered, window)
        ):
            return "local-change", (
                f"files in it were written on {iso(archive.latest_mtime)}, after it was registered on "
                f"{iso(registered)}: --include-modified repairs it anyway"
            )
        return "damaged", ""

    def _in_an_image(self, valid: ValidPath) -> str:
        path = os.fsdecode(valid.path)
        return (
            "the Nix store keeps no second copy of a path to restore it from, and repair runs nothing from "
            f"an image: inside the VM, run nix-store --repair-path {path} (it fetches the path again from "
            "the binary cache, or rebuilds it), or nixos-rebuild switch --repair; or copy the path from a "
            f"binary cache into the store (nix copy --from https://cache.nixos.org {path})"
        )

    # -- the running system ------------------------------------------------------------------------

    @staticmethod
    def transaction(steps: Sequence[Step]) -> List[str]:
        return ["nix-store", "--repair-path", "--", *[os.fsdecode(step.data.valid.path) for step in steps]]

    def apply(self, section: Section, say: Callable[[str], None], stop: Stop) -> Outcome:
        outcome = Outcome()
        if stop.requested or not self.request.live:
            outcome.left.extend(section.steps)
            return outcome
        pending, status, output, _ = transact(
            self.transaction, section.steps, self._still_to_do, environment(), say, stop, REPAIRING
        )
        for step in section.steps:
            if step in pending:
                said = f"nix-store exited with {status}: " if status else ""
                outcome.failed.append((step, f"it is still not as registered ({said}{tail(output)})"))
            else:
                outcome.done.append(step)
        return outcome

    def _still_to_do(self, step: Step) -> bool:
        return self._now(step.data.valid)[0] != "intact"

    def recheck_options(self, steps: Sequence[Step]) -> Dict[str, list]:
        return {"paths": sorted(os.fsdecode(step.data.valid.path) for step in steps), "unregistered": [False]}

    def still_damaged(self, finding: Finding, steps: Sequence[Step]) -> bool:
        if finding.severity is Severity.INFO or finding.code not in FILE_CODES:
            return False
        if finding.code == "modified-after-install" and not self.request.include_modified:
            return False
        path = finding_path(finding)
        inside = store_path(path) if path is not None else None
        return inside in {step.data.valid.path for step in steps}
