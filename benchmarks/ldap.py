"""Benchmark of the ldap checker against what an operator would otherwise run on the same directory:
a full paged `ldapsearch` (does the server return everything?) plus `slapcat` (what the database
holds). Builds a throwaway slapd with N people and groups of 100 members, prints wall times, the
ratio, and fsaudit's peak memory (which should stay nearly flat as N grows).

    python benchmarks/ldap.py --entries 20000 --entries 80000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fixtures.ldap import PASSWORD, ROOTDN, SUFFIX, Slapd, entry, program, write_password  # noqa: E402

GROUP_SIZE = 100


def directory(people: int) -> str:
    parts = [
        entry(SUFFIX, "objectClass: dcObject", "objectClass: organization", "dc: example", "o: Example"),
        entry(f"ou=people,{SUFFIX}", "objectClass: organizationalUnit", "ou: people"),
        entry(f"ou=groups,{SUFFIX}", "objectClass: organizationalUnit", "ou: groups"),
    ]
    for n in range(people):
        parts.append(
            entry(
                f"uid=user{n},ou=people,{SUFFIX}",
                "objectClass: inetOrgPerson",
                f"uid: user{n}",
                f"cn: User {n}",
                f"sn: {n}",
                f"mail: user{n}@example.com",
                f"manager: uid=user{n // 10},ou=people,{SUFFIX}",
            )
        )
    for g in range(0, people, GROUP_SIZE):
        members = [f"member: uid=user{n},ou=people,{SUFFIX}" for n in range(g, min(g + GROUP_SIZE, people))]
        parts.append(
            entry(f"cn=group{g},ou=groups,{SUFFIX}", "objectClass: groupOfNames", f"cn: group{g}", *members)
        )
    return "".join(parts)


def timed(command, **options) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **options)
    return time.monotonic() - started


def fsaudit_run(server: Slapd, password: Path):
    """Wall time, peak RSS (KiB) and stats of one `fsaudit audit --check ldap`, measured from a
    fresh parent whose only child is fsaudit."""
    command = [
        sys.executable, "-m", "fsaudit", "audit", "--check", "ldap", "--format", "json",
        "--set", f"ldap.url={server.url}", "--set", f"ldap.bind_dn={ROOTDN}",
        "--set", f"ldap.password_file={password}", "--set", f"ldap.slapd_config={server.config}",
    ]  # fmt: skip
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.monotonic(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps([time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " p.returncode, p.stdout]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=True
    )
    seconds, rss, code, report = json.loads(out.stdout)
    check = json.loads(report)["checks"][0]
    return seconds, rss, code, check


def bench(people: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = Slapd(Path(tmp))
        server.slapadd(directory(people))
        password = write_password(Path(tmp))
        server.start()
        try:
            search = timed(
                [program("ldapsearch"), "-x", "-LLL", "-H", server.url, "-D", ROOTDN, "-w", PASSWORD,
                 "-E", "pr=500/noprompt", "-b", SUFFIX, "*", "entryUUID"]
            )  # fmt: skip
            slapcat = timed([program("slapcat"), "-f", str(server.config), "-b", SUFFIX])
            seconds, rss, code, check = fsaudit_run(server, password)
        finally:
            server.stop()
    peers = search + slapcat
    entries = check["stats"].get("entries_read")
    print(
        f"{people:>7} people, {entries} entries: ldapsearch {search:.2f}s + slapcat {slapcat:.2f}s "
        f"= {peers:.2f}s; "
        f"fsaudit {seconds:.2f}s (exit {code}, {check['status']}), ratio {seconds / peers:.1f}x, "
        f"fsaudit peak RSS {rss / 1024:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, action="append", help="people in the directory (repeatable)")
    sizes = parser.parse_args().entries or [20000]
    for people in sizes:
        bench(people)


if __name__ == "__main__":
    main()
