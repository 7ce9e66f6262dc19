"""The remote side of `fsaudit fleet`: a small loader run with the VM's python3, and the zipapp it runs.

The loader (fsaudit/fleet/loader.py, `LOADER`) is sent on the ssh command line. It says on its first
line of stdout what it needs (`FSAUDIT-FLEET/1 installed` or `FSAUDIT-FLEET/1 need-zip`). When fsaudit
is installed on the VM it runs it; otherwise the control host sends the zipapp on the same ssh stream
and the loader keeps it in an anonymous memory file (`memfd_create`), imports fsaudit from there with
the standard zipimport machinery (so `importlib.metadata` sees the plug-ins' entry points in the zip's
dist-info) and runs the audit; where memfd_create or /proc is missing, a small importer and distribution
finder on `sys.meta_path` serve the same zip straight from memory. Nothing is written to the VM's disk:
no file, no `.pyc`. The zipapp carries every installed plug-in, built-in or add-on (checkers, renderers,
commands), with the top-level package each lives in and a dist-info per distribution, so an add-on
checker runs on the VMs as it does on the control host.

Either way the loader then watches its stdin: the control host keeps it open until the audit ends, so
end-of-file means the control host gave up (timeout, Ctrl-C, lost connection) and the loader kills every
process of the ssh session's process group: no audit is left running on the VM.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from importlib import metadata, resources
from typing import Dict, Iterator, List, Set, Tuple

from fsaudit import __version__
from fsaudit.registry import GROUPS, registered

MAGIC = "FSAUDIT-FLEET/1"
# fsaudit itself, plus the pure-Python dependencies a VM is unlikely to have. Packages absent on the
# control host are left out (tomli only matters on Python < 3.11; the `fleet` extra installs it).
PACKAGES = ("fsaudit", "fsaudit_checks")
BUNDLED = {"click": "click", "debian": "python-debian", "tomli": "tomli"}  # module -> distribution
OWN_PYTHON = (3, 9)  # fsaudit's own python_requires
MANIFEST = "fsaudit-bootstrap.json"
# Wheels of older releases of bundled dependencies (click 8.1, the last for Python 3.9), shipped in
# the zipapp under COMPAT_ROOT for VMs whose Python the control host's releases no longer support.
VENDOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor")
COMPAT_ROOT = "compat"
_SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".whl")
_EPOCH = (1980, 1, 1, 0, 0, 0)

# The loader, sent on the ssh command line: a real module (linted and tested), read as a resource.
LOADER = resources.files("fsaudit.fleet").joinpath("loader.py").read_text(encoding="utf-8")


def _package_files(name: str) -> Iterator[Tuple[str, str]]:
    """(path on this machine, path in the zip) for every file of the top-level package `name`."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    if not spec.submodule_search_locations:
        if spec.origin and spec.origin.endswith(".py"):
            yield spec.origin, os.path.basename(spec.origin)
        return
    for location in spec.submodule_search_locations:
        for directory, dirs, files in os.walk(location):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for filename in sorted(files):
                if filename.endswith(_SKIP_SUFFIXES):
                    continue
                local = os.path.join(directory, filename)
                inner = os.path.relpath(local, location).replace(os.sep, "/")
                yield local, f"{name}/{inner}"


@dataclass
class PluginDistribution:
    """A distribution that registers fsaudit plug-ins, as the zipapp carries it: its entry points
    per group and the top-level packages they live in."""

    name: str
    version: str
    points: Dict[str, Set[Tuple[str, str]]] = field(default_factory=dict)  # group -> (name, value)
    packages: Set[str] = field(default_factory=set)

    @property
    def dist_info(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9.]+', '_', self.name)}-{self.version}.dist-info"

    def entry_points_text(self) -> str:
        lines: List[str] = []
        for group in sorted(self.points):
            lines.append(f"[{group}]")
            lines.extend(f"{name} = {value}" for name, value in sorted(self.points[group]))
            lines.append("")
        return "\n".join(lines)


def plugin_distributions() -> List[PluginDistribution]:
    """Every installed distribution that registers checkers, renderers or commands: fsaudit itself
    and the add-ons, each with the packages its plug-ins are imported from."""
    found: Dict[str, PluginDistribution] = {}
    for group in GROUPS:
        for item in registered(group):
            name = item.distribution or "fsaudit-addon"
            dist = found.get(name)
            if dist is None:
                version = __version__ if name == "fsaudit" else (item.version or "0")
                dist = found[name] = PluginDistribution(name, version)
            dist.points.setdefault(group, set()).add((item.point.name, item.point.value))
            dist.packages.add(item.point.value.split(":")[0].split(".")[0])
    return [found[name] for name in sorted(found)]


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def build_zipapp() -> bytes:
    """The zipapp the loader runs: fsaudit, its checkers, the add-ons' packages, the bundled
    dependencies and a dist-info per distribution whose entry points register the plug-ins; plus,
    under COMPAT_ROOT, older releases of bundled modules (from the wheels in `vendor/`) for VMs whose
    Python the control host's releases no longer support. Deterministic: the same sources give the
    same bytes."""
    buffer = io.BytesIO()
    plan = bundle_plan()
    distributions = plugin_distributions()
    addons = sorted({p for d in distributions for p in d.packages} - set(PACKAGES) - set(BUNDLED))
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in PACKAGES + tuple(addons) + tuple(BUNDLED):
            for local, inner in _package_files(name):
                with open(local, "rb") as handle:
                    _add(archive, inner, handle.read())
        for module, wheel in sorted(plan.compat.items()):
            for inner, data in _wheel_files(wheel, module):
                _add(archive, f"{COMPAT_ROOT}/{inner}", data)
        for dist in distributions:
            metadata_text = f"Metadata-Version: 2.1\nName: {dist.name}\nVersion: {dist.version}\n"
            _add(archive, f"{dist.dist_info}/METADATA", metadata_text.encode())
            _add(archive, f"{dist.dist_info}/entry_points.txt", dist.entry_points_text().encode())
        _add(archive, "__main__.py", b"from fsaudit.cli import main\n\nmain()\n")
        _add(archive, MANIFEST, json.dumps(plan.manifest()).encode())
    return buffer.getvalue()


def _wheel_files(wheel: str, module: str) -> Iterator[Tuple[str, bytes]]:
    """(path in the zip, bytes) of every file of top-level module `module` in `wheel`."""
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if name.startswith(f"{module}/") and not name.endswith(("/", *_SKIP_SUFFIXES)):
                yield name, archive.read(name)


def _python_floor(requires: str) -> List[int] | None:
    """The lowest Python a Requires-Python value allows (`>=3.10` gives [3, 10]), or None."""
    floors = [[int(m.group(1)), int(m.group(2))] for m in re.finditer(r">=\s*(\d+)\.(\d+)", requires)]
    return max(floors) if floors else None


def _vendored(distribution: str) -> Tuple[str, List[int]] | None:
    """The wheel in `vendor/` of an older release of `distribution`, and the lowest Python it runs on."""
    pattern = re.compile(rf"{re.escape(distribution.replace('-', '_'))}-([^-]+)-py3-none-any\.whl")
    for name in sorted(os.listdir(VENDOR)) if os.path.isdir(VENDOR) else []:
        if pattern.fullmatch(name):
            path = os.path.join(VENDOR, name)
            with zipfile.ZipFile(path) as archive:
                meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
                text = archive.read(meta).decode("utf-8", "replace")
            requires = re.search(r"^Requires-Python:\s*(.*)$", text, re.M)
            return path, _python_floor(requires.group(1) if requires else "") or [3, 0]
    return None


@dataclass
class BundlePlan:
    """Which Python the zipapp needs, and which older releases it carries for older Pythons."""

    requires_python: List[int]
    why: str
    compat: Dict[str, str] = field(default_factory=dict)  # module -> vendored wheel
    compat_below: List[int] | None = None  # Pythons below this import the compat modules first

    def manifest(self) -> dict:
        data: dict = {"requires_python": self.requires_python, "why": self.why}
        if self.compat:
            data["compat"] = {"root": COMPAT_ROOT, "below": self.compat_below}
        return data


def bundle_plan() -> BundlePlan:
    """The oldest Python the zipapp runs on: fsaudit's own floor, raised by a bundled distribution
    from the control host whose Requires-Python is higher, unless `vendor/` has an older release of
    it that still runs on fsaudit's floor (click 8.2 and later need Python 3.10; VMs with 3.9 get
    click 8.1 from the vendored wheel). The control host itself may run any release."""
    plan = BundlePlan(list(OWN_PYTHON), "fsaudit")
    for module, distribution in BUNDLED.items():
        try:
            floor = _python_floor(metadata.metadata(distribution).get("Requires-Python") or "")
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
        if floor is None or floor <= list(OWN_PYTHON):
            continue
        vendored = _vendored(distribution)
        if vendored and vendored[1] <= list(OWN_PYTHON):
            plan.compat[module] = vendored[0]
            plan.compat_below = min(plan.compat_below or floor, floor)
        elif floor > plan.requires_python:
            plan.requires_python, plan.why = (
                floor,
                f"{distribution} {version} (bundled from the control host)",
            )
    return plan


def loader_config(
    command: List[str] | None, args: List[str], bootstrap: bool, sha256: str, importer: str = "memfd"
) -> str:
    """The loader's argv[1]: its settings as base64 JSON (shell-safe). `importer="memory"` forces the
    fallback importer that the loader otherwise uses only where memfd_create or /proc is missing."""
    config: Dict[str, object] = {
        "command": command,
        "args": list(args),
        "bootstrap": bootstrap,
        "sha256": sha256,
    }
    if importer != "memfd":
        config["importer"] = importer
    return base64.b64encode(json.dumps(config).encode("utf-8")).decode("ascii")


def loader_inline() -> str:
    """The `python -c` program that decodes and runs LOADER; base64 keeps it free of shell quotes."""
    encoded = base64.b64encode(LOADER.encode("utf-8")).decode("ascii")
    return f'import binascii;exec(binascii.a2b_base64("{encoded}").decode())'


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
