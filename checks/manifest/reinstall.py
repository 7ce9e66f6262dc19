"""Reinstalling damaged packages on the running system: one transaction of the package manager, then
once more what is still not as packaged now that the rest is whole.

The manager runs in its own session with a clean environment and a time limit
(`fsaudit.repair.commands`). Before it, the repairer checks what the transaction would do
(`prepare`): a version the repositories no longer have, or a transaction that would also install,
upgrade or remove another package, is refused with why. A package manager keeps an edited
configuration file on a reinstall; with --allow-conffiles such a file is first moved aside (kept
with the repairer's `saved_suffix`, and put back when the transaction did not replace it).
"""

from __future__ import annotations

import os
from typing import Callable, List, Sequence, Tuple

from fsaudit.repair import Outcome, Section, Step, Stop
from fsaudit.repair.commands import environment, tail, transact
from fsaudit_checks.manifest.current import INTACT


def reinstall(repairer, section: Section, say: Callable[[str], None], stop: Stop) -> Outcome:
    outcome = Outcome()
    if stop.requested:
        outcome.left.extend(section.steps)
        return outcome
    env = environment()
    steps, refused = repairer.prepare(list(section.steps), env, say)
    outcome.failed.extend(refused)
    if not steps:
        return outcome
    moved = _move_conffiles_aside(repairer, steps, say)
    pending, status, output, command = transact(
        repairer.transaction, steps, repairer.still_to_do, env, say, stop
    )
    _put_back(moved, say)
    for step in steps:
        if step in pending:
            wrong = len(repairer.still_to_do(step))
            said = f"{command[0]} exited with {status}: " if status else ""
            detail = f" ({said}{tail(output)})" if output.strip() or status else ""
            outcome.failed.append((step, f"{wrong} of its files are still not as packaged{detail}"))
        else:
            outcome.done.append(step)
    return outcome


def _move_conffiles_aside(repairer, steps: Sequence[Step], say) -> List[Tuple[bytes, bytes]]:
    """With --allow-conffiles, move each edited configuration file of the steps aside, so that the
    package manager installs the packaged one: (host path, where it was moved) of each."""
    if not repairer.request.allow_conffiles:
        return []
    moved = []
    for step in steps:
        for owned in step.data.paths:
            if not owned.entry.conffile:
                continue
            if repairer.judge.verdict(owned.package, owned.entry)[0] == INTACT:
                continue
            try:
                host = repairer.target.resolve(owned.entry.path, follow=False)
                saved = host + repairer.saved_suffix
                os.rename(host, saved)
            except FileNotFoundError:
                continue
            except OSError as error:
                say(f"cannot move {os.fsdecode(owned.entry.path)} aside: {error.strerror or error}")
                continue
            say(f"kept {os.fsdecode(owned.entry.path)} as {os.fsdecode(saved)}")
            moved.append((host, saved))
    return moved


def _put_back(moved: Sequence[Tuple[bytes, bytes]], say) -> None:
    """A configuration file the transaction did not replace goes back where it was."""
    for host, saved in moved:
        if os.path.lexists(host):
            continue
        try:
            os.rename(saved, host)
        except OSError as error:
            say(f"cannot put {os.fsdecode(saved)} back: {error.strerror or error}")
            continue
        say(f"the package manager did not install {os.fsdecode(host)}: the previous file is back")
