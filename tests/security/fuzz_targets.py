"""The parsers of untrusted bytes, each as a fuzz target: a hypothesis strategy of inputs (random bytes,
and real artefacts with bytes flipped, cut, duplicated or inserted) and a function that runs the parser
and asserts its contract: it returns, or raises only the error its callers handle, and what it returns
is well formed. Used by tests/security/test_fuzz_*.py (a short run in the suite) and by
benchmarks/fuzz.py (a long run in a memory-capped child process).
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import json
import lzma
import os
import pickle
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

from hypothesis import strategies as st

MAX_INPUT = 64 << 10


@dataclass(frozen=True)
class Target:
    name: str
    inputs: Callable[[], st.SearchStrategy]
    run: Callable[[bytes], None]


# -- turning real artefacts into damaged ones ----------------------------------------------------------


@st.composite
def _mutated(draw, seeds: List[bytes]) -> bytes:
    """A seed with a few edits of the kinds lost writes and attackers make."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "zero", "repeat", "number"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(max_size=32))
        elif kind == "zero":
            data[at : at + 16] = bytes(len(data[at : at + 16]))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 256))] * draw(st.integers(1, 8))
        elif kind == "number" and len(data) >= at + 4:
            # Lengths and counts are where parsers trust their input most.
            value = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            data[at : at + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), value)
    return bytes(data[:MAX_INPUT])


def _inputs(seeds: Callable[[], List[bytes]]) -> Callable[[], st.SearchStrategy]:
    def strategy() -> st.SearchStrategy:
        return st.one_of(st.binary(max_size=4096), _mutated(seeds()))

    return strategy


# -- dpkg database files --------------------------------------------------------------------------------

_STATUS = (
    b"Package: demo\nStatus: install ok installed\nPriority: optional\nVersion: 1.0-1\n"
    b"Architecture: all\nConffiles:\n /etc/demo.conf 0123456789abcdef0123456789abcdef\n"
    b" /etc/old.conf 0123456789abcdef0123456789abcdef obsolete\nDescription: demo\n continued\n\n"
    b"Package: other\nStatus: deinstall ok config-files\nVersion: 2\n\n"
)
_MD5SUMS = b"".join(b"%032x  usr/share/demo/file%d\n" % (n * 7919, n) for n in range(40))
_LIST = b"/.\n/usr\n/usr/share\n/usr/share/demo\n" + b"".join(
    b"/usr/share/demo/file%d\n" % n for n in range(40)
)
_DIVERSIONS = b"/usr/bin/a\n/usr/bin/a.real\nwrap\n/etc/b\n/etc/b.local\n:\n"


@functools.cache
def _scratch_root() -> str:
    root = tempfile.mkdtemp(prefix="fsaudit-fuzz-")
    os.makedirs(os.path.join(root, "var/lib/dpkg/info"))
    os.makedirs(os.path.join(root, "var/lib/dpkg/updates"))
    return root


def _in_root(inner: str, data: bytes):
    from fsaudit.target import Target as AuditedRoot

    root = _scratch_root()
    with open(os.path.join(root, inner.lstrip("/")), "wb") as out:
        out.write(data)
    return AuditedRoot(root)


def _reference_lines(data: bytes) -> List[bytes]:
    return data.split(b"\n")


def run_dpkg_status(data: bytes) -> None:
    from fsaudit_checks.debian import dpkg_db

    packages, damage, applied = dpkg_db.read_status(_in_root("/var/lib/dpkg/status", data))
    assert applied == 0
    for key, package in packages.items():
        assert key == (package.name, package.architecture) and package.name
    assert all(isinstance(item, dpkg_db.Damage) for item in damage)
    # The paragraphs are those of the plain line-by-line reading (blank lines separate them).
    expected = []
    lines: List[bytes] = []
    for line in _reference_lines(data):
        if line.strip():
            lines.append(line)
        elif lines:
            expected.append(lines)
            lines = []
    if lines:
        expected.append(lines)
    got = [
        paragraph
        for _, paragraph in dpkg_db._paragraphs(
            dpkg_db.Lines(_in_root("/var/lib/dpkg/status", data), b"/var/lib/dpkg/status", 1 << 30), []
        )
    ]
    assert got == expected


def run_dpkg_md5sums(data: bytes) -> None:
    from fsaudit_checks.debian import dpkg_db

    sums, damage = dpkg_db.read_md5sums(
        _in_root("/var/lib/dpkg/info/p.md5sums", data), b"/var/lib/dpkg/info/p.md5sums"
    )
    # The plain reading: every complete line "MD5  NAME" (or " *"), the last line only with its newline.
    lines = data.split(b"\n")
    expected = {}
    bad = 0
    for line in lines[:-1]:
        if not line:
            continue
        md5, separator, name = line[:32], line[32:34], line[34:]
        if (
            len(md5) == 32
            and all(c in b"0123456789abcdefABCDEF" for c in md5)
            and separator in (b"  ", b" *")
            and name
            and b"\0" not in name
        ):
            expected[b"/" + name.lstrip(b"/")] = md5.decode().lower()
        else:
            bad += 1
    assert sums == expected
    assert sum(d.count for d in damage if d.problem == "malformed lines") == bad
    assert any("newline" in d.problem for d in damage) == bool(lines[-1])


def run_dpkg_list(data: bytes) -> None:
    from fsaudit_checks.debian import dpkg_db

    paths, damage = dpkg_db.read_list(
        _in_root("/var/lib/dpkg/info/p.list", data), b"/var/lib/dpkg/info/p.list"
    )
    lines = data.split(b"\n")
    expected = [
        line.rstrip(b"/") or b"/"
        for line in lines
        if line.startswith(b"/") and b"\0" not in line and line != b"/."
    ]
    bad = sum(1 for line in lines if line and not (line.startswith(b"/") and b"\0" not in line))
    assert paths == expected
    assert sum(d.count for d in damage if d.problem.startswith("lines that")) == bad


def run_dpkg_diversions(data: bytes) -> None:
    from fsaudit_checks.debian import placement

    diversions, damage = placement.read_diversions(_in_root("/var/lib/dpkg/diversions", data))
    for source, diversion in diversions.items():
        assert source.startswith(b"/") and diversion.to.startswith(b"/") and diversion.package


# -- rpm headers and Berkeley DB pages -----------------------------------------------------------------------


def rpm_header(tags: Dict[int, tuple]) -> bytes:
    """A header blob (no lead): {tag: (type, value)} with rpm's alignment rules."""
    from fsaudit_checks.rpm import header as hdr

    index, data = [], bytearray()
    for tag, (kind, value) in sorted(tags.items()):
        align = {hdr.INT16: 2, hdr.INT32: 4, hdr.INT64: 8}.get(kind, 1)
        data += bytes(-len(data) % align)
        offset = len(data)
        if kind == hdr.STRING:
            data += value + b"\0"
            count = 1
        elif kind in (hdr.STRING_ARRAY, hdr.I18NSTRING):
            data += b"".join(v + b"\0" for v in value)
            count = len(value)
        elif kind == hdr.BIN:
            data += value
            count = len(value)
        else:
            data += struct.pack(
                ">"
                + {hdr.INT16: "H", hdr.INT32: "I", hdr.INT64: "Q", hdr.INT8: "B", hdr.CHAR: "B"}[kind]
                * len(value),
                *value,
            )
            count = len(value)
        index.append(struct.pack(">IIiI", tag, kind, offset, count))
    return struct.pack(">II", len(index), len(data)) + b"".join(index) + bytes(data)


@functools.cache
def rpm_seeds() -> List[bytes]:
    from fsaudit_checks.rpm import header as hdr

    files = 5
    base = {
        hdr.NAME: (hdr.STRING, b"demo"),
        hdr.VERSION: (hdr.STRING, b"1.0"),
        hdr.RELEASE: (hdr.STRING, b"1"),
        hdr.ARCH: (hdr.STRING, b"noarch"),
        hdr.BASENAMES: (hdr.STRING_ARRAY, [b"f%d" % n for n in range(files)]),
        hdr.DIRNAMES: (hdr.STRING_ARRAY, [b"/usr/share/demo/", b"/etc/"]),
        hdr.DIRINDEXES: (hdr.INT32, [n % 2 for n in range(files)]),
        hdr.FILESIZES: (hdr.INT32, [n * 10 for n in range(files)]),
        hdr.FILEMODES: (hdr.INT16, [0o100644] * files),
        hdr.FILEMTIMES: (hdr.INT32, [1_600_000_000] * files),
        hdr.FILEDIGESTS: (
            hdr.STRING_ARRAY,
            [hashlib.sha256(b"%d" % n).hexdigest().encode() for n in range(files)],
        ),
        hdr.FILEDIGESTALGO: (hdr.INT32, [8]),
        hdr.FILEFLAGS: (hdr.INT32, [0, 1, 0, 64, 0]),
        hdr.FILEUSERNAME: (hdr.STRING_ARRAY, [b"root"] * files),
        hdr.FILEGROUPNAME: (hdr.STRING_ARRAY, [b"root"] * files),
        hdr.FILESTATES: (hdr.CHAR, [0] * files),
        hdr.FILELINKTOS: (hdr.STRING_ARRAY, [b""] * files),
    }
    old = {k: v for k, v in base.items() if k not in (hdr.BASENAMES, hdr.DIRNAMES, hdr.DIRINDEXES)}
    old[hdr.OLDFILENAMES] = (hdr.STRING_ARRAY, [b"/old/f%d" % n for n in range(files)])
    return [rpm_header(base), rpm_header(old)]


def run_rpm_header(data: bytes) -> None:
    from fsaudit_checks.rpm import header as hdr

    try:
        header = hdr.Header(data)
    except hdr.HeaderError:
        return
    for action in (
        lambda: hdr.file_entries(header),
        header.check_digest,
        header.immutable_region,
        lambda: hdr.version_string(header),
        lambda: hdr.digest_algorithm(header),
        lambda: [header.get(tag) for tag in list(header.entries)[:64]],
    ):
        try:
            action()
        except hdr.HeaderError:
            pass


@functools.cache
def bdb_seeds() -> List[bytes]:
    """Berkeley DB hash files as rpm's legacy backend wrote them, made by db5.3_load (when present)."""
    loader = shutil.which("db5.3_load") or shutil.which("db_load")
    if loader is None:
        return [b"\0" * 12 + struct.pack("<I", 0x061561) + b"\0" * 496]
    seeds = []
    with tempfile.TemporaryDirectory() as scratch:
        for page_size, blob_size in ((512, 100), (1024, 3000)):
            blobs = [rpm_seeds()[0] + b"x" * blob_size for _ in range(3)]
            lines = ["VERSION=3", "format=bytevalue", "type=hash", f"db_pagesize={page_size}", "HEADER=END"]
            lines += [" " + struct.pack("<I", 0).hex(), " " + struct.pack("<I", 4).hex()]
            for number, blob in enumerate(blobs, 1):
                lines += [" " + struct.pack("<I", number).hex(), " " + blob.hex()]
            lines.append("DATA=END")
            dump = os.path.join(scratch, f"dump{page_size}")
            Path(dump).write_text("\n".join(lines) + "\n")
            out = os.path.join(scratch, f"Packages{page_size}")
            subprocess.run([loader, "-f", dump, out], check=True, capture_output=True)
            seeds.append(Path(out).read_bytes()[:MAX_INPUT])
    return seeds


def run_rpm_bdb(data: bytes) -> None:
    from fsaudit_checks.rpm import db

    target = _in_root("/var/lib/dpkg/Packages", data)
    reader = db.BdbHashReader(target, b"/var/lib/dpkg/Packages")
    for item in reader.records():
        assert isinstance(item, (db.Record, db.Damage))


# -- ZODB ---------------------------------------------------------------------------------------------------


@functools.cache
def zodb_record_seeds() -> List[bytes]:
    class Ref:  # pickled as a persistent reference
        def __init__(self, oid, klass=None):
            self.oid, self.klass = oid, klass

    def dumps(meta, state, protocol):
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, protocol)
        pickler.persistent_id = lambda obj: (obj.oid, obj.klass) if isinstance(obj, Ref) else None
        pickler.dump(meta)
        pickler.dump(state)
        return buffer.getvalue()

    state = {
        "title": "a page",
        "children": [Ref(b"\0" * 7 + b"\x02", ("app", "Doc")), Ref(b"\0" * 7 + b"\x03")],
    }
    return [dumps(("persistent.mapping", "PersistentMapping"), state, protocol) for protocol in (1, 2, 3)] + [
        dumps((("app", "Doc"), None), {"data": [1.5, 2, b"x" * 40]}, 2)
    ]


def run_zodb_record(data: bytes) -> None:
    from fsaudit_checks.zodb.pickle import RecordParser, UnreadablePickle, memory_ceiling

    parser = RecordParser()
    try:
        # As the checker parses them: under a cap, so a memo index of 400 million fails at once.
        with memory_ceiling(1 << 30):
            _meta, strong, foreign = parser.references(data)
    except UnreadablePickle:
        return
    assert all(isinstance(oid, bytes) for oid in strong) and foreign >= 0


@functools.cache
def zodb_storage_seeds() -> List[bytes]:
    try:
        import transaction
        import ZODB
        import ZODB.FileStorage
        from persistent.mapping import PersistentMapping
    except ImportError:
        return [b"FS21"]
    with tempfile.TemporaryDirectory() as scratch:
        storage = ZODB.FileStorage.FileStorage(os.path.join(scratch, "Data.fs"))
        database = ZODB.DB(storage)
        connection = database.open()
        root = connection.root()
        for number in range(4):
            root[f"item{number}"] = PersistentMapping({"n": number, "text": "x" * 50})
            transaction.commit()
        connection.close()
        database.close()
        return [Path(scratch, "Data.fs").read_bytes()[:MAX_INPUT]]


def run_zodb_storage(data: bytes) -> None:
    from fsaudit_checks.zodb.walk import Walk

    walk = Walk(io.BytesIO(data), len(data), now=2_000_000_000)
    for _problem in walk.walk():
        pass
    for _item in walk.iter_records():
        pass
    for _problem in walk.verify_backs():
        pass


# -- git --------------------------------------------------------------------------------------------------


@functools.cache
def git_index_seeds() -> List[bytes]:
    seeds = []
    with tempfile.TemporaryDirectory() as scratch:
        for version in ("2", "3", "4"):
            tree = Path(scratch, f"v{version}")
            tree.mkdir()
            run = functools.partial(subprocess.run, cwd=tree, check=True, capture_output=True)
            run(["git", "init", "-q"])
            for name in ("a.txt", "dir/b.txt", "dir/sub/c.bin", "z"):
                Path(tree, name).parent.mkdir(parents=True, exist_ok=True)
                Path(tree, name).write_bytes(name.encode() * 3)
            run(["git", "-c", f"index.version={version}", "add", "-A"])
            if version == "3":
                run(["git", "update-index", "--skip-worktree", "z"])
            seeds.append(Path(tree, ".git", "index").read_bytes())
    return seeds


def run_git_index(data: bytes) -> None:
    from fsaudit_checks.git.index import IndexDamaged, read_index

    try:
        entries = read_index(data)
    except IndexDamaged:
        return
    for entry in entries:
        assert entry.path and not entry.path.startswith(b"/") and b".." not in entry.path.split(b"/")
        assert len(entry.object_id) == 40


_CONFIG = (
    b"[core]\n\trepositoryformatversion = 1\n\tbare = false\n\tautocrlf\n"
    b"[extensions]\n\tobjectFormat = sha1\n"
    b'[remote "origin"]\n\turl = "ssh://x/y" ; comment\n\tpromisor = true\n[a.b]\n\tc = x\\\n y\n'
)


def run_git_config(data: bytes) -> None:
    from fsaudit_checks.git.config import ConfigDamaged, parse_config

    try:
        entries = parse_config(data)
    except ConfigDamaged:
        return
    for key, value in entries:
        assert "." in key and (value is None or isinstance(value, str))


# -- baselines, logs, reports --------------------------------------------------------------------------------


@functools.cache
def baseline_seeds() -> List[bytes]:
    from fsaudit_checks.baseline.format import FORMAT, Entry

    lines = [json.dumps({"format": FORMAT, "root": "/", "created": "2014-06-01T00:00:00+00:00"}) + "\n"]
    for number in range(5):
        entry = Entry(
            b"/srv/caf\xe9%d" % number, "file", number, 0o100644, 0, 0, 1_600_000_000 * 10**9, "0" * 64
        )
        lines.append(entry.to_line())
    lines.append(Entry(b"/srv/link", "link", 4, 0o120777, 0, 0, 0, link=b"f0").to_line())
    lines.append(json.dumps({"end": True, "entries": 6}) + "\n")
    return [gzip.compress("".join(lines).encode())]


def run_baseline(data: bytes) -> None:
    from fsaudit_checks.baseline.format import BaselineDamaged, read_baseline

    try:
        _header, entries = read_baseline(io.BytesIO(data))
        for _entry in entries:
            pass
    except BaselineDamaged:
        return


_TEXT = b"".join(b"Jun  3 12:00:%02d host kernel: line %d\n" % (n % 60, n) for n in range(200))


@functools.cache
def log_seeds() -> List[bytes]:
    return [
        gzip.compress(_TEXT),
        gzip.compress(_TEXT) * 2,
        bz2.compress(_TEXT),
        lzma.compress(_TEXT),
        zlib.compress(_TEXT),
    ]


def run_log_decompression(data: bytes) -> None:
    from fsaudit_checks.logs.files import Decompressed, compression

    kind = compression(data[:6])
    for chosen in {kind, "gzip", "bzip2", "xz"} - {"plain", "zstd"}:
        stream = Decompressed(io.BytesIO(data), chosen)
        total = 0
        while total < 64 << 20:
            block = stream.read(1 << 16)
            assert len(block) <= 1 << 16
            if not block:
                break
            total += len(block)
        assert isinstance(stream.error, str)


@functools.cache
def report_seeds() -> List[bytes]:
    from fsaudit.model import Finding, Report

    report = Report.from_dict(
        {
            "format": "fsaudit-report/1",
            "host": {"hostname": "vm42", "os": "Debian"},
            "checks": [
                {
                    "name": "debian",
                    "status": "critical",
                    "stats": {"files_verified": 3},
                    "findings": [
                        Finding(
                            check="debian",
                            code="content-differs",
                            severity="critical",
                            message="m",
                            path=b"/usr/bin/caf\xe9",
                            details={"expected_md5": "0" * 32},
                        ).to_dict()
                    ],
                }
            ],
        }
    )
    return [report.to_json().encode()]


def run_report_json(data: bytes) -> None:
    from fsaudit.model import Report

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        report = Report.from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError):
        # What fsaudit's readers of reports (cli/common.py, fleet/remote.py) turn into a refusal.
        return
    again = Report.from_json(report.to_json())
    assert again == report


# -- the content checker's validators, through their capped worker -------------------------------------------


@functools.cache
def _content_pool():
    import atexit

    from fsaudit_checks.content.formats import Limits
    from fsaudit_checks.content.worker import WorkerPool

    pool = WorkerPool(1, 512 << 20, 20, Limits())
    atexit.register(pool.close)
    return pool


@functools.cache
def content_seeds() -> List[bytes]:
    import importlib.util
    import marshal
    import tarfile
    import zipfile

    text = _TEXT
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("a.txt", text)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as handle:
        info = tarfile.TarInfo("a.txt")
        info.size = len(text)
        handle.addfile(info, io.BytesIO(text))
    pyc = importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(compile("x = [1, 2.5, 'a']", "m", "exec"))
    return [
        b"\x00" + gzip.compress(text),
        b"\x01" + bz2.compress(text),
        b"\x02" + lzma.compress(text),
        b"\x03" + archive.getvalue(),
        b"\x04" + tar.getvalue(),
        b"\x05" + pyc,
        b"\x06" + json.dumps({"a": [1, 2, {"b": None}]}).encode(),
        b"\x07" + b"<?xml version='1.0'?><a><b x='1'>t</b></a>",
        b"\x08" + b"[s]\nk = 'v'\n",
        b"\x09" + b"a: [1, 2]\nb: {c: d}\n",
        b"\x0a" + b"def f():\n    return 1\n",
        b"\x0b" + Path(shutil.which("true") or "/bin/true").read_bytes()[:8192],
    ]


_CONTENT_NAMES = (
    "f.gz",
    "f.bz2",
    "f.xz",
    "f.zip",
    "f.tar",
    "f.pyc",
    "f.json",
    "f.xml",
    "f.toml",
    "f.yaml",
    "f.py",
    "f",
    "f.png",
    "f.sqlite",
    "f.txt",
    "f.zst",
)


def run_content_formats(data: bytes) -> None:
    from fsaudit.target import Target as AuditedRoot
    from fsaudit_checks.content.formats import Cut, Job, Problem, Unsupported, recognise

    name = _CONTENT_NAMES[data[0] % len(_CONTENT_NAMES)] if data else "f"
    path = os.path.join(_scratch_root(), name)
    with open(path, "wb") as out:
        out.write(data[1:])
    root = AuditedRoot(_scratch_root())
    with root.open("/" + name, follow=False) as handle:
        fmt, magic_ok = recognise(b"/" + name.encode(), handle.read(16))
        if fmt is None or not magic_ok:
            return
        try:
            result = _content_pool().check(fmt, Job(b"/" + name.encode()), handle)
        except (Unsupported, Cut) as reason:
            assert "failed" not in str(reason), reason  # a validator's own exception
            return
    assert result is None or isinstance(result, Problem)


TARGETS = {
    target.name: target
    for target in (
        Target("dpkg-status", _inputs(lambda: [_STATUS]), run_dpkg_status),
        Target("dpkg-md5sums", _inputs(lambda: [_MD5SUMS]), run_dpkg_md5sums),
        Target("dpkg-list", _inputs(lambda: [_LIST]), run_dpkg_list),
        Target("dpkg-diversions", _inputs(lambda: [_DIVERSIONS]), run_dpkg_diversions),
        Target("rpm-header", _inputs(rpm_seeds), run_rpm_header),
        Target("rpm-bdb", _inputs(bdb_seeds), run_rpm_bdb),
        Target("zodb-record", _inputs(zodb_record_seeds), run_zodb_record),
        Target("zodb-storage", _inputs(zodb_storage_seeds), run_zodb_storage),
        Target("git-index", _inputs(git_index_seeds), run_git_index),
        Target("git-config", _inputs(lambda: [_CONFIG]), run_git_config),
        Target("baseline", _inputs(baseline_seeds), run_baseline),
        Target("log-decompression", _inputs(log_seeds), run_log_decompression),
        Target("report-json", _inputs(report_seeds), run_report_json),
        Target("content-formats", _inputs(content_seeds), run_content_formats),
    )
}
