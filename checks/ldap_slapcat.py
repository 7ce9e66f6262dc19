"""What slapd's own database holds, read offline with `slapcat` (read-only), to compare with what
the server answers over the wire: finds the slapd configuration and its suffixes, runs slapcat."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Iterator, List

from fsaudit_checks.ldap_directory import text

CONFIGS = ("/etc/ldap/slapd.d", "/etc/openldap/slapd.d", "/etc/ldap/slapd.conf", "/etc/openldap/slapd.conf")
MAX_CONFIG = 4 << 20
STDERR_KEPT = 4096


@dataclass
class SlapdConfig:
    """A slapd configuration on the audited system: a slapd.conf file or a cn=config directory."""

    path: str
    directory: bool
    suffixes: List[str] = field(default_factory=list)

    def slapcat_arguments(self) -> List[str]:
        return ["-F" if self.directory else "-f", self.path]


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
    """One `slapcat -b SUFFIX` run: iterate `dns()`, then read `returncode` and `errors`."""

    def __init__(self, program: str, config: SlapdConfig, suffix: str):
        self.command = [program, *config.slapcat_arguments(), "-b", suffix, "-o", "ldif_wrap=no"]
        self.returncode: int | None = None
        self.errors = ""

    def dns(self) -> Iterator[str]:
        process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        tail = bytearray()

        def drain():
            for chunk in iter(lambda: process.stderr.read(4096), b""):
                tail.extend(chunk)
                del tail[:-STDERR_KEPT]

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            yield from _dns(process.stdout)
        finally:
            process.stdout.close()
            self.returncode = process.wait()
            reader.join(10)
            self.errors = tail.decode("utf-8", "replace").strip()


def _dns(stream) -> Iterator[str]:
    """The DNs of the records in an LDIF stream, one line at a time (folded lines joined)."""
    pending: bytes | None = None
    for line in stream:
        line = line.rstrip(b"\r\n")
        if pending is not None:
            if line.startswith(b" "):
                pending += line[1:]
                continue
            yield _dn_value(pending)
            pending = None
        if line[:3].lower() == b"dn:":
            pending = line
    if pending is not None:
        yield _dn_value(pending)


def _dn_value(line: bytes) -> str:
    value = line[3:]
    if value.startswith(b":"):
        try:
            return base64.b64decode(value[1:].strip()).decode("utf-8", "replace")
        except ValueError:
            return text(value[1:].strip())
    return text(value.strip())
