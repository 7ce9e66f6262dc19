"""The zodb checker against real FileStorages built with ZODB, corrupted on purpose, and a real ZEO server."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from fixtures.corrupt import flip_byte, replace_with_fifo, truncate, zero_block
from fixtures.zodb import build_storage, record_of
from tests.conftest import fsaudit, require_module


@pytest.fixture(autouse=True, scope="module")
def zodb_installed():
    require_module("ZODB", "pip install 'fsaudit[zodb]'")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    directory = tmp_path_factory.mktemp("zodb-base")
    layout = build_storage(directory)
    # ZODB leaves its lock and temporary files behind; an audited copy has none.
    for leftover in ("Data.fs.lock", "Data.fs.tmp"):
        if os.path.exists(directory / leftover):
            os.unlink(directory / leftover)
    return layout


def copy_of(base, tmp_path, index=True):
    directory = tmp_path / "var"
    shutil.copytree(os.path.dirname(base.path), directory)
    if not index:
        os.unlink(directory / "Data.fs.index")
    return str(directory / "Data.fs")


def audit(path, *extra):
    return fsaudit("audit", "--check", "zodb", "--format", "json", "--set", f"zodb.paths={path}", *extra)


def write_at(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def snapshot(directory):
    """Names, sizes and mtimes of everything below `directory`: the audit must change none of it."""
    result = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            result[os.path.join(root, name)] = (st.st_size, st.st_mtime_ns)
    return result


def middle(base):
    return base.transactions[len(base.transactions) // 2]


def test_clean_storage_whose_classes_are_missing_is_ok(base, tmp_path):
    path = copy_of(base, tmp_path)
    before = snapshot(tmp_path)
    run = audit(path)
    assert run.code == 0, run.stdout + run.stderr
    assert run.codes("zodb") == {"storage-checked"}
    summary = run.findings("zodb", "storage-checked")[0]
    assert summary["details"]["objects"] > 60
    assert summary["details"]["transactions"] == len(base.transactions)
    assert run.check("zodb")["stats"]["blobs_checked"] == 1
    # Nothing written: no lock file, no index rebuilt, no .tmp, no .tr0.
    assert snapshot(tmp_path) == before


def test_garbage_inside_a_pickle(base, tmp_path):
    path = copy_of(base, tmp_path)
    position = record_of(base, struct.pack(">Q", 0x10))[0]
    write_at(path, position + 42, b"\xfe\xfe\xfe\xfe")
    run = audit(path)
    assert run.code == 2
    assert run.codes("zodb") == {"unreadable-record", "storage-checked"}
    assert run.findings("zodb", "unreadable-record")[0]["details"]["oid"] == "0x10"


@pytest.mark.parametrize("index", [True, False], ids=["with-index", "without-index"])
def test_damaged_redundant_length(base, tmp_path, index):
    path = copy_of(base, tmp_path, index=index)
    start, end, tid = middle(base)
    flip_byte(path, end + 7)
    run = audit(path)
    assert run.code == 2
    assert run.codes("zodb") == {"length-mismatch", "storage-checked"}
    finding = run.findings("zodb", "length-mismatch")[0]
    assert finding["details"]["tid"] == hex(struct.unpack(">Q", tid)[0])
    assert "last intact transaction" in finding["advice"]


def test_damaged_header_length_without_index_hides_nothing(base, tmp_path):
    path = copy_of(base, tmp_path, index=False)
    start, end, _tid = middle(base)
    write_at(path, start + 8, struct.pack(">Q", end - start + 1000))
    run = audit(path)
    assert run.code == 2
    assert run.codes("zodb") == {"length-mismatch", "storage-checked"}
    # The walk recovered the true length, so every transaction after the damage was still checked.
    assert run.findings("zodb", "storage-checked")[0]["details"]["transactions"] == len(base.transactions)


def test_zeroed_block(base, tmp_path):
    path = copy_of(base, tmp_path)
    zero_block(path, 8192, 4096)
    run = audit(path)
    assert run.code == 2
    codes = run.codes("zodb")
    assert {"unreachable-range", "dangling-reference", "index-mismatch"} <= codes
    assert codes & {"record-damaged", "transaction-damaged"}
    lost = run.findings("zodb", "unreachable-range")[0]["details"]
    assert lost["start"] <= 8192 and lost["end"] >= 8192 + 4096
    # The objects written in the lost range are named, among them those that now dangle.
    dangling = {oid for f in run.findings("zodb", "dangling-reference") for oid in f["details"]["missing"]}
    assert dangling & set(lost["oids_written_there"])
    # The walk went on after the damage: the last transaction is still the file's last.
    summary = run.findings("zodb", "storage-checked")[0]["details"]
    assert summary["last_tid"] == hex(struct.unpack(">Q", base.transactions[-1][2])[0])


def test_tail_lost_at_a_transaction_boundary_with_stale_index(base, tmp_path):
    path = copy_of(base, tmp_path)
    truncate(path, base.transactions[-2][0])
    run = audit(path)
    assert run.code == 2
    assert run.codes("zodb") == {"index-beyond-end", "storage-checked"}
    details = run.findings("zodb", "index-beyond-end")[0]["details"]
    assert details["last_good_tid"] == hex(struct.unpack(">Q", base.transactions[-3][2])[0])


def test_torn_tail(base, tmp_path):
    path = copy_of(base, tmp_path, index=False)
    truncate(path, base.transactions[-1][0] + 60)
    run = audit(path)
    assert run.code == 2
    assert run.codes("zodb") == {"truncated-transaction", "storage-checked"}


def test_rewritten_oid_leaves_a_dangling_reference(base, tmp_path):
    path = copy_of(base, tmp_path)
    position = record_of(base, struct.pack(">Q", 0x11))[0]
    write_at(path, position, struct.pack(">Q", 0x7777))
    run = audit(path)
    assert run.code == 2
    assert {"dangling-reference", "index-mismatch"} <= run.codes("zodb")
    missing = {oid for f in run.findings("zodb", "dangling-reference") for oid in f["details"]["missing"]}
    assert missing == {"0x11"}


def test_blob_missing_and_empty(base, tmp_path):
    path = copy_of(base, tmp_path)
    (blob,) = glob.glob(str(tmp_path / "var" / "blobs" / "0x00" / "**" / "*.blob"), recursive=True)
    open(blob, "wb").close()
    run = audit(path)
    assert run.code == 1
    assert run.codes("zodb") == {"blob-empty", "storage-checked"}
    os.unlink(blob)
    run = audit(path)
    assert run.code == 2
    assert run.codes("zodb") == {"blob-missing", "storage-checked"}


def test_bad_magic_is_damage(base, tmp_path):
    path = copy_of(base, tmp_path)
    write_at(path, 0, b"\0\0\0\0")
    run = audit(path)
    assert run.code == 2
    assert "bad-magic" in run.codes("zodb")


def test_fifo_instead_of_the_file_does_not_hang(base, tmp_path):
    path = copy_of(base, tmp_path)
    replace_with_fifo(path)
    run = audit(path)
    assert run.code == 3
    assert run.codes("zodb") == {"unreadable"}


def test_structure_only(base, tmp_path):
    path = copy_of(base, tmp_path)
    position = record_of(base, struct.pack(">Q", 0x10))[0]
    write_at(path, position + 42, b"\xfe\xfe\xfe\xfe")
    run = audit(path, "--set", "zodb.references=false")
    assert run.code == 0
    assert run.codes("zodb") == {"storage-checked"}


def test_history_option_parses_older_revisions(base, tmp_path):
    path = copy_of(base, tmp_path)
    by_oid = {}
    for position, oid, _tid, length in base.records:
        by_oid.setdefault(oid, []).append((position, length))
    # An object edited and then undone: its edited revision is no longer current.
    older = next(revisions[1][0] for revisions in by_oid.values() if len(revisions) == 3 and revisions[1][1])
    write_at(path, older + 42, b"\xfe\xfe\xfe\xfe")
    assert audit(path).code == 0
    run = audit(path, "--set", "zodb.history=true")
    assert run.code == 1
    assert run.codes("zodb") == {"unreadable-revision", "storage-checked"}


def test_damaged_transaction_metadata(base, tmp_path):
    path = copy_of(base, tmp_path)
    start, _end, _tid = middle(base)
    with open(path, "rb") as handle:
        handle.seek(start + 17)
        ulen, dlen, elen = struct.unpack(">HHH", handle.read(6))
    assert elen
    write_at(path, start + 23 + ulen + dlen, b"\xfe\xfe")
    run = audit(path)
    assert run.code == 1
    assert run.codes("zodb") == {"metadata-damaged", "storage-checked"}


def test_written_in_window(base, tmp_path):
    path = copy_of(base, tmp_path)
    run = audit(path, "--window", "2000-01-01..")
    assert run.code == 1
    finding = run.findings("zodb", "written-in-window")[0]
    assert finding["details"]["transactions_in_window"] == len(base.transactions)


def test_found_by_magic_and_from_zeo_config(base, tmp_path):
    root = tmp_path / "vm"
    hidden = root / "srv" / "app" / "storage.bin"
    hidden.parent.mkdir(parents=True)
    shutil.copy(base.path, hidden)
    configured = root / "opt" / "site" / "var" / "filestorage"
    shutil.copytree(os.path.dirname(base.path), configured)
    (root / "etc" / "zeo").mkdir(parents=True)
    (root / "etc" / "zeo" / "zeo.conf").write_text(
        "%define INSTANCE /opt/site\n<zeo>\n  address 8100\n</zeo>\n<blobstorage 1>\n"
        "  blob-dir $INSTANCE/var/filestorage/blobs\n  <filestorage>\n"
        "    path ${INSTANCE}/var/filestorage/Data.fs\n  </filestorage>\n</blobstorage>\n"
        "<filestorage 2>\n  path $INSTANCE/var/gone/Data.fs\n</filestorage>\n"
    )
    run = fsaudit("audit", "--root", root, "--check", "zodb", "--format", "json")
    paths = {f["path"] for f in run.findings("zodb", "storage-checked")}
    assert paths == {"/srv/app/storage.bin", "/opt/site/var/filestorage/Data.fs"}
    assert run.findings("zodb", "storage-missing")[0]["path"] == "/opt/site/var/gone/Data.fs"
    assert run.check("zodb")["stats"]["blobs_checked"] == 1


def test_storages_inside_python_environments_are_library_data_not_searched(base, tmp_path):
    """ZODB ships a FileStorage for its own tests in site-packages: it is nobody's database."""
    import ZODB

    shipped = glob.glob(os.path.join(os.path.dirname(ZODB.__file__), "**", "*.fs"), recursive=True)
    assert shipped, "ZODB no longer ships a test FileStorage: use any storage for this test"
    root = tmp_path / "vm"
    for library in (
        root / "opt" / "venv" / "lib" / "python3.11" / "site-packages" / "ZODB" / "scripts",
        root / "srv" / "app" / "lib" / "python3" / "dist-packages" / "ZODB" / "tests",
    ):
        library.mkdir(parents=True)
        shutil.copy(shipped[0], library / os.path.basename(shipped[0]))
    application = root / "srv" / "app" / "var" / "filestorage"
    application.mkdir(parents=True)
    shutil.copy(base.path, application / "Data.fs")
    run = fsaudit("audit", "--root", root, "--check", "zodb", "--format", "json")
    assert {f["path"] for f in run.findings("zodb", "storage-checked")} == {
        "/srv/app/var/filestorage/Data.fs"
    }
    assert run.check("zodb")["stats"]["python_libraries_not_searched"] == 2


def test_no_storage_is_skipped(tmp_path):
    (tmp_path / "srv").mkdir()
    run = fsaudit("audit", "--root", tmp_path, "--check", "zodb", "--format", "json")
    assert run.check("zodb")["status"] == "skipped"


# -- a live ZEO server --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def zeo_server(tmp_path):
    """Start `runzeo` serving a Data.fs; yields a function (path, blob_dir) -> address."""
    runzeo = os.path.join(os.path.dirname(sys.executable), "runzeo")
    if not os.path.exists(runzeo):
        pytest.fail("runzeo is missing: pip install 'fsaudit[zodb]' (tests/run installs it)")
    processes = []

    def start(path, blob_dir):
        port = _free_port()
        config = tmp_path / f"zeo-{port}.conf"
        config.write_text(
            f"<zeo>\n  address 127.0.0.1:{port}\n</zeo>\n"
            f"<filestorage 1>\n  path {path}\n  blob-dir {blob_dir}\n</filestorage>\n"
        )
        process = subprocess.Popen(
            [runzeo, "-C", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        processes.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"127.0.0.1:{port}"
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"runzeo exited: {process.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        pytest.fail("runzeo did not start listening")

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_file_held_open_by_a_zeo_server(base, tmp_path, zeo_server):
    path = copy_of(base, tmp_path)
    address = zeo_server(path, str(tmp_path / "var" / "blobs"))
    run = audit(path)
    assert run.code == 0, run.stdout + run.stderr
    assert run.codes("zodb") == {"storage-checked"}
    run = fsaudit("audit", "--check", "zodb", "--format", "json", "--set", f"zodb.zeo={address}")
    assert run.code == 0, run.stdout + run.stderr
    summary = run.findings("zodb", "storage-checked")[0]
    assert summary["details"]["objects"] > 60


def test_dangling_reference_through_zeo(base, tmp_path, zeo_server):
    path = copy_of(base, tmp_path, index=False)
    position = record_of(base, struct.pack(">Q", 0x11))[0]
    write_at(path, position, struct.pack(">Q", 0x7777))
    address = zeo_server(path, str(tmp_path / "var" / "blobs"))
    run = fsaudit("audit", "--check", "zodb", "--format", "json", "--set", f"zodb.zeo={address}")
    assert run.code == 2
    assert {f["details"]["missing"][0] for f in run.findings("zodb", "dangling-reference")} == {"0x11"}


def test_unreachable_zeo_server(tmp_path):
    run = fsaudit(
        "audit",
        "--root",
        tmp_path,
        "--check",
        "zodb",
        "--format",
        "json",
        "--set",
        f"zodb.zeo=127.0.0.1:{_free_port()}",
        "--set",
        "zodb.zeo_timeout=2",
    )
    assert run.code == 3
    assert run.codes("zodb") == {"zeo-unreachable"}
