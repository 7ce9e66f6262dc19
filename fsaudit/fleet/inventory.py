"""Inventories the operator already has: a plain hosts file and static Ansible inventories (INI, YAML).

Every format yields `Host`s: a unique name (what the report files are called), the address ssh connects
to, an optional user and port, the groups it belongs to, and its variables (`fsaudit_command`,
`fsaudit_python`, `ansible_python_interpreter`...).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Tuple

from fsaudit.errors import UsageError

LOG = logging.getLogger(__name__)
# Ansible's "hostname[01:50]" and "db-[a:f]" ranges.
_RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::(\d+))?\]")


@dataclass
class Host:
    """One VM to audit."""

    name: str
    address: str
    user: str | None = None
    port: int | None = None
    groups: List[str] = field(default_factory=list)
    vars: Dict[str, Any] = field(default_factory=dict)

    @property
    def python(self) -> str:
        """The interpreter that runs fsaudit (or its bootstrap) on the VM."""
        chosen = self.vars.get("fsaudit_python") or self.vars.get("ansible_python_interpreter") or ""
        chosen = str(chosen)
        return "python3" if not chosen or chosen.startswith("auto") else chosen

    @property
    def fsaudit_command(self) -> List[str] | None:
        """The installed fsaudit on the VM when it is not `fsaudit` on the PATH, as argv."""
        value = self.vars.get("fsaudit_command")
        if not value:
            return None
        return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))


def _port(text: Any, where: str) -> int:
    try:
        port = int(str(text))
    except ValueError:
        raise UsageError(f"{where}: port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise UsageError(f"{where}: port {port} is out of range")
    return port


def _check_address(address: str, where: str) -> str:
    if not address or address.startswith("-") or any(c.isspace() for c in address):
        raise UsageError(f"{where}: {address!r} is not a host name or address")
    return address


def parse_target(text: str, where: str) -> Tuple[str | None, str, int | None]:
    """`[user@]host[:port]` (IPv6 as `[addr]:port`) -> (user, host, port)."""
    user, _, rest = text.rpartition("@")
    port = None
    if rest.startswith("["):
        address, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], where)
        elif tail:
            raise UsageError(f"{where}: cannot read {text!r}")
    elif rest.count(":") == 1:
        address, _, port_text = rest.partition(":")
        port = _port(port_text, where)
    else:
        address = rest
    return (user or None), _check_address(address, where), port


def parse_hosts_file(text: str, source: str = "hosts file") -> List[Host]:
    """One `[user@]host[:port]` per line; `#` starts a comment; blank lines are ignored."""
    hosts = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        if len(line.split()) != 1:
            raise UsageError(f"{where}: expected one [user@]host[:port], got {line!r}")
        user, address, port = parse_target(line, where)
        name = address if port is None else f"{address}:{port}"
        hosts.append(Host(name=name, address=address, user=user, port=port))
    return hosts


def expand_ranges(pattern: str) -> List[str]:
    """Ansible host ranges: `web[01:03]` -> web01, web02, web03; `db-[a:c]` -> db-a, db-b, db-c."""
    match = _RANGE.search(pattern)
    if not match:
        return [pattern]
    start, end, step = match.group(1), match.group(2), int(match.group(3) or 1)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(start), int(end) + 1, step)]
    elif len(start) == 1 and len(end) == 1:
        items = [chr(c) for c in range(ord(start), ord(end) + 1, step)]
    else:
        raise UsageError(f"cannot expand the host range in {pattern!r}")
    return [name for item in items for name in expand_ranges(f"{head}{item}{tail}")]


def _ini_value(text: str) -> Any:
    """An INI inventory value: quoted strings unquoted, numbers as numbers, like Ansible."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return int(text) if text.isdigit() else text


class _Builder:
    """Collects hosts, groups and variables from either Ansible format, then resolves them."""

    def __init__(self, source: str):
        self.source = source
        self.host_vars: Dict[str, Dict[str, Any]] = {}
        self.group_hosts: Dict[str, List[str]] = {"all": [], "ungrouped": []}
        self.group_vars: Dict[str, Dict[str, Any]] = {}
        self.children: Dict[str, List[str]] = {}

    def add_host(self, name: str, group: str, variables: Dict[str, Any]) -> None:
        self.host_vars.setdefault(name, {}).update(variables)
        members = self.group_hosts.setdefault(group, [])
        if name not in members:
            members.append(name)

    def _parents(self) -> Dict[str, List[str]]:
        parents: Dict[str, List[str]] = {}
        for parent, kids in self.children.items():
            for kid in kids:
                parents.setdefault(kid, []).append(parent)
        return parents

    def _ancestry(self, group: str, parents: Dict[str, List[str]]) -> List[str]:
        """`group` and every group it is a child of, the most general first (Ansible's precedence)."""
        seen: List[str] = []
        todo = [group]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.append(current)
            todo.extend(parents.get(current, []))
        return list(reversed(seen))

    def hosts(self) -> List[Host]:
        parents = self._parents()
        memberships: Dict[str, List[str]] = {}
        for group, members in self.group_hosts.items():
            for name in members:
                memberships.setdefault(name, []).append(group)
        result = []
        for name, own_vars in self.host_vars.items():
            groups: List[str] = []
            for group in memberships.get(name, []):
                for ancestor in self._ancestry(group, parents):
                    if ancestor not in groups:
                        groups.append(ancestor)
            variables: Dict[str, Any] = dict(self.group_vars.get("all", {}))
            for group in groups:
                variables.update(self.group_vars.get(group, {}))
            variables.update(own_vars)
            result.append(self._host(name, [g for g in groups if g not in ("all", "ungrouped")], variables))
        return result

    def _host(self, name: str, groups: List[str], variables: Dict[str, Any]) -> Host:
        where = f"{self.source}: host {name}"
        address = str(variables.get("ansible_host") or variables.get("ansible_ssh_host") or name)
        port = variables.get("ansible_port") or variables.get("ansible_ssh_port")
        user = variables.get("ansible_user") or variables.get("ansible_ssh_user")
        return Host(
            name=name,
            address=_check_address(address, where),
            user=str(user) if user else None,
            port=_port(port, where) if port else None,
            groups=sorted(groups),
            vars=variables,
        )


def parse_ini(text: str, source: str = "inventory") -> List[Host]:
    """A static Ansible INI inventory: `[group]`, `[group:vars]`, `[group:children]`, `host k=v ...`."""
    builder = _Builder(source)
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{source} line {number}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise UsageError(f"{where}: cannot read the section header {line!r}")
            section, _, kind = line[1:-1].partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise UsageError(f"{where}: unknown section kind {kind!r}")
            builder.group_hosts.setdefault(section, [])
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise UsageError(f"{where}: {error}") from None
        if kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise UsageError(f"{where}: expected key=value in [{section}:vars]")
            builder.group_vars.setdefault(section, {})[key.strip()] = _ini_value(value.strip())
        elif kind == "children":
            builder.children.setdefault(section, []).append(words[0])
        else:
            variables = {}
            for word in words[1:]:
                key, sep, value = word.partition("=")
                if not sep:
                    raise UsageError(f"{where}: expected key=value after the host name, got {word!r}")
                variables[key] = _ini_value(value)
            match = re.fullmatch(r"(.+?)(?::(\d+))?", words[0])
            address = match.group(1)
            if match.group(2):
                variables.setdefault("ansible_port", _port(match.group(2), where))
            for name in expand_ranges(address):
                builder.add_host(name, section, variables)
    return builder.hosts()


def parse_yaml(text: str, source: str = "inventory") -> List[Host]:
    """A static Ansible YAML inventory: `all: {hosts: {...}, vars: {...}, children: {...}}`."""
    try:
        import yaml
    except ImportError:
        raise UsageError(
            f"{source} is a YAML inventory, which needs PyYAML: pip install 'fsaudit[fleet]'"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{source} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping of groups at the top (all: ...)")
    builder = _Builder(source)
    for group, body in data.items():
        _yaml_group(builder, str(group), body, source)
    return builder.hosts()


def _yaml_group(builder: _Builder, group: str, body: Any, source: str, depth: int = 0) -> None:
    if depth > 50:
        raise UsageError(f"{source}: groups nested too deeply at {group!r}")
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise UsageError(f"{source}: group {group!r} must be a mapping (hosts, vars, children)")
    builder.group_hosts.setdefault(group, [])
    unknown = set(body) - {"hosts", "vars", "children"}
    if unknown:
        raise UsageError(f"{source}: group {group!r} has unknown key {sorted(unknown)[0]!r}")
    for name, variables in (body.get("hosts") or {}).items():
        if variables is not None and not isinstance(variables, dict):
            raise UsageError(f"{source}: the variables of host {name!r} must be a mapping")
        for expanded in expand_ranges(str(name)):
            builder.add_host(expanded, group, dict(variables or {}))
    if body.get("vars") is not None:
        if not isinstance(body["vars"], dict):
            raise UsageError(f"{source}: the vars of group {group!r} must be a mapping")
        builder.group_vars.setdefault(group, {}).update(body["vars"])
    for child, child_body in (body.get("children") or {}).items():
        builder.children.setdefault(group, []).append(str(child))
        _yaml_group(builder, str(child), child_body, source, depth + 1)


def detect_format(path: str, text: str) -> str:
    """`yaml`, `ini` or `hosts`, from the file name first, then from the content."""
    lowered = path.lower()
    if lowered.endswith((".yml", ".yaml")):
        return "yaml"
    if lowered.endswith(".ini"):
        return "ini"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped == "---" or re.match(r"^[\w.-]+:\s*$", stripped):
            return "yaml"
        if stripped.startswith("[") and stripped.endswith("]") and ":" not in stripped[1:2]:
            return "ini"
        if len(stripped.split()) > 1:
            return "ini"
    return "hosts"


def load_inventory(path: str) -> List[Host]:
    """The hosts of the inventory file at `path`, in file order, each name once."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise UsageError(f"cannot read the inventory {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"the inventory {path} is not UTF-8 text") from None
    kind = detect_format(path, text)
    parser = {"yaml": parse_yaml, "ini": parse_ini, "hosts": parse_hosts_file}[kind]
    return unique(parser(text, path))


def unique(hosts: Iterable[Host]) -> List[Host]:
    """`hosts` with each name once (the first wins); duplicates are logged."""
    seen: Dict[str, Host] = {}
    for host in hosts:
        if host.name in seen:
            LOG.warning("host %s is listed more than once; auditing it once", host.name)
            continue
        seen[host.name] = host
    return list(seen.values())


def limit(hosts: List[Host], pattern: str | None) -> List[Host]:
    """The hosts matching an Ansible-style `--limit`: globs on host or group names separated by `,` or
    `:`; a `!` prefix excludes; `&` requires."""
    if not pattern:
        return hosts
    parts = [p.strip() for p in re.split(r"[,:]", pattern) if p.strip()]
    include = [p for p in parts if p[0] not in "!&"]
    exclude = [p[1:] for p in parts if p[0] == "!"]
    require = [p[1:] for p in parts if p[0] == "&"]

    def matches(host: Host, glob: str) -> bool:
        return any(fnmatch.fnmatchcase(name, glob) for name in [host.name, *host.groups])

    return [
        host
        for host in hosts
        if (not include or any(matches(host, g) for g in include))
        and not any(matches(host, g) for g in exclude)
        and all(matches(host, g) for g in require)
    ]


def parse_shard(text: str | None) -> Tuple[int, int] | None:
    """`I/N` (1 <= I <= N) -> (I, N)."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise UsageError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. 2/4")
    return int(match.group(1)), int(match.group(2))


def shard(hosts: List[Host], index: int, count: int) -> List[Host]:
    """The hosts of shard `index` of `count` (1-based): by a hash of the host name, so every control
    host computes the same split whatever the order or the other entries of its inventory copy."""

    def bucket(name: str) -> int:
        return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % count

    return [host for host in hosts if bucket(host.name) == index - 1]
