"""Whether a report is about the machine that repair would change.

On the running system, repair reinstalls packages on the machine it runs on. A report from
another machine (a VM's report read on the control host, by mistake or sent on purpose) must not
decide that: the report's hostname and machine-id must both be this machine's. A mounted image is
named explicitly with `--root`, and what is done there is re-derived from the image itself.
"""

from __future__ import annotations

from fsaudit.errors import FsauditError
from fsaudit.escape import inert
from fsaudit.model import Report
from fsaudit.runner import host_info
from fsaudit.target import Target


def check_same_machine(report: Report) -> None:
    """Raise FsauditError unless `report` was made on this running machine, of its own root: its
    host must be what an audit here would record (hostname and machine-id)."""
    host = report.host if isinstance(report.host, dict) else {}
    theirs_name = str(host.get("hostname") or "")
    theirs_id = str(host.get("machine_id") or "")
    here = host_info(Target("/"))
    here_name, here_id = here["hostname"], here.get("machine_id", "")
    about = f"{theirs_name or 'an unnamed host'}" + (f" (machine-id {theirs_id})" if theirs_id else "")
    if report.root != "/":
        raise FsauditError(
            inert(
                f"the report was made of a mounted image ({report.root}), not of a running system: "
                "mount that image and give it with --root DIR"
            )
        )
    if here_id and not theirs_id:
        raise FsauditError(
            "the report does not say which machine it was made on (an older fsaudit made it): audit this "
            "machine again and repair from that report"
        )
    if theirs_name != here_name or theirs_id != here_id:
        raise FsauditError(
            inert(
                f"the report is about {about}, but this machine is {here_name}"
                + (f" (machine-id {here_id})" if here_id else "")
                + ": repair acts on the machine it runs on; run it on that machine, or mount its disk here "
                "and give it with --root DIR"
            )
        )
