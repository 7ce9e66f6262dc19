"""The remote side of `fsaudit fleet`: a small loader run with the VM's python3, and the zipapp it runs.

The loader (`LOADER`) is sent on the ssh command line. It says on its first line of stdout what it
needs (`FSAUDIT-FLEET/1 installed` or `FSAUDIT-FLEET/1 need-zip`). When fsaudit is installed on the VM
it runs it; otherwise the control host sends the zipapp on the same ssh stream and the loader keeps it
in an anonymous memory file (`memfd_create`), imports fsaudit from there with the standard zipimport
machinery (so `importlib.metadata` sees the checkers' entry points in the zip's dist-info) and runs
the audit; where memfd_create or /proc is missing, a small importer and distribution finder on
`sys.meta_path` serve the same zip straight from memory. Nothing is written to the VM's disk: no file,
no `.pyc`.

Either way the loader then watches its stdin: the control host keeps it open until the audit ends, so
end-of-file means the control host gave up (timeout, Ctrl-C, lost connection) and the loader kills
every process of the ssh session's process group: no audit is left running on the VM.
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
from importlib import metadata
from typing import Dict, Iterator, List, Tuple

from fsaudit import __version__

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
ENTRY_POINT_GROUPS = ("fsaudit.checks",)
_SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".whl")
_EPOCH = (1980, 1, 1, 0, 0, 0)

# Runs on the VM with `python3 -I -S -c`; keep it Python 3.6-compatible so that an old interpreter can
# still say it is too old. argv[1] is the base64 JSON config: command (argv of an installed fsaudit
# or null), args (the audit options), bootstrap (bool), sha256 (of the zipapp).
# It runs once per host and per audit, so it stays cheap: only builtin modules on the path to an
# installed fsaudit (no site, json, re, subprocess, threading or shutil: together they cost more CPU
# than the interpreter's own start), and the site directories are added only for the zipapp.
LOADER = r'''
import binascii, os, sys, _thread
MAGIC = "FSAUDIT-FLEET/1"


def fail(kind, message, code=125):
    os.write(2, ("fsaudit-fleet: %s: %s\n" % (kind, message)).encode("utf-8", "replace"))
    os._exit(code)


def hello(word):
    version = "%d.%d.%d" % sys.version_info[:3]
    os.write(1, ("%s %s python=%s\n" % (MAGIC, word, version)).encode())


def stop_session(child):
    """The control host is gone: end the audit and everything it started."""
    try:
        if os.getpgid(0) == os.getsid(0):
            os.killpg(0, 9)  # SIGKILL
        elif child is not None:
            os.kill(child, 9)
    finally:
        os._exit(3)


def watch_stdin(child=None):
    def run():
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        stop_session(child)

    _thread.start_new_thread(run, ())


def parse_config(text):
    """The control host's JSON (json.dumps, ASCII only) read as the Python literal it also is: the
    json module would import re, which costs more than the rest of the loader."""
    config = eval(text, {"__builtins__": {}}, {"true": True, "false": False, "null": None})

    def joined(value):  # json.dumps writes a character beyond U+FFFF as a surrogate pair
        if isinstance(value, str) and any("\ud800" <= c <= "\udbff" for c in value):
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        if isinstance(value, list):
            return [joined(v) for v in value]
        return value

    return dict((key, joined(value)) for key, value in config.items())


def which(name):
    """shutil.which, without importing shutil."""
    def runnable(path):
        return os.path.exists(path) and os.access(path, os.X_OK) and not os.path.isdir(path)

    if os.path.dirname(name):
        return name if runnable(name) else None
    path = os.environ.get("PATH")
    if path is None:
        try:
            path = os.confstr("CS_PATH")
        except (AttributeError, ValueError):
            path = os.defpath
    for directory in (path or "").split(os.pathsep):
        candidate = os.path.join(directory, name)
        if runnable(candidate):
            return candidate
    return None


def read_exactly(size):
    chunks, left = [], size
    while left:
        chunk = os.read(0, min(left, 1 << 20))
        if not chunk:
            fail("bootstrap", "the zipapp stream ended early (%d of %d bytes)" % (size - left, size))
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_line():
    line = b""
    while not line.endswith(b"\n") and len(line) < 64:
        byte = os.read(0, 1)
        if not byte:
            break
        line += byte
    return line


def run_installed(command, args):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    hello("installed")
    argv = command + ["audit", "--format", "json"] + args
    child = os.fork()
    if child == 0:
        try:
            import signal

            for name in ("SIGPIPE", "SIGXFSZ"):  # python ignores them; the audit gets the defaults
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            os.execve(argv[0], argv, env)
        except BaseException as error:
            os.write(2, ("%s: %s\n" % (type(error).__name__, error)).encode("utf-8", "replace"))
        os._exit(1)
    watch_stdin(child)
    status = os.waitpid(child, 0)[1]
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


def import_from_memfd(data, compat=None):
    """Put the zip in an anonymous memory file and let the standard zipimport and importlib.metadata
    machinery read it through /proc/self/fd (resources and entry points work as from any zip)."""
    fd = os.memfd_create("fsaudit.pyz", getattr(os, "MFD_CLOEXEC", 0))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    path = "/proc/self/fd/%d" % fd
    if not os.path.isfile(path):
        raise OSError("/proc is not mounted")
    sys.path.insert(0, path)
    if compat:
        sys.path.insert(0, path + "/" + compat)


class MemoryZip:
    """Fallback importer (no memfd_create, no /proc): modules, resources and the dist-info's entry
    points served straight from the zip in memory, through sys.meta_path."""

    prefix = "<fsaudit.pyz>/"

    def __init__(self, data, roots=("",)):
        import io, zipfile

        self.zip = zipfile.ZipFile(io.BytesIO(data))
        self.names = set(self.zip.namelist())
        self.roots = roots  # where modules are looked for, in order ("compat/" first on an old Python)

    def _locate(self, fullname):
        for root in self.roots:
            base = root + fullname.replace(".", "/")
            if base + "/__init__.py" in self.names:
                return base + "/__init__.py", True
            if base + ".py" in self.names:
                return base + ".py", False
        return None, False

    def find_spec(self, fullname, path=None, target=None):
        import importlib.util

        inner, package = self._locate(fullname)
        if inner is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=self.prefix + inner, is_package=package)
        if package:
            spec.submodule_search_locations = [self.prefix + inner.rsplit("/", 1)[0]]
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        inner = self._locate(module.__name__)[0]
        module.__file__ = self.prefix + inner
        exec(compile(self.zip.read(inner), module.__file__, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, fullname):
        inner = self._locate(fullname)[0]
        return self.zip.read(inner).decode("utf-8") if inner else None

    def get_data(self, path):
        return self.zip.read(path[len(self.prefix):] if path.startswith(self.prefix) else path)

    def get_resource_reader(self, fullname):
        import zipfile

        archive, inner = self.zip, self._locate(fullname)[0]

        class Reader:
            def files(self):
                return zipfile.Path(archive, inner.rsplit("/", 1)[0] + "/")

        return Reader() if inner and inner.endswith("/__init__.py") else None

    def find_distributions(self, context=None):
        import importlib.metadata as md, zipfile

        archive = self.zip
        wanted = getattr(context, "name", None)

        class ZipDistribution(md.Distribution):
            def __init__(self, directory):
                self.directory = directory

            def read_text(self, filename):
                try:
                    return archive.read(self.directory + filename).decode("utf-8")
                except KeyError:
                    return None

            def locate_file(self, path):
                return zipfile.Path(archive, str(path))

        for directory in sorted({n.split("/")[0] + "/" for n in self.names if ".dist-info/" in n}):
            dist = ZipDistribution(directory)
            name = (dist.metadata["Name"] or "").lower().replace("-", "_")
            if wanted is None or name == wanted.lower().replace("-", "_"):
                yield dist


def check_python(data):
    """Refuse a Python the zipapp cannot run on; return the zip's directory of older releases of
    bundled modules when this Python needs them (the control host's are newer than it supports)."""
    import io, json, zipfile

    manifest = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("fsaudit-bootstrap.json").decode("utf-8"))
    needed = tuple(manifest["requires_python"])
    if sys.version_info[:2] < needed:
        fail("python-too-old", "python %d.%d is too old for %s (%d.%d or later)"
             % (sys.version_info[:2] + (manifest["why"],) + needed))
    compat = manifest.get("compat")
    if compat and sys.version_info[:2] < tuple(compat["below"]):
        return compat["root"]
    return None


def run_zip(config):
    if sys.version_info < (3, 9):
        fail("python-too-old", "python %d.%d is too old for fsaudit (3.9 or later)" % sys.version_info[:2])
    hello("need-zip")
    header = read_line()
    try:
        size = int(header)
    except ValueError:
        fail("bootstrap", "bad zipapp header %r" % header)
    data = read_exactly(size)
    import hashlib

    if hashlib.sha256(data).hexdigest() != config["sha256"]:
        fail("bootstrap", "the zipapp arrived damaged (sha256 differs)")
    compat = check_python(data)
    watch_stdin()
    sys.dont_write_bytecode = True
    if sys.flags.no_site:  # run with -S: the VM's site-packages (database drivers...) count here
        import site

        site.main()
    try:
        if config.get("importer") == "memory":
            raise OSError("the in-memory importer was asked for")
        import_from_memfd(data, compat)
    except (AttributeError, OSError):
        sys.meta_path.insert(0, MemoryZip(data, (compat + "/", "") if compat else ("",)))
    del data
    sys.argv = ["fsaudit", "audit", "--format", "json"] + config["args"]
    from fsaudit.cli import main

    main()


def start():
    config = parse_config(binascii.a2b_base64(sys.argv[1]).decode("utf-8"))
    command = config.get("command")
    if command:
        found = which(command[0])
        if found:
            run_installed([found] + command[1:], config["args"])
        if not config.get("bootstrap"):
            fail("not-installed", "%s is not an executable on this host" % command[0], 127)
    else:
        found = which("fsaudit")
        if found:
            run_installed([found], config["args"])
    if not config.get("bootstrap"):
        fail("not-installed", "fsaudit is not installed on this host (and --no-bootstrap was given)", 127)
    run_zip(config)


start()
'''


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


def _entry_points_text() -> str:
    """The entry points of the bundled checkers, as an `entry_points.txt`."""
    lines: List[str] = []
    for group in ENTRY_POINT_GROUPS:
        try:
            points = metadata.entry_points(group=group)
        except TypeError:  # pragma: no cover - Python 3.9
            points = metadata.entry_points().get(group, [])
        chosen = sorted(
            {(p.name, p.value) for p in points if p.value.split(":")[0].split(".")[0] in PACKAGES}
        )
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {value}" for name, value in chosen)
        lines.append("")
    return "\n".join(lines)


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def build_zipapp() -> bytes:
    """The zipapp the loader runs: fsaudit, its checkers, the bundled dependencies and a dist-info
    whose entry points register the checkers; plus, under COMPAT_ROOT, older releases of bundled
    modules (from the wheels in `vendor/`) for VMs whose Python the control host's releases no
    longer support. Deterministic: the same sources give the same bytes."""
    buffer = io.BytesIO()
    plan = bundle_plan()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in PACKAGES + tuple(BUNDLED):
            for local, inner in _package_files(name):
                with open(local, "rb") as handle:
                    _add(archive, inner, handle.read())
        for module, wheel in sorted(plan.compat.items()):
            for inner, data in _wheel_files(wheel, module):
                _add(archive, f"{COMPAT_ROOT}/{inner}", data)
        dist_info = f"fsaudit-{__version__}.dist-info"
        _add(
            archive,
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: fsaudit\nVersion: {__version__}\n".encode(),
        )
        _add(archive, f"{dist_info}/entry_points.txt", _entry_points_text().encode())
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
