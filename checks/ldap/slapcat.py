"""The slapd of the audited machine: where its ldapi socket is, its configuration and suffixes,
and what its own database holds, read offline with `slapcat` (read-only) to compare with what the
server answers over the wire."""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Iterator, List
from urllib.parse import quote, unquote

from fsaudit_checks.ldap.directory import Directory, SearchFailed, is_local, ldapi_socket, text
from fsaudit_checks.ldap.dn import DnNames, HashSet, dn_hash, within
from fsaudit_checks.ldap.problems import Count, Incomplete, Item, Problem, Stat

# Where slapd's service settings name the URLs it listens on (SLAPD_SERVICES, SLAPD_URLS).
SERVICE_FILES = ("/etc/default/slapd", "/etc/sysconfig/slapd")
_LDAPI_URL = re.compile(r"ldapi://([^\s\"'/]*)")
CONFIGS = ("/etc/ldap/slapd.d", "/etc/openldap/slapd.d", "/etc/ldap/slapd.conf", "/etc/openldap/slapd.conf")
MAX_CONFIG = 4 << 20
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
STDERR_KEPT = 4096
REIMPORT = (
    "the server's indexes no longer reach this entry: stop slapd, export with slapcat, check the export "
    "and re-import it with slapadd into a fresh database, or restore from backup; if the bind DN may not "
    "read every entry, audit as the rootdn or as root over ldapi first"
)
DAMAGED_DATABASE = (
    "the database is damaged: stop slapd, keep a copy of its files, export what slapcat can read, and "
    "restore the directory from a backup (or re-import the export into a fresh database)"
)


@dataclass
class SlapdConfig:
    """A slapd configuration on the audited system: a slapd.conf file or a cn=config directory."""

    path: str
    directory: bool
    suffixes: List[str] = field(default_factory=list)

    def slapcat_arguments(self) -> List[str]:
        return ["-F" if self.directory else "-f", self.path]


def discover_ldapi(target) -> str | None:
    """The ldapi URL of the slapd running on this machine: a socket its service settings name, else
    the first default socket that exists."""
    for path in SERVICE_FILES:
        try:
            settings = target.read_text(path, limit=MAX_CONFIG)
        except OSError:
            continue
        for line in settings.splitlines():
            if line.lstrip().startswith("#"):
                continue
            for match in _LDAPI_URL.finditer(line):
                socket_path = unquote(match.group(1))
                if socket_path and target.exists(socket_path):
                    return "ldapi://" + quote(socket_path, safe="")
    socket_path = ldapi_socket()
    return "ldapi://" + quote(socket_path, safe="") if socket_path else None


def find_config(target, explicit: str = "") -> SlapdConfig | None:
    """The slapd configuration named by `explicit`, else the first of the usual places that exists."""
    for path in [explicit] if explicit else CONFIGS:
        try:
            st = target.stat(path)
        except OSError:
            continue
        config = SlapdConfig(path=path, directory=stat.S_ISDIR(st.st_mode))
        config.suffixes = _database_suffixes(target, config)
        return config
    return None


def _ldif_records(raw: str) -> Iterator[tuple]:
    """(attribute, value) pairs of an LDIF text, with folded lines joined and base64 decoded."""
    logical: List[str] = []
    for line in raw.splitlines():
        if line.startswith(" ") and logical:
            logical[-1] += line[1:]
        else:
            logical.append(line)
    for line in logical:
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, _, value = line.partition(":")
        if value.startswith(":"):
            try:
                value = base64.b64decode(value[1:].strip()).decode("utf-8", "replace")
            except ValueError:
                continue
        else:
            value = value.strip()
        yield name.strip(), value


def _database_suffixes(target, config: SlapdConfig) -> List[str]:
    suffixes: List[str] = []
    if config.directory:
        folder = config.path.rstrip("/") + "/cn=config"
        try:
            names = sorted(n.decode("utf-8", "surrogateescape") for n in target.listdir(folder))
        except OSError:
            return suffixes
        for name in names:
            if not (name.lower().startswith("olcdatabase=") and name.endswith(".ldif")):
                continue
            try:
                raw = target.read_text(f"{folder}/{name}", limit=MAX_CONFIG)
            except OSError:
                continue
            suffixes += [v for k, v in _ldif_records(raw) if k.lower() == "olcsuffix"]
        return suffixes
    try:
        raw = target.read_text(config.path, limit=MAX_CONFIG)
    except OSError:
        return suffixes
    for line in raw.splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].lower() == "suffix":
            suffixes.append(words[1].strip().strip('"'))
    return suffixes


def slapcat_program() -> str | None:
    for path in ("/usr/sbin/slapcat", "/sbin/slapcat", "/usr/local/sbin/slapcat"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("slapcat")


class Slapcat:
    """One `slapcat -b SUFFIX` run: iterate `dns()`, then read `returncode`, `errors` and whether
    it was stopped for taking longer than `limit` seconds (`timed_out`)."""

    def __init__(self, program: str, config: SlapdConfig, suffix: str, limit: float = 3600):
        self.command = [program, *config.slapcat_arguments(), "-b", suffix, "-o", "ldif_wrap=no"]
        self.limit = limit
        self.returncode: int | None = None
        self.errors = ""
        self.timed_out = False

    def dns(self) -> Iterator[str]:
        # A clean environment: slapcat reads LDAPCONF, LDAPRC and the like from it.
        process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=CLEAN_ENV,
        )
        tail = bytearray()

        def drain():
            for chunk in iter(lambda: process.stderr.read(4096), b""):
                tail.extend(chunk)
                del tail[:-STDERR_KEPT]

        def stop():
            self.timed_out = True
            process.kill()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        timer = threading.Timer(self.limit, stop)
        timer.daemon = True
        timer.start()
        try:
            yield from _dns(process.stdout)
        finally:
            process.stdout.close()
            self.returncode = process.wait()
            timer.cancel()
            reader.join(10)
            self.errors = tail.decode("utf-8", "replace").strip()


_DN_LINE = re.compile(rb"^dn:(:?)[ ]*(.*(?:\n .*)*)", re.M | re.I)


def _dns(stream, chunk_size: int = 1 << 20) -> Iterator[str]:
    """The DNs of the records in an LDIF stream, read in large chunks (folded lines joined)."""
    pending = b""
    while True:
        chunk = stream.read(chunk_size)
        data = pending + chunk if chunk else pending
        # Only whole records: cut after the last blank line unless this is the end.
        cut = data.rfind(b"\n\n") + 2 if chunk else len(data)
        if chunk and cut < 2:
            pending = data
            continue
        for match in _DN_LINE.finditer(data, 0, cut):
            yield _dn_value(match.group(1), match.group(2).replace(b"\r", b"").replace(b"\n ", b""))
        pending = data[cut:]
        if not chunk:
            return


def _dn_value(encoded: bytes, value: bytes) -> str:
    if encoded:
        try:
            return base64.b64decode(value.strip()).decode("utf-8", "replace")
        except ValueError:
            return text(value.strip())
    return text(value.strip())


def _not_served(directory: Directory, dn: str) -> str | None:
    """Why the server does not return `dn` when asked for it by name, or None when it does: subentries,
    referral objects and glue entries are left out of subtree searches but are not damage."""
    try:
        if directory.read(dn, ["1.1"], as_stored=True) is not None:
            return None
        return "no such object"
    except SearchFailed as error:
        return str(error)


def _ended(returncode: int) -> str:
    return f"was killed by signal {-returncode}" if returncode < 0 else f"stopped with status {returncode}"


def _database(config: SlapdConfig, base_key: str, names: DnNames) -> str | None:
    """The suffix of the database that holds `base`: the most specific one containing it. slapcat
    reads the databases glued below it too, as a search of the server does."""
    best, best_key = None, None
    for suffix in config.suffixes:
        key = names.key(suffix)
        if key is not None and within(base_key, key) and (best_key is None or len(key) > len(best_key)):
            best, best_key = suffix, key
    return best


def compare(
    target,
    directory: Directory,
    base: str,
    served: HashSet,
    names: DnNames,
    slapd_config: str = "",
    timeout: float = 3600,
) -> Iterator[Item]:
    """What slapcat reads under `base` that the server did not return (the hashes of what it did are
    in `served`), slapcat's own errors, and the two counts."""
    url = directory.url
    explicit = slapd_config or ""
    if not target.live or os.geteuid() != 0 or not (explicit or is_local(url)):
        yield Stat("slapcat", "not run: needs root on the machine that runs slapd (no --root)")
        return
    config = find_config(target, explicit)
    program = slapcat_program()
    if not config or not program:
        yield Stat("slapcat", "not run: " + ("slapcat is missing" if config else "no slapd configuration"))
        return
    base_key = names.key(base)
    suffix = _database(config, base_key, names) if base_key is not None else None
    if suffix is None:
        yield Stat("slapcat", f"not run: {config.path} holds no database for {base}")
        return
    slapcat = Slapcat(program, config, suffix, timeout)
    found = hidden = 0
    for dn in slapcat.dns():
        key = names.key(dn)
        if key is None or not within(key, base_key):
            continue
        found += 1
        if dn_hash(key) in served:
            continue
        problem = _not_served(directory, dn)
        if problem is None:
            hidden += 1
            continue
        yield Problem(
            "entry-not-served",
            "critical",
            "in the database (slapcat) but the server does not return it",
            subject=dn,
            details={"dn": dn, "url": url, "config": config.path, "read_by_name": problem},
            advice=REIMPORT,
        )
    yield Count("slapcat_entries", found)
    if hidden:
        yield Count("entries_hidden_from_searches", hidden)
    yield Stat("slapcat", "compared with " + " ".join(slapcat.command))
    if slapcat.timed_out:
        yield Incomplete(f"slapcat did not finish reading {suffix} in {slapcat.limit:g} s")
        return
    if slapcat.returncode:
        last = slapcat.errors.splitlines()[-1] if slapcat.errors else ""
        yield Problem(
            "slapcat-failed",
            "critical",
            f"slapcat {_ended(slapcat.returncode)} reading {suffix}" + (f": {last}" if last else ""),
            subject=suffix,
            details={
                "command": slapcat.command,
                "status": slapcat.returncode,
                "stderr": slapcat.errors,
                "entries_read": found,
            },
            advice=DAMAGED_DATABASE,
        )
    returned = len(served) + hidden
    if found != returned:
        yield Problem(
            "entry-count-differs",
            "critical",
            f"the server returns {returned} entries under {base}, slapcat finds {found} in its database",
            subject=base,
            details={"base": base, "served": len(served), "hidden": hidden, "slapcat": found, "url": url},
            advice=REIMPORT.replace("this entry", "every entry"),
        )
