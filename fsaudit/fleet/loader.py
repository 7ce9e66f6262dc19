"""The loader of `fsaudit fleet`: the program run with the VM's python3 (`python3 -I -S -c`).

It is sent on the ssh command line (fsaudit.fleet.bootstrap reads this file as a resource and encodes
it), never installed or imported on the VM. Keep it Python 3.6-compatible so that an old interpreter
can still say it is too old. argv[1] is the base64 JSON config: command (argv of an installed fsaudit
or null), args (the audit options), bootstrap (bool), sha256 (of the zipapp).

It runs once per host and per audit, so it stays cheap: only builtin modules on the path to an
installed fsaudit (no site, json, re, subprocess, threading or shutil: together they cost more CPU
than the interpreter's own start), and the site directories are added only for the zipapp.
"""

import _thread
import binascii
import os
import sys

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
        view = view[os.write(fd, view) :]
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
        import io
        import zipfile

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
        return self.zip.read(path[len(self.prefix) :] if path.startswith(self.prefix) else path)

    def get_resource_reader(self, fullname):
        import zipfile

        archive, inner = self.zip, self._locate(fullname)[0]

        class Reader:
            def files(self):
                return zipfile.Path(archive, inner.rsplit("/", 1)[0] + "/")

        return Reader() if inner and inner.endswith("/__init__.py") else None

    def find_distributions(self, context=None):
        import importlib.metadata as md
        import zipfile

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
    import io
    import json
    import zipfile

    manifest = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("fsaudit-bootstrap.json").decode("utf-8"))
    needed = tuple(manifest["requires_python"])
    if sys.version_info[:2] < needed:
        fail(
            "python-too-old",
            "python %d.%d is too old for %s (%d.%d or later)"
            % (sys.version_info[:2] + (manifest["why"],) + needed),
        )
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


if __name__ == "__main__":  # `python -c` runs it as __main__; tests import it to try its parts
    start()
