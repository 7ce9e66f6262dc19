"""Reinstalling damaged packages on the running system: one apt transaction, then what did not finish.

Reinstalling one package at a time ran a package's maintainer scripts while a library they need
(libc6) was still damaged, and they crashed. In one transaction dpkg first unpacks every package,
restoring all the damaged files, then configures them in dependency order. A package that still did
not end up installed as packaged is configured, or reinstalled, once more when the rest is whole.
"""

from __future__ import annotations

import re
import shlex
from typing import Callable, Dict, List, Sequence, Tuple

from fsaudit import outcomes
from fsaudit.hashing import HashRequest, hash_one
from fsaudit.repair import Outcome, Section, Step, Stop
from fsaudit.repair.commands import QUERY_TIMEOUT, environment, run, tail
from fsaudit.target import Target
from fsaudit_checks.debian import debfile, dpkg_db
from fsaudit_checks.debian.repair import DebStep, label, spec

_NOT_FOUND = re.compile(r"^E: (?:Version '[^']*' for '([^']+)' was not found|Unable to locate package (\S+))")
_CHANGE = re.compile(r"^(Inst|Remv|Purg) (\S+)")


def reinstall(repairer, section: Section, say: Callable[[str], None], stop: Stop) -> Outcome:
    outcome = Outcome()
    if stop.requested:
        outcome.left.extend(section.steps)
        return outcome
    env = environment(DEBIAN_FRONTEND="noninteractive")
    specs = {id(step): spec(step.data.package) for step in section.steps}
    steps, refused = _simulate(repairer, section.steps, specs, env)
    outcome.failed.extend(refused)
    if not steps:
        return outcome
    command = repairer.transaction([specs[id(step)] for step in steps])
    say(f"reinstalling {len(steps)} package(s) in one transaction: {shlex.join(command)}")
    status, output = run(command, env)
    unfinished = _unfinished(steps)
    if unfinished and not stop.requested:
        status, output = _once_more(
            repairer, [s for s in steps if id(s) in unfinished], unfinished, specs, env, say
        )
        unfinished = _unfinished(steps)
    for step in steps:
        if id(step) in unfinished:
            said = f"exited with {status}: " if status else ""
            detail = f" ({said}{tail(output)})" if output.strip() else ""
            outcome.failed.append((step, unfinished[id(step)] + detail))
        else:
            outcome.done.append(step)
    return outcome


def _simulate(repairer, steps: Sequence[Step], specs: Dict[int, str], env) -> Tuple[List[Step], list]:
    """The steps apt can do without changing anything else, and the refused ones with why."""
    steps = list(steps)
    refused = []
    for _ in range(len(steps) + 1):
        if not steps:
            break
        command = repairer.transaction([specs[id(step)] for step in steps], simulate=True)
        status, output = run(command, env, timeout=QUERY_TIMEOUT)
        names = {step.data.package.name for step in steps}
        # Not found, or found installed but not downloadable ("Reinstallation of x is not possible"):
        # either way apt would not reinstall it.
        missing = _not_found(output) if status != 0 else names - _installs(output)
        if missing:
            for step in [s for s in steps if s.data.package.name in missing]:
                found = _cached_deb(repairer, step.data)
                if found is not None and specs[id(step)] != found:
                    specs[id(step)] = found
                    continue
                steps.remove(step)
                refused.append((step, _unavailable(step)))
            continue
        if status != 0:
            return [], refused + [(step, f"apt-get cannot plan it: {tail(output)}") for step in steps]
        others = _side_effects(output, {step.data.package.name for step in steps})
        if others:
            why = f"not run: apt would also change other packages ({', '.join(others[:10])})"
            return [], refused + [(step, why) for step in steps]
        return steps, refused
    return steps, refused


def _not_found(output: str) -> set:
    names = set()
    for line in output.splitlines():
        match = _NOT_FOUND.match(line)
        if match:
            names.add((match.group(1) or match.group(2)).split(":", 1)[0])
    return names


def _installs(simulation: str) -> set:
    """The packages an `apt-get -s` run would (re)install."""
    matches = (_CHANGE.match(line) for line in simulation.splitlines())
    return {m.group(2).split(":", 1)[0] for m in matches if m and m.group(1) == "Inst"}


def _side_effects(simulation: str, names: set) -> List[str]:
    """What an `apt-get -s` run would do besides reinstalling `names` (`Inst x`, `Remv y`)."""
    others = []
    for line in simulation.splitlines():
        match = _CHANGE.match(line)
        if match and match.group(2).split(":", 1)[0] not in names:
            others.append(f"{match.group(1)} {match.group(2)}")
    return others


def _unavailable(step: Step) -> str:
    package = step.data.package
    return (
        f"apt cannot get {label(package)} from the configured repositories: download that exact version "
        f"(snapshot.debian.org) into a directory and run again with --archives DIR"
    )


def _cached_deb(repairer, step: DebStep) -> str | None:
    """A .deb of exactly the installed version in apt's cache or --archives, whose files all have
    the MD5 the database records (so it is that package, not a damaged or other one)."""
    package = step.package
    name = debfile.cache_name(package.name, package.version, package.architecture)
    places = [(Target("/"), debfile.ARCHIVES + b"/" + name)]
    places += [(Target(directory), b"/" + name) for directory in repairer.request.archives]
    sums = _database_sums(package)
    for source, path in places:
        try:
            members = debfile.md5sums(source, path)
        except (debfile.DebError, OSError):
            continue
        packaged = {p: md5 for p, (kind, md5) in members.items() if kind == "file"}
        if sums and all(packaged.get(p) == md5 for p, md5 in sums.items()):
            return source.host_path(path).decode("utf-8", "surrogateescape")
    return None


def _database_sums(package) -> Dict[bytes, str]:
    target = Target("/")
    path = dpkg_db.info_path(target, package, "md5sums")
    if path is None:
        return {}
    try:
        return dpkg_db.read_md5sums(target, path)[0]
    except OSError:
        return {}


def _unfinished(steps: Sequence[Step]) -> Dict[int, str]:
    """Steps whose package dpkg did not leave installed, or whose damaged files are still not as
    packaged, with why."""
    target = Target("/")
    try:
        packages, _damage, _applied = dpkg_db.read_status(target)
    except OSError as error:
        return {id(step): f"the dpkg status cannot be read: {error.strerror}" for step in steps}
    unfinished = {}
    for step in steps:
        package = step.data.package
        now = packages.get(package.key)
        if now is None or now.state not in dpkg_db.SETTLED_STATES:
            unfinished[id(step)] = f"dpkg left it {now.state if now else 'not installed'}"
            continue
        wrong = [entry for entry in step.data.paths if not _as_packaged(target, entry)]
        if wrong:
            unfinished[id(step)] = f"{len(wrong)} of its files are still not as packaged"
    return unfinished


def _as_packaged(target: Target, entry) -> bool:
    if entry.kind == "other" or not entry.expected:
        return target.exists(entry.location)
    result = hash_one(target, HashRequest(entry.location, "md5", follow=False))
    return outcomes.outcome(result, entry.expected) == outcomes.OK


def _once_more(repairer, steps: List[Step], unfinished: Dict[int, str], specs, env, say) -> Tuple[int, str]:
    """Configure what dpkg left unconfigured and reinstall what is still damaged, now that the other
    packages are whole; (the last failing exit status or 0, what the commands said)."""
    unsettled = [s for s in steps if unfinished[id(s)].startswith("dpkg left it")]
    damaged = [s for s in steps if s not in unsettled]
    commands = []
    if unsettled:
        commands.append(["dpkg", "--configure", "--", *[s.data.package.qualified for s in unsettled]])
    if damaged:
        commands.append(repairer.transaction([specs[id(s)] for s in damaged]))
    status, outputs = 0, []
    for command in commands:
        say(f"once more, now that the rest is whole: {shlex.join(command)}")
        code, output = run(command, env)
        status = code or status
        outputs.append(output)
    return status, "\n".join(outputs)
