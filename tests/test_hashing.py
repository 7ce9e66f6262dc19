"""The reading engine: the same results at any --jobs and --io-depth, in request order; worker
processes that start from source, die with their parent and hand over to threads when they cannot
start or die; flat memory; sparse and absurd files reported without being read."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from fixtures.corrupt import replace_with_fifo
from fsaudit import reader, workers
from fsaudit.checker import Context
from fsaudit.hashing import (
    ABSURD_SIZE,
    SPARSE,
    DigestBatch,
    HashRequest,
    hash_files,
    hash_one,
    read_files,
    start_workers,
)
from fsaudit.reader import SPARSE_LIMIT, STAT_FIELDS, NotRegularFile
from fsaudit.scan import scan_tree
from fsaudit.target import Target
from tests.conftest import REPO

SETTINGS = [(1, 1), (1, 32), (2, 1), (2, 32), (3, 7)]


@pytest.fixture
def tree(tmp_path):
    """Every kind of outcome: small, empty, multi-block and sparse files, a FIFO, a symlink, a
    directory, a name that is not UTF-8, a missing file, a size that differs."""
    root = tmp_path / "root"
    (root / "d" / "sub").mkdir(parents=True)
    for number in range(300):
        (root / "d" / f"f{number:03d}").write_bytes(os.urandom(number * 37))
    (root / "d" / "empty").write_bytes(b"")
    (root / "d" / "big").write_bytes(os.urandom(9 * (1 << 20) + 12345))
    with open(root / "d" / "holes", "wb") as handle:
        handle.write(b"start")
        handle.truncate(8 << 20)
    os.symlink("f001", root / "d" / "link")
    (root / "d" / "pipe").write_text("")
    replace_with_fifo(root / "d" / "pipe")
    with open(os.fsencode(root / "d") + b"/caf\xe9", "wb") as handle:
        handle.write(b"latin-1 name")
    return root


def _requests(root):
    names = [f"f{n:03d}" for n in range(300)] + ["empty", "big", "holes", "link", "pipe", "sub", "gone"]
    requests = [HashRequest(b"/d/" + name.encode(), "md5", follow=False, key=name) for name in names]
    requests.append(HashRequest(b"/d/caf\xe9", "sha256", follow=False))
    requests.append(HashRequest(b"/d/big", "sha256", expected_size=5, follow=False))
    requests.append(HashRequest(b"/d/f005", "sha1", prefix=b"blob %d\0", follow=False))
    requests.append(HashRequest(b"/d/f006", "sha1", prefix=lambda size: b"blob %d\0" % size, follow=False))
    requests.append(HashRequest(b"/d/link", "md5", follow=True))
    return requests


def _outcome(result):
    error = result.error
    return (
        result.request.path,
        result.digest,
        result.size,
        result.holes,
        result.anomaly,
        type(error).__name__ if error else None,
        getattr(error, "errno", None),
    )


def _hashed_in_order(target, requests, jobs, depth):
    """(results, stats) of hash_files at a setting, the results checked to be in request order."""
    stats = {}
    results = list(hash_files(target, iter(requests), Context(jobs=jobs, io_depth=depth), stats))
    assert [r.request for r in results] == requests
    return results, stats


@pytest.mark.parametrize("jobs,depth", SETTINGS)
def test_every_setting_gives_the_same_results_in_request_order(tree, jobs, depth):
    target = Target(tree)
    requests = _requests(tree)
    results, stats = _hashed_in_order(target, requests, jobs, depth)
    reference = [_outcome(r) for r in hash_files(target, requests, Context(jobs=1, io_depth=1))]
    assert [_outcome(r) for r in results] == reference
    by_name = {r.request.key: r for r in results if r.request.key}
    data = (tree / "d" / "f100").read_bytes()
    assert by_name["f100"].digest == hashlib.md5(data).hexdigest()
    assert by_name["big"].digest == hashlib.md5((tree / "d" / "big").read_bytes()).hexdigest()
    assert by_name["empty"].digest == hashlib.md5(b"").hexdigest()
    assert isinstance(by_name["pipe"].error, NotRegularFile) and by_name["pipe"].error.kind == "FIFO"
    assert isinstance(by_name["sub"].error, NotRegularFile) and by_name["sub"].error.kind == "directory"
    assert isinstance(by_name["gone"].error, FileNotFoundError)
    assert by_name["link"].error.errno == 40  # ELOOP: a final symlink is not followed
    assert by_name["holes"].holes >= (8 << 20) - 8192 and by_name["holes"].digest is not None
    blob = (tree / "d" / "f005").read_bytes()
    git_digest = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
    assert results[-3].digest == git_digest
    assert (
        results[-2].digest
        == hashlib.sha1(b"blob %d\0" % 222 + (tree / "d" / "f006").read_bytes()).hexdigest()
    )
    assert results[-4].digest is None and results[-4].size_differs
    assert results[-1].digest == hashlib.md5((tree / "d" / "f001").read_bytes()).hexdigest()
    assert results[0].st.st_size == 0 and results[0].mtime == os.stat(tree / "d" / "f000").st_mtime
    expected = "worker processes" if jobs > 1 else "threads of one process (--jobs 1)"
    assert expected in stats["reading"] and f"{depth} reads in flight" in stats["reading"]


def test_a_file_is_read_no_further_than_its_size_at_open():
    # /proc files say they hold 0 bytes and then return more: the engine reads what the size said.
    result = hash_one(Target("/"), HashRequest(b"/proc/self/status", "md5", follow=False))
    assert result.size == 0 and result.digest == hashlib.md5(b"").hexdigest()


def test_a_large_file_is_announced_to_the_kernel_ahead_of_its_reads(tmp_path, monkeypatch):
    # On network storage the reads of a large file go out together: every part of the file is
    # announced (POSIX_FADV_WILLNEED) before the reads reach it, half the window ahead of them.
    data = os.urandom(9 * (1 << 20) + 12345)
    (tmp_path / "big").write_bytes(data)
    (tmp_path / "small").write_bytes(data[: reader.BLOCK_SIZE])
    calls = []
    real_readv, real_fadvise = os.readv, os.posix_fadvise

    def readv(fd, buffers):
        calls.append(("read", os.lseek(fd, 0, os.SEEK_CUR)))
        return real_readv(fd, buffers)

    def fadvise(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            calls.append(("announce", offset, length))
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "readv", readv)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    result = hash_one(Target(tmp_path), HashRequest(b"/big", "md5", follow=False))
    assert result.digest == hashlib.md5(data).hexdigest()
    announced = [call[1:] for call in calls if call[0] == "announce"]
    assert announced == [
        (0, reader.AHEAD),
        (reader.AHEAD, reader.AHEAD),
        (2 * reader.AHEAD, len(data) - 2 * reader.AHEAD),
    ]
    covered = 0
    for call in calls:
        if call[0] == "announce":
            covered = call[1] + call[2]
        else:
            assert call[1] + reader.BLOCK_SIZE <= covered or covered == len(data)
            assert covered - call[1] >= min(reader.AHEAD // 2, len(data) - call[1])
    calls.clear()
    small = hash_one(Target(tmp_path), HashRequest(b"/small", "md5", follow=False))
    assert small.digest == hashlib.md5(data[: reader.BLOCK_SIZE]).hexdigest()
    assert not [call for call in calls if call[0] == "announce"]  # one read: nothing to announce


def test_sparse_and_absurd_files_are_reported_and_not_read(tmp_path):
    sparse, absurd = tmp_path / "sparse", tmp_path / "absurd"
    with open(sparse, "wb") as handle:
        handle.truncate(SPARSE_LIMIT * 4)
    fs = os.statvfs(tmp_path)
    with open(absurd, "wb") as handle:
        handle.truncate(fs.f_blocks * fs.f_frsize + (1 << 30))
    target = Target(tmp_path)
    requests = [HashRequest(b"/sparse", "md5"), HashRequest(b"/absurd", "md5")]
    sized = HashRequest(b"/sparse", "md5", expected_size=SPARSE_LIMIT * 4)
    results = list(hash_files(target, requests + [sized], Context(jobs=2)))
    assert results[0].anomaly == SPARSE and results[0].digest is None
    assert results[0].holes == SPARSE_LIMIT * 4
    assert results[1].anomaly == ABSURD_SIZE and results[1].digest is None
    # Where a size is expected and matches, holes are content like any other: hashed.
    assert results[2].anomaly is None and results[2].holes == SPARSE_LIMIT * 4
    assert results[2].digest == hashlib.md5(b"\0" * (SPARSE_LIMIT * 4)).hexdigest()


def test_reading_does_not_change_atimes_in_worker_processes(tree):
    path = tree / "d" / "f010"
    os.utime(path, (1_000_000, 2_000_000))  # atime before mtime: relatime would update it
    list(hash_files(Target(tree), [HashRequest(b"/d/f010", "md5")], Context(jobs=2)))
    assert os.stat(path).st_atime == 1_000_000


def test_memory_stays_flat_over_many_files(tmp_path):
    """30,000 files hashed through a generator by a child process: its peak RSS stays small."""
    for directory in range(30):
        (tmp_path / f"d{directory}").mkdir()
        for number in range(1000):
            (tmp_path / f"d{directory}" / f"f{number}").write_bytes(b"%d" % number)
    script = textwrap.dedent(
        f"""
        import resource
        from fsaudit.checker import Context
        from fsaudit.hashing import HashRequest, hash_files
        from fsaudit.target import Target
        paths = (b"/d%d/f%d" % (d, n) for d in range(30) for n in range(1000))
        requests = (HashRequest(path, "md5", follow=False) for path in paths)
        results = hash_files(Target({str(tmp_path)!r}), requests, Context(jobs=2))
        count = sum(1 for r in results if r.digest)
        # VmHWM, not ru_maxrss: after fork and exec, ru_maxrss still counts the parent's (pytest's) pages.
        peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print(count, peak.split()[1])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    count, peak_kib = map(int, out.stdout.split())
    assert count == 30_000
    assert peak_kib < 64 * 1024, f"peak RSS {peak_kib} KiB"


def _worker_pids(parent: int) -> list:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"fsaudit-reader" in cmdline:
            pids.append(int(entry))
    return pids


def _gone(pids, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    if handle.read().rsplit(")", 1)[1].split()[0] != "Z":
                        alive.append(pid)
            except OSError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_a_stat_from_a_worker_reads_as_the_lstat_of_the_file(tree):
    # reader.Stat stands in for os.stat_result: every st_* field a worker sends, from a hash and
    # from a walk's listing, equals what os.lstat says here (the float times included).
    target = Target(tree)
    workers.shutdown()
    start_workers(Context(jobs=2))
    requests = [HashRequest(b"/d/" + name, "md5", follow=False) for name in (b"f010", b"big", b"holes")]
    for request, result in zip(requests, hash_files(target, requests, Context(jobs=2))):
        here = os.lstat(target.resolve(request.path, follow=False))
        assert [getattr(result.st, name) for name in STAT_FIELDS] == [getattr(here, n) for n in STAT_FIELDS]
        assert result.mtime == here.st_mtime and result.size == here.st_size
    host = target.resolve(b"/d", follow=False)
    walked = {}
    for _inner, directory, listing in scan_tree(host, b"/d", 0, 0, 2, full=lambda st: True, top_full=True):
        for name, _kind, st in listing.records:
            walked[directory + b"/" + name] = st
    assert len(walked) > 300
    for path, st in walked.items():
        here = os.lstat(path)
        assert [getattr(st, name) for name in STAT_FIELDS] == [getattr(here, n) for n in STAT_FIELDS], path
    workers.shutdown()


def test_a_checker_starts_the_workers_before_its_first_request(tree):
    # start_workers: the workers boot while the checker reads its database; even a few requests
    # then go to them, not to threads of this process.
    target = Target(tree)
    workers.shutdown()
    start_workers(Context(jobs=1))
    assert _worker_pids(os.getpid()) == []  # one job: nothing to start
    start_workers(Context(jobs=2))
    started = _worker_pids(os.getpid())
    assert len(started) == 2
    stats = {}
    results = list(hash_files(target, _requests(tree)[:3], Context(jobs=2), stats))
    assert [r.digest for r in results] == [r.digest for r in hash_files(target, _requests(tree)[:3], 1)]
    assert stats["reading"].startswith("2 worker processes")
    assert _worker_pids(os.getpid()) == started
    workers.shutdown()
    assert _gone(started)


def test_workers_start_for_many_files_only_are_reused_and_end_with_shutdown(tree):
    target = Target(tree)
    workers.shutdown()
    stats = {}
    list(hash_files(target, _requests(tree)[:20], Context(jobs=2), stats))
    assert _worker_pids(os.getpid()) == [] and stats["reading"].startswith("threads of one process (only 20")
    list(hash_files(target, _requests(tree), Context(jobs=2), stats))
    first = _worker_pids(os.getpid())
    assert len(first) == 2 and stats["reading"].startswith("2 worker processes")
    list(hash_files(target, _requests(tree)[:20], Context(jobs=2), stats))
    assert stats["reading"].startswith("2 worker processes")  # running workers are used at once
    list(hash_files(target, _requests(tree), Context(jobs=2)))
    assert _worker_pids(os.getpid()) == first  # one pool for the whole audit
    workers.shutdown()
    assert _gone(first) and _worker_pids(os.getpid()) == []


def test_workers_die_with_a_parent_that_is_killed(tree):
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from fsaudit.checker import Context
        from fsaudit.hashing import HashRequest, hash_files
        from fsaudit.target import Target
        requests = [HashRequest(b"/d/f%03d" % n, "md5") for n in range(300)]
        list(hash_files(Target({str(tree)!r}), requests, Context(jobs=2)))
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert child.stdout.readline().strip() == "ready"
        pids = _worker_pids(child.pid)
        assert len(pids) == 2
        child.kill()
        child.wait()
        assert _gone(pids)
    finally:
        child.kill()


@pytest.mark.parametrize("batched", [False, True])
def test_a_worker_that_dies_hands_its_work_to_threads(tree, batched):
    target = Target(tree)
    # More files than a call holds at once: some are handed out only after the workers are killed.
    requests = (_batches(tree) if batched else _requests(tree)) * 30
    outcome = _batch_outcome if batched else _outcome
    reference = [outcome(r) for r in hash_files(target, requests, Context(jobs=1))]
    workers.shutdown()
    workers.Workers.failure = ""
    start_workers(Context(jobs=2, io_depth=2))
    stats = {}
    results = hash_files(target, iter(requests), Context(jobs=2, io_depth=2), stats)
    outcomes = [outcome(next(results))]
    for pid in _worker_pids(os.getpid()):
        os.kill(pid, signal.SIGKILL)
    outcomes.extend(outcome(r) for r in results)
    assert outcomes == reference
    assert "a worker process ended unexpectedly" in stats["reading"]
    workers.Workers.failure = ""  # the next tests may start workers again


def test_without_worker_processes_the_same_reads_run_on_threads(tree):
    """A Python that cannot start another interpreter (no sys.executable, as when embedded): threads,
    and the stats say why."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.executable = ""
        from fsaudit.checker import Context
        from fsaudit.hashing import HashRequest, hash_files
        from fsaudit.target import Target
        stats = {{}}
        requests = [HashRequest(b"/d/f%03d" % n, "md5") for n in range(300)]
        results = list(hash_files(Target({str(tree)!r}), requests, Context(jobs=2), stats))
        print(results[10].digest)
        print(stats["reading"])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    digest, reading = out.stdout.splitlines()
    assert digest == hashlib.md5((tree / "d" / "f010").read_bytes()).hexdigest()
    assert reading.startswith("threads of one process (worker processes could not start")


def test_an_interrupted_call_leaves_no_work_behind(tree):
    target = Target(tree)
    results = hash_files(target, iter(_requests(tree)), Context(jobs=2, io_depth=4))
    next(results)
    results.close()  # the caller stops early (an exception, Ctrl-C)
    assert [_outcome(r) for r in hash_files(target, _requests(tree), Context(jobs=2, io_depth=4))] == [
        _outcome(r) for r in hash_files(target, _requests(tree), Context(jobs=1))
    ]


def test_read_files_runs_a_checker_s_own_reading_in_order_and_stops_with_its_caller():
    started = []

    def read(number):
        started.append(number)
        time.sleep(0.001 * (number % 5))  # finishing out of order
        if number == 150:
            raise ValueError("a bug in the reading code")
        return number * 2

    results = read_files(range(100), read, Context(io_depth=8))
    assert list(results) == [n * 2 for n in range(100)]
    failing = read_files(range(200), read, Context(io_depth=8))
    with pytest.raises(ValueError):
        list(failing)
    started.clear()
    stopped = read_files(range(10_000), read, Context(io_depth=4))
    next(stopped)
    stopped.close()
    time.sleep(0.2)
    assert len(started) < 50  # what was not started when the caller stopped is not read


def _python(code: str, tmp_path) -> dict:
    """Run `code` in a fresh interpreter with this fsaudit; the JSON its last line prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSAUDIT")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_worker_boots_from_the_reader_s_source_where_no_code_can_be_had(tmp_path):
    # A worker gets the reader as code; a loader that has none (an unusual zip, an in-memory
    # module) gives its source, and the workers work the same.
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "file").write_bytes(b"x" * 1000)
    code = f"""
        import json
        from fsaudit import reader, workers
        form, _ = workers._reader_program()
        class NoCode(type(reader.__spec__.loader)):
            def get_code(self, name):
                raise ImportError("no code here")
        reader.__spec__.loader.__class__ = NoCode
        fallback, _ = workers._reader_program()
        from fsaudit.checker import Context
        from fsaudit.hashing import HashRequest, hash_files, start_workers
        from fsaudit.target import Target
        start_workers(Context(jobs=2))
        stats = {{}}
        requests = [HashRequest(b"/file", "md5", follow=False)] * 3
        results = list(hash_files(Target({str(tmp_path / "root")!r}), requests, Context(jobs=2), stats))
        print(json.dumps({{"forms": [form, fallback], "reading": stats["reading"],
                           "digests": [r.digest for r in results]}}))
        """
    found = _python(code, tmp_path)
    assert found["forms"] == ["code", "source"] and "2 worker processes" in found["reading"]
    assert found["digests"] == [hashlib.md5(b"x" * 1000).hexdigest()] * 3


def test_a_worker_reads_a_window_in_turn_and_spreads_it_over_more_readers_once_reads_wait(tmp_path):
    # From the page cache a worker runs a message's hash jobs in turn on its one reader; when a read
    # waits (a network disk: here every read sleeps 20 ms), the rest of the window goes back to the
    # queue job by job and more readers take them. Every job is answered once, whichever way.
    for number in range(64):
        (tmp_path / f"f{number:02d}").write_bytes(b"%d" % number)
    probe = tmp_path / "most-at-once"
    code = textwrap.dedent(
        f"""
        import sys, threading, time
        from fsaudit import reader
        slow = sys.argv.pop() == "slow"
        run, active, lock = reader.Jobs.run, [0, 0], threading.Lock()
        def counted(self, *args):
            with lock:
                active[0] += 1
                active[1] = max(active)
                open({str(probe)!r}, "w").write(str(active[1]))
            try:
                if slow:
                    time.sleep(0.02)
                return run(self, *args)
            finally:
                with lock:
                    active[0] -= 1
        reader.Jobs.run = counted
        reader.main()
        """
    )
    for mode, concurrent in (("cached", False), ("slow", True)):
        worker = subprocess.Popen(
            [sys.executable, "-c", code, "16", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            assert reader.read_frame(worker.stdout)[0] == "ready"
            jobs = [
                (seq, os.fsencode(tmp_path / f"f{seq:02d}"), reader.HOST, "md5", -1, None, None)
                for seq in range(64)
            ]
            reader.write_frame(worker.stdin.fileno(), ("hash", 1, (b"", False), jobs))
            answered = []
            while len(answered) < 64:
                message = reader.read_frame(worker.stdout)
                assert message[0] == "done" and message[1] == 1
                answered += [(reply[0], reply[2]) for reply in message[2]]
        finally:
            worker.stdin.close()
            worker.wait(timeout=30)
        assert sorted(answered) == [(n, hashlib.md5(b"%d" % n).hexdigest()) for n in range(64)]
        most = int(probe.read_text())
        assert most > 1 if concurrent else most == 1, (mode, most)


def _batches(root):
    """Every file of the tree in batches of 7, each with its right digest except a few."""
    names = [f"f{n:03d}" for n in range(300)] + ["empty", "big", "holes", "link", "pipe", "sub", "gone"]
    paths, hosts, digests = [], [], []
    for name in names:
        host = os.fsencode(root / "d" / name)
        digest = "0" * 32
        if os.path.isfile(host):
            with open(host, "rb") as handle:
                digest = hashlib.md5(handle.read()).hexdigest()
        paths.append(b"/d/" + name.encode())
        hosts.append(host)
        digests.append("f" * 32 if name in ("f007", "f123") else digest)
    return [
        DigestBatch(paths[start : start + 7], hosts[start : start + 7], digests[start : start + 7], key=start)
        for start in range(0, len(names), 7)
    ]


@pytest.mark.parametrize("jobs,depth", SETTINGS)
def test_a_batch_sends_back_only_what_does_not_match(tree, jobs, depth):
    # Files that have their expected digests come back as a size and an mtime; every other file
    # comes back as its own request would, at any setting.
    target = Target(tree)
    batches = _batches(tree)
    results, stats = _hashed_in_order(target, batches, jobs, depth)
    others = {}
    for batch, result in zip(batches, results):
        assert len(result.sizes) == len(result.mtimes) == len(batch.hosts)
        for index, host in enumerate(batch.hosts):
            if index in result.others:
                others[batch.paths[index]] = result.others[index]
                assert result.sizes[index] == -1
                continue
            here = os.lstat(host)
            assert (result.sizes[index], result.mtimes[index]) == (here.st_size, here.st_mtime)
        single = [batch.request(index) for index in sorted(result.others)]
        alone = list(hash_files(target, single, Context(jobs=1)))
        assert [_outcome(r) for r in result.others.values()] == [_outcome(r) for r in alone]
        assert result.matched_bytes == sum(
            os.lstat(batch.hosts[i]).st_size for i in range(len(batch.hosts)) if i not in result.others
        )
    assert sorted(others) == [
        b"/d/" + name for name in (b"f007", b"f123", b"gone", b"holes", b"link", b"pipe", b"sub")
    ]
    assert others[b"/d/f007"].digest == hashlib.md5((tree / "d" / "f007").read_bytes()).hexdigest()
    assert others[b"/d/holes"].holes > 0  # holes are reported, matched or not
    assert isinstance(others[b"/d/gone"].error, FileNotFoundError)
    assert isinstance(others[b"/d/pipe"].error, NotRegularFile)
    assert others[b"/d/link"].error.errno == 40  # ELOOP: a batch never follows a final symlink
    expected = "worker processes" if jobs > 1 else "threads of one process (--jobs 1)"
    assert expected in stats["reading"]


def _batch_outcome(result):
    return result.sizes, result.mtimes, {index: _outcome(other) for index, other in result.others.items()}


def test_a_worker_that_runs_out_takes_over_half_of_what_another_still_holds(tree, monkeypatch):
    # Once every request is handed out, an idle worker is given copies of the last requests a busy
    # one holds; whichever reads a file first answers, and the results are those of one reader.
    target = Target(tree)
    batches = _batches(tree)
    reference = [_batch_outcome(r) for r in hash_files(target, batches, Context(jobs=1))]
    workers.shutdown()
    workers.Workers.failure = ""
    start_workers(Context(jobs=2, io_depth=2))
    pool = workers.Workers.current
    sent = {0: [], 1: []}
    send_to = pool.send_to

    def slow_first_worker(index, kind, epoch, header, jobs):
        sent[index] += [job[0] for job in jobs]
        if index == 0:  # its first message arrives late: the other worker runs out meanwhile
            threading.Timer(0.5, send_to, (index, kind, epoch, header, jobs)).start()
            return True
        return send_to(index, kind, epoch, header, jobs)

    monkeypatch.setattr(pool, "send_to", slow_first_worker)
    results = [_batch_outcome(r) for r in hash_files(target, iter(batches), Context(jobs=2, io_depth=2))]
    assert results == reference
    assert set(sent[0]) & set(sent[1]), sent  # copies went to the idle worker
    workers.shutdown()
