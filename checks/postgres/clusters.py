"""Finding the PostgreSQL clusters of a VM: DSNs given by the user, or local data directories.

A local cluster is found from the Debian/Ubuntu configuration (`/etc/postgresql/VERSION/NAME`), the
RHEL layout (`/var/lib/pgsql`), running postmasters (whose working directory is their data
directory), and data directories named with `postgres.data_dir`. Whether it is up and where its
socket is comes from its `postmaster.pid`; who owns it, from the data directory's owner.
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import stat
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

MAX_CONF_BYTES = 1 << 20
MAX_LOG_TAIL_BYTES = 64 << 10
LOG_TAIL_LINES = 15
_CONF_LINE = re.compile(r"^\s*([A-Za-z_.]+)\s*=?\s*(?:'((?:[^']|'')*)'|([^\s#]+))")


@dataclass
class Cluster:
    """One PostgreSQL cluster to check: how to reach it and where its files and logs are."""

    label: str
    conninfo: str = ""
    data_dir: Optional[str] = None
    version: str = ""
    running: bool = False
    socket_dir: Optional[str] = None
    port: Optional[int] = None
    owner_uid: Optional[int] = None
    owner_gid: Optional[int] = None
    owner_name: str = ""
    owner_home: str = "/"
    log_candidates: List[str] = field(default_factory=list)
    problem: str = ""
    # The data directory may not be read by this user: not damage, the cluster is just not checked.
    denied: bool = False

    def socket_conninfo(self, as_owner: bool = True) -> str:
        """The conninfo reaching this cluster over its Unix socket, as its owner (peer auth) or as
        whoever libpq's defaults name."""
        parts = [f"host='{_quote(self.socket_dir or '/var/run/postgresql')}'", f"port={self.port or 5432}"]
        if as_owner and self.owner_name:
            parts.append(f"user='{_quote(self.owner_name)}'")
        return " ".join(parts)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def parse_conf(text: str) -> Dict[str, str]:
    """The settings of a postgresql.conf (later lines win; includes are not followed)."""
    settings: Dict[str, str] = {}
    for line in text.splitlines():
        match = _CONF_LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            quoted, bare = match.group(2), match.group(3)
            settings[match.group(1).lower()] = quoted.replace("''", "'") if quoted is not None else bare
    return settings


def read_postmaster_pid(target, data_dir: str) -> Optional[dict]:
    """pid, port and socket directory from `postmaster.pid`, or None when there is none."""
    try:
        lines = target.read_text(os.path.join(data_dir, "postmaster.pid"), limit=4096).splitlines()
    except OSError:
        return None
    info: dict = {"pid": None, "port": None, "socket_dir": None}
    try:
        info["pid"] = int(lines[0])
        info["port"] = int(lines[3])
    except (IndexError, ValueError):
        return info
    if len(lines) > 4 and lines[4].strip():
        info["socket_dir"] = lines[4].strip()
    return info


def _alive(pid: Optional[int]) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _conf_value(target, path: str) -> Dict[str, str]:
    settings: Dict[str, str] = {}
    for name in ("postgresql.conf", "postgresql.auto.conf"):
        try:
            settings.update(parse_conf(target.read_text(os.path.join(path, name), limit=MAX_CONF_BYTES)))
        except OSError:
            continue
    return settings


def cluster_at(target, data_dir: str, label: str = "", conf: Optional[Dict[str, str]] = None) -> Cluster:
    """The cluster whose data directory is `data_dir` (a path inside the target)."""
    cluster = Cluster(label=label or data_dir, data_dir=data_dir)
    settings = dict(conf or {})
    settings.update(_conf_value(target, data_dir))
    try:
        cluster.version = target.read_text(os.path.join(data_dir, "PG_VERSION"), limit=64).strip()
    except OSError as error:
        cluster.denied = error.errno in (errno.EACCES, errno.EPERM)
        cluster.problem = (
            f"{data_dir} is not a readable PostgreSQL data directory ({error.strerror or error})"
        )
    try:
        st = target.stat(data_dir)
        cluster.owner_uid, cluster.owner_gid = st.st_uid, st.st_gid
        entry = pwd.getpwuid(st.st_uid)
        cluster.owner_name, cluster.owner_home = entry.pw_name, entry.pw_dir or "/"
    except (OSError, KeyError):
        pass
    pid_info = read_postmaster_pid(target, data_dir)
    if pid_info and _alive(pid_info["pid"]):
        cluster.running = True
        cluster.port = pid_info["port"]
        cluster.socket_dir = pid_info["socket_dir"]
    if not cluster.port:
        try:
            cluster.port = int(settings.get("port", "5432"))
        except ValueError:
            cluster.port = 5432
    if not cluster.socket_dir:
        sockets = settings.get("unix_socket_directories") or settings.get("unix_socket_directory") or ""
        cluster.socket_dir = sockets.split(",")[0].strip() or "/var/run/postgresql"
    cluster.log_candidates = _log_candidates(data_dir, settings, cluster.label)
    return cluster


def _log_candidates(data_dir: str, settings: Dict[str, str], label: str) -> List[str]:
    """Where this cluster may write its log: files or directories, newest file wins."""
    candidates = []
    log_dir = settings.get("log_directory", "log")
    candidates.append(log_dir if log_dir.startswith("/") else os.path.join(data_dir, log_dir))
    candidates += [
        os.path.join(data_dir, name) for name in ("log", "pg_log", "logfile", "server.log", "startup.log")
    ]
    parts = label.split("/")
    if len(parts) == 2 and not label.startswith("/"):
        candidates.append(f"/var/log/postgresql/postgresql-{parts[0]}-{parts[1]}.log")
    candidates.append(os.path.join(os.path.dirname(data_dir.rstrip("/")), "pgstartup.log"))
    return list(dict.fromkeys(candidates))


def log_tail(target, cluster: Cluster, lines: int = LOG_TAIL_LINES) -> tuple:
    """The last lines of the cluster's newest log file, and that file's path ("" when none found)."""
    newest, newest_mtime = None, -1.0
    for candidate in cluster.log_candidates:
        for path in _files_in(target, candidate):
            try:
                st = target.stat(path)
            except OSError:
                continue
            if st.st_size > 0 and st.st_mtime > newest_mtime:
                newest, newest_mtime = path, st.st_mtime
    if newest is None:
        return [], ""
    try:
        with target.open(newest) as handle:
            size = handle.st.st_size
            handle.seek(max(0, size - MAX_LOG_TAIL_BYTES))
            data = handle.read(MAX_LOG_TAIL_BYTES)
    except OSError:
        return [], newest
    text = data.decode("utf-8", "replace").splitlines()
    return [line for line in text if line.strip()][-lines:], newest


def _files_in(target, path: str) -> Iterator[str]:
    try:
        st = target.stat(path)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode):
        yield path
    elif stat.S_ISDIR(st.st_mode):
        try:
            names = target.listdir(path)[:10000]
        except OSError:
            return
        for name in names:
            yield os.path.join(path, os.fsdecode(name))


def _debian_clusters(target) -> Iterator[Cluster]:
    for version in _names(target, "/etc/postgresql"):
        for name in _names(target, f"/etc/postgresql/{version}"):
            conf_dir = f"/etc/postgresql/{version}/{name}"
            if not target.exists(f"{conf_dir}/postgresql.conf", follow=True):
                continue
            conf = _conf_value(target, conf_dir)
            data_dir = conf.get("data_directory") or f"/var/lib/postgresql/{version}/{name}"
            yield cluster_at(target, data_dir, label=f"{version}/{name}", conf=conf)


def _rhel_data_dirs(target) -> Iterator[str]:
    yield "/var/lib/pgsql/data"
    for name in _names(target, "/var/lib/pgsql"):
        yield f"/var/lib/pgsql/{name}/data"


def _running_data_dirs(target) -> Iterator[str]:
    """Data directories of running postmasters: a postmaster's working directory is its data dir."""
    for name in _names(target, "/proc"):
        if not name.isdigit():
            continue
        try:
            comm = target.read_text(f"/proc/{name}/comm", limit=64).strip()
            if comm not in ("postgres", "postmaster"):
                continue
            status = target.read_text(f"/proc/{name}/status", limit=8192)
            ppid = re.search(r"^PPid:\s*(\d+)", status, re.M)
            if ppid and target.exists(f"/proc/{ppid.group(1)}/comm", follow=True):
                parent = target.read_text(f"/proc/{ppid.group(1)}/comm", limit=64).strip()
                if parent in ("postgres", "postmaster"):
                    continue
            yield os.fsdecode(os.readlink(f"/proc/{name}/cwd"))
        except OSError:
            continue


def _names(target, path: str) -> List[str]:
    try:
        return sorted(os.fsdecode(name) for name in target.listdir(path))[:1000]
    except OSError:
        return []


def discover(target, data_dirs: List[str]) -> List[Cluster]:
    """Every local cluster: those named in `data_dirs`, else the Debian, RHEL and running ones."""
    if data_dirs:
        return [cluster_at(target, path.rstrip("/") or "/") for path in data_dirs]
    found: Dict[str, Cluster] = {}
    for cluster in _debian_clusters(target):
        found.setdefault(os.path.realpath(cluster.data_dir or ""), cluster)
    candidates = list(_rhel_data_dirs(target))
    if target.live:
        candidates += list(_running_data_dirs(target))
    for data_dir in candidates:
        key = os.path.realpath(data_dir)
        if key in found or not target.exists(os.path.join(data_dir, "PG_VERSION"), follow=True):
            continue
        found[key] = cluster_at(target, data_dir)
    return list(found.values())
