"""What the benchmarks share: the network-like disk, cold and warm runs side by side, and the table.

The disk: the input tree copied into an ext4 image (`mkfs.ext4 -d`), served read-only by nbdkit
with its delay filter (every read request waits DELAY ms, like network block storage), mounted
through nbdfuse with 16 connections (so that 16 requests can be in flight), a loop device with
direct I/O (without it the loop device serialises reads) and `mount -o ro,noload`. Everything is
torn down when the benchmark ends, also on Ctrl-C or SIGTERM. Needs root and the Debian packages
nbdkit, libnbd-bin (nbdfuse), fuse3 and e2fsprogs.

Runs: every tool runs on the same mounted tree, interleaved (tool A, B, C, A, B, C, ...) and
repeated, warm (after one read of everything, from the page cache) and cold (the page cache dropped
before each run), and the table shows medians of wall and CPU time, each tool's ratio to the peer,
and the load average of the machine at each run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The command that runs fsaudit: set by install_fsaudit() to the installed copy (this list is shared
# by every benchmark module that imported it).
FSAUDIT = [sys.executable, "-m", "fsaudit"]
# fsaudit as it is installed: with its bytecode compiled (PYTHONDONTWRITEBYTECODE would make every
# run compile every module again).
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
ENV["NO_COLOR"] = "1"


MODES = ("warm", "cold")


def _modes(text: str) -> tuple:
    modes = tuple(mode.strip() for mode in text.split(",") if mode.strip())
    if not modes or any(mode not in MODES for mode in modes):
        raise argparse.ArgumentTypeError(f"{text!r}: give warm, cold, or warm,cold")
    return modes


def run_options(parser: argparse.ArgumentParser, workdir: str) -> None:
    """The options every reading benchmark takes: where its input is kept, how often and how each
    tool runs, and the disk's delay."""
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/fsaudit-bench") / workdir)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each tool per mode")
    parser.add_argument(
        "--modes",
        type=_modes,
        default=MODES,
        help="warm, cold, or warm,cold (the default): from the "
        "page cache, and with it dropped before each run",
    )
    parser.add_argument("--delay-ms", type=float, default=1.0, help="delay of each read on the disk")


def install_fsaudit() -> List[str]:
    """Install this tree as an operator has fsaudit, and make FSAUDIT run that copy: a wheel built
    from it (pip) in a throwaway virtual environment, its bytecode compiled, with the dependencies of
    the environment running the benchmark on its path through a .pth file. A .pth line only adds a
    directory: the development environment's editable install, whose import hook (setuptools'
    finder, with pathlib) took 12 ms of every start, is not loaded, as it is not on an installed
    system. The bare interpreter of the start-up figure is this environment's too."""
    venv = Path(tempfile.mkdtemp(prefix="fsaudit-installed-", dir=os.environ.get("FSAUDIT_BENCH_DIR")))
    atexit.register(shutil.rmtree, venv, True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    import site

    (Path(purelib) / "fsaudit-benchmark-dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    print(f"installing fsaudit from {REPO} into {venv}", file=sys.stderr)
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", purelib, str(REPO)]
    subprocess.run(install, check=True, env=ENV, stdout=subprocess.DEVNULL)
    subprocess.run([python, "-m", "compileall", "-q", purelib], check=True, env=ENV)
    # -P: the current directory (the repository, when a benchmark runs from there) is not put first
    # on the path, as it is not for the installed program.
    FSAUDIT[:] = [python, "-P", "-m", "fsaudit"]
    return FSAUDIT


def require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        sys.exit(f"missing programs: {', '.join(missing)} (apt-get install nbdkit libnbd-bin fuse3 ...)")
    if os.geteuid() != 0:
        sys.exit("the benchmarks need root (mount, losetup, drop_caches)")


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def drop_page_cache() -> None:
    """Empty the page cache (and dentries, inodes) so the next run reads the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def warm_up(tree: Path) -> None:
    """Read everything once (files and metadata) so that a warm run reads only the page cache."""
    subprocess.run(
        f"find {shlex_quote(tree)} -xdev -type f -print0 | xargs -0 -r -P 8 -n 256 cat > /dev/null",
        shell=True,
        check=False,
    )


def shlex_quote(path) -> str:
    import shlex

    return shlex.quote(str(path))


# -- the network-like disk -------------------------------------------------------------------------


class _Stop(Exception):
    pass


@contextmanager
def torn_down_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the benchmark like Ctrl-C: through every `finally`."""

    def stop(signum, frame):
        raise _Stop(f"signal {signum}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _footprint(tree: Path) -> tuple:
    """(entries, bytes an ext4 copy needs: whole 4 KiB blocks per file and directory, 256-byte
    inodes) of a tree."""
    entries = blocks = 0
    for directory, _, files in os.walk(tree):
        entries += 1 + len(files)
        blocks += 1
        for name in files:
            try:
                blocks += -(-os.lstat(os.path.join(directory, name)).st_size // 4096)
            except OSError:
                pass
    return entries, blocks * 4096 + entries * 256


@contextmanager
def network_disk(tree: Path, delay_ms: float = 1.0, connections: int = 16) -> Iterator[Path]:
    """`tree` copied onto a simulated network disk and mounted read-only: yields the mount point."""
    require("mkfs.ext4", "nbdkit", "nbdfuse", "losetup", "fusermount3")
    work = Path(tempfile.mkdtemp(prefix="fsaudit-disk-", dir=os.environ.get("FSAUDIT_BENCH_DIR")))
    image, sock, fuse, mount = work / "disk.ext4", work / "nbd.sock", work / "fuse", work / "mnt"
    fuse.mkdir()
    mount.mkdir()
    loop = None
    nbdfuse = None
    nbdkit_pid = work / "nbdkit.pid"
    steps: List[Callable[[], None]] = []
    try:
        entries, footprint = _footprint(tree)
        size_mb = int(footprint * 1.2 / 2**20) + 256
        inodes = int(entries * 1.3) + 10_000
        print(f"disk: copying {tree} into a {size_mb} MiB ext4 image", file=sys.stderr)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-N", str(inodes), "-d", str(tree), str(image), f"{size_mb}M"],
            check=True,
        )
        subprocess.run(
            ["nbdkit", "-r", "-U", str(sock), "-P", str(nbdkit_pid), "--filter=delay", "file", str(image)]
            + [f"rdelay={delay_ms}ms"],
            check=True,
        )
        steps.append(lambda: _kill_pidfile(nbdkit_pid))
        nbdfuse = subprocess.Popen(
            ["nbdfuse", "-r", "-C", str(connections), str(fuse), "--unix", str(sock)],
            stdout=subprocess.DEVNULL,
        )
        steps.append(lambda: _stop_nbdfuse(nbdfuse, fuse))
        _wait_for(fuse / "nbd")
        loop = subprocess.run(
            ["losetup", "-r", "--direct-io=on", "-f", "--show", str(fuse / "nbd")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        steps.append(lambda: subprocess.run(["losetup", "-d", loop], check=False))
        subprocess.run(["mount", "-o", "ro,noload", loop, str(mount)], check=True)
        steps.append(lambda: _unmount(mount))
        print(f"disk: {loop} mounted on {mount}, {delay_ms} ms per read, {connections} connections")
        yield mount
    finally:
        for step in reversed(steps):
            try:
                step()
            except Exception as error:  # keep tearing down the rest
                print(f"disk: tear-down step failed: {error}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


def _wait_for(path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)


def _unmount(mount: Path) -> None:
    for _ in range(20):
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _stop_nbdfuse(process: subprocess.Popen, fuse: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(fuse)], capture_output=True, check=False)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _kill_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


# -- running the tools side by side ----------------------------------------------------------------


@dataclass
class Sample:
    wall: float
    cpu: float
    load: str
    peak_kib: int = 0  # the tool's own peak RSS (GNU time's %M)


@dataclass
class Tool:
    """One command to time. `check(completed)` returns what it verified, to compare with the peer
    (counts and damage found), or raises when the run failed."""

    name: str
    command: List[str]
    check: Optional[Callable[[subprocess.CompletedProcess], dict]] = None
    env: Optional[Dict[str, str]] = None
    ok_codes: tuple = (0,)
    modes: tuple = MODES  # where it runs: a floor may be one only for the page cache
    samples: Dict[str, List[Sample]] = field(default_factory=dict)
    outcome: Dict[str, dict] = field(default_factory=dict)


def timed(command: List[str], env=None) -> tuple:
    """Wall and CPU seconds (the tool and every process it waited for), the load average, and the
    tool's peak RSS, of one run."""
    with tempfile.NamedTemporaryFile("r", prefix="fsaudit-rss-") as rss:
        wrapped = ["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name, *command]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        completed = subprocess.run(wrapped, capture_output=True, env=env)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = rss.read().strip().splitlines()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Sample(wall, cpu, load(), int(peak[-1]) if peak and peak[-1].isdigit() else 0), completed


def compare(tools: List[Tool], mode: str, repeat: int, tree: Path) -> None:
    """Run every tool `repeat` times, interleaved; `mode` is "warm" or "cold"."""
    if mode == "warm":
        warm_up(tree)
    for round_number in range(repeat):
        for tool in tools:
            if mode not in tool.modes:
                continue
            if mode == "cold":
                drop_page_cache()
            sample, completed = timed(tool.command, env=tool.env)
            if completed.returncode not in tool.ok_codes:
                sys.exit(
                    f"{tool.name} failed ({completed.returncode}):\n"
                    f"{completed.stderr.decode(errors='replace')[-3000:]}"
                )
            tool.samples.setdefault(mode, []).append(sample)
            if tool.check is not None:
                tool.outcome[mode] = tool.check(completed)
            print(
                f"  {mode} round {round_number + 1}: {tool.name:<34} {sample.wall:8.2f} s wall "
                f"{sample.cpu:7.2f} s CPU {sample.peak_kib / 1024:7.1f} MiB   load {sample.load}",
                file=sys.stderr,
            )


def median(tool: Tool, mode: str, what: str = "wall") -> float:
    return statistics.median(getattr(s, what) for s in tool.samples[mode])


def table(tools: List[Tool], peer: Tool, goals: Dict[str, Dict[str, float]], modes=("warm", "cold")) -> bool:
    """Print medians and ratios to `peer`; `goals[tool name][mode]` is the ratio to meet. True when
    every goal is met."""
    met = True
    for mode in modes:
        if not peer.samples.get(mode):
            continue
        print(f"\n{mode} ({len(peer.samples[mode])} interleaved runs each; medians)")
        print(f"  {'':<34} {'wall':>9} {'CPU':>9} {'peak RSS':>10}   {'ratio':>6}   goal")
        for tool in tools:
            if not tool.samples.get(mode):
                continue
            wall, cpu = median(tool, mode), median(tool, mode, "cpu")
            peak = max(s.peak_kib for s in tool.samples[mode]) / 1024
            ratio = wall / median(peer, mode)
            goal = goals.get(tool.name, {}).get(mode)
            verdict = ""
            if goal is not None:
                ok = ratio <= goal
                met &= ok
                verdict = f"<= {goal:.2f} {'met' if ok else 'NOT MET'}"
            print(f"  {tool.name:<34} {wall:8.2f}s {cpu:8.2f}s {peak:7.1f} MiB   {ratio:6.2f}   {verdict}")
        loads = sorted({s.load for t in tools for s in t.samples.get(mode, [])})
        print(f"  load averages during these runs: {loads[0]} .. {loads[-1]}")
    return met


def same_work(tools: List[Tool], peer: Tool, keys=("verified", "damage")) -> None:
    """Speed must not come from skipping work: every tool that reports what it verified must have
    verified as much as the peer and found the same planted damage."""
    for mode, expected in peer.outcome.items():
        for tool in tools:
            got = tool.outcome.get(mode)
            if got is None or tool is peer:
                continue
            for key in keys:
                if key in expected and key in got and got[key] != expected[key]:
                    sys.exit(
                        f"{tool.name} ({mode}) did not do the same work as {peer.name}: {key} "
                        f"{_short(got[key])} against {_short(expected[key])}"
                    )
    print(f"\nsame work: every tool verified what {peer.name} verified and found the same damage")


def _short(value) -> str:
    text = repr(sorted(value) if isinstance(value, (set, frozenset)) else value)
    return text if len(text) < 400 else text[:400] + "..."


def _path_list(paths: List[str]) -> str:
    """A file listing `paths`, each ended by a NUL byte (as xargs -0 reads them), removed at exit."""
    with tempfile.NamedTemporaryFile("wb", prefix="fsaudit-floor-", suffix=".list", delete=False) as listing:
        listing.write(b"\0".join(os.fsencode(p) for p in paths) + b"\0")
    atexit.register(os.unlink, listing.name)
    return listing.name


def parallel_hash_floor(name: str, program: str, paths: List[str], modes: tuple = MODES) -> Tool:
    """The files hashed by 64 `program` processes at once: what the disk and the cores allow."""
    listing = _path_list(paths)
    chunk = max(1, len(paths) // 256)
    command = ["sh", "-c", f"xargs -0 -P 64 -n {chunk} {program} < {shlex_quote(listing)} > /dev/null"]
    return Tool(name, command, ok_codes=(0, 123), modes=modes)


def parallel_read_floor(paths: List[str]) -> Tool:
    """The files only read, by 64 `cat` processes at once, from a cold cache: what the disk allows
    (on this machine's simulated disk, its own processes take CPU too), without any hashing."""
    return parallel_hash_floor("64 x cat, no hashing (floor)", "cat", paths, modes=("cold",))


# The hashing loop with nothing around it, as the issue measured it: one process per core (forked
# before any thread exists), each reading its share of the files one at a time, 1 MiB per read.
_BARE_LOOP = """
import hashlib, os, sys
algorithm, listing, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(listing, "rb") as handle:
    paths = handle.read().split(b"\\0")[:-1]
children = []
for index in range(count):
    pid = os.fork()
    if pid == 0:
        view = memoryview(bytearray(1 << 20))
        for path in paths[index::count]:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            digest = hashlib.new(algorithm)
            while True:
                read = os.readv(fd, [view])
                if not read:
                    break
                digest.update(view[:read])
            os.close(fd)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


def python_hash_floor(algorithm: str, paths: List[str]) -> Tool:
    """The files hashed by a bare Python loop in one process per core, from the page cache: what
    Python's hashing (OpenSSL, as fsaudit's) costs with no checker, no engine and no start-up of
    fsaudit around it. Warm only: it reads one file at a time per core, no floor for a slow disk."""
    cores = os.cpu_count() or 1
    command = [sys.executable, "-I", "-S", "-c", _BARE_LOOP, algorithm, _path_list(paths), str(cores)]
    return Tool(f"python loop, {cores} processes (floor)", command, modes=("warm",))
