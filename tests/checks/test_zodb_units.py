"""Pure logic of the zodb checker: tids, pickle references, configs, the index reader, resync."""

from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path

import pytest

from fixtures.zodb import build_storage
from fsaudit_checks.zodb.discovery import parse_config
from fsaudit_checks.zodb.format import tid_time, time_tid
from fsaudit_checks.zodb.pickle import UnreadablePickle, class_name, read_index, record_references
from fsaudit_checks.zodb.walk import Walk
from tests.conftest import require_module


@pytest.fixture(autouse=True, scope="module")
def zodb_installed():
    require_module("ZODB", "pip install 'fsaudit[zodb]'")


class Folder:
    """A class that the unpickler must never import or call."""


def test_tid_time_matches_zodb_timestamp():
    from ZODB.TimeStamp import TimeStamp

    for moment in (0.0, 1_700_000_000.25, 2_000_000_000.9):
        tid = time_tid(moment)
        assert abs(tid_time(tid).timestamp() - TimeStamp(tid).timeTime()) < 1e-3
        assert abs(tid_time(tid).timestamp() - moment) < 1e-3


def _record(state, refs, protocol=3) -> bytes:
    """A ZODB-shaped record: class metadata pickle + state pickle with `refs` as persistent ids."""
    pending = list(refs)

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Marker):
                return pending.pop(0)
            return None

    class Marker:
        pass

    out = io.BytesIO()
    writer = Writer(out, protocol)
    writer.dump((Folder, None))
    writer.dump({"state": state, "children": [Marker() for _ in refs]})
    return out.getvalue()


def test_every_reference_form():
    oid = (1).to_bytes(8, "big")
    other = (2).to_bytes(8, "big")
    refs = [
        oid,
        (other, Folder),
        ["w", (b"\0" * 7 + b"\x03",)],
        [b"\0" * 7 + b"\x04"],
        ["n", ("other-db", b"\0" * 7 + b"\x05")],
        ["m", ("other-db", b"\0" * 7 + b"\x06", Folder)],
    ]
    meta, strong, foreign = record_references(_record("x", refs))
    assert class_name(meta).endswith("test_zodb_units.Folder")
    assert strong == [oid, other]
    assert foreign == 2


def test_python2_pickles_with_binary_oids():
    # FS21 files hold protocol-1 pickles whose oids are Python 2 str (BINSTRING).
    data = (
        b"(c__main__\nThing\nq\x01Ntq\x02." + b"}q\x03U\x04dataq\x04U\x08\x00\x00\x00\x00\x00\x00\x00\xffQs."
    )
    meta, strong, _foreign = record_references(data)
    assert class_name(meta) == "__main__.Thing"
    assert strong == [b"\0" * 7 + b"\xff"]


def test_nothing_from_the_pickle_runs(tmp_path):
    marker = tmp_path / "ran"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    record_references(b"c__main__\nThing\n." + payload)
    assert not marker.exists()


def test_garbage_is_unreadable():
    data = _record("x", [])
    with pytest.raises(UnreadablePickle):
        record_references(data[:10] + b"\xfe\xfe\xfe" + data[13:])
    with pytest.raises(UnreadablePickle):
        record_references(data[: len(data) // 2])


def test_parse_config():
    text = """
    %define INSTANCE /srv/site
    <zeo>
      address 8100
    </zeo>
    <blobstorage main>
      blob-dir ${INSTANCE}/var/blobs
      <filestorage>
        path $INSTANCE/var/Data.fs
      </filestorage>
    </blobstorage>
    <filestorage catalog>
      path var/Catalog.fs
    </filestorage>
    """
    found = parse_config(text, b"/etc/zeo")
    assert [(s.path, s.blob_dir) for s in found] == [
        (b"/srv/site/var/Data.fs", b"/srv/site/var/blobs"),
        (b"/etc/zeo/var/Catalog.fs", None),
    ]


def test_read_index_matches_fsindex(tmp_path):
    from ZODB.fsIndex import fsIndex

    index = fsIndex()
    expected = {}
    for number in list(range(0, 70000, 7)) + [1 << 40]:
        index[number.to_bytes(8, "big")] = number * 3 + 4
        expected[number] = number * 3 + 4
    index.save(123456, str(tmp_path / "Data.fs.index"))
    with open(tmp_path / "Data.fs.index", "rb") as handle:
        covered, buckets = read_index(handle)
        found = {}
        for high, keys, positions in buckets:
            for number, low in enumerate(keys):
                found[high | low] = (positions[2 * number] << 32) | positions[2 * number + 1]
    assert covered == 123456
    assert found == expected


def test_resync_after_a_destroyed_header(tmp_path):
    layout = build_storage(tmp_path, documents=30, blobs=False)
    start, end, _tid = layout.transactions[3]
    following = layout.transactions[4][0]
    with open(layout.path, "r+b") as handle:
        handle.seek(start)
        handle.write(bytes(random.Random(1).randrange(256) for _ in range(40)))
    with open(layout.path, "rb") as handle:
        walk = Walk(handle, os.path.getsize(layout.path))
        problems = list(walk.walk())
    assert walk.unreachable == [(start, following)]
    assert "unreachable-range" in {problem.code for problem in problems}
    assert walk.transactions == len(layout.transactions) - 1


def test_blob_layout_as_zodb_selects_it(tmp_path):
    from ZODB.blob import auto_layout_select

    from fsaudit.target import Target
    from fsaudit_checks.zodb.discovery import blob_layout

    target = Target(tmp_path)
    for setup in ("", "used", "marker"):
        blob_dir = tmp_path / f"blobs-{setup or 'empty'}"
        blob_dir.mkdir()
        if setup == "used":
            (blob_dir / "0x01").mkdir()
        if setup == "marker":
            (blob_dir / ".layout").write_text("bushy\n")
            (blob_dir / "0x01").mkdir()
        inner = "/" + blob_dir.name
        assert blob_layout(target, inner.encode()) == auto_layout_select(str(blob_dir))


def test_fs_named_files_are_storages_only_when_they_look_like_one(tmp_path):
    from fsaudit.target import Target
    from fsaudit_checks.zodb.discovery import looks_like_storage

    (tmp_path / "Program.fs").write_text("module Program\n\n[<EntryPoint>]\nlet main argv = 0\n")
    layout = build_storage(tmp_path / "db", documents=5, blobs=False)
    damaged = tmp_path / "damaged.fs"
    damaged.write_bytes(b"\0\0\0\0" + Path(layout.path).read_bytes()[4:])
    target = Target(tmp_path)
    assert not looks_like_storage(target, b"/Program.fs", b"Program.fs")
    assert looks_like_storage(target, b"/damaged.fs", b"damaged.fs")
    assert looks_like_storage(target, b"/db/Data.fs", b"Data.fs")


def test_oid_map_keeps_sparse_oids_when_the_array_grows():
    from fsaudit_checks.zodb.format import OidMap

    oids = OidMap()
    oids.set(5_000_000, 100, False)  # far beyond the dense part: kept aside
    for oid in range(0, 5_000_001, 50_000):
        oids.records += 50_000
        oids.set(oid, oid + 4, False)
    assert oids.get(5_000_000) == (5_000_004, False)
    assert oids.get(50_000) == (50_004, False)
    assert oids.get(7) is None
    assert len(oids) == len(range(0, 5_000_001, 50_000))


def test_a_pickle_announcing_a_huge_memo_is_unreadable_not_a_memory_spike():
    import resource

    from fsaudit_checks.zodb.pickle import memory_ceiling

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    limit = resource.getrlimit(resource.RLIMIT_DATA)
    # LONG_BINPUT 0x20000000: the C unpickler would allocate and zero an 8 GiB memo.
    damaged = b"c__main__\nThing\n." + b"\x80\x03]r\x00\x00\x00\x20."
    with memory_ceiling(256 << 20), pytest.raises(UnreadablePickle):
        record_references(damaged)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300 << 10  # KiB
    assert resource.getrlimit(resource.RLIMIT_DATA) == limit


def test_a_reused_parser_is_not_confused_by_damage_before():
    from fsaudit_checks.zodb.pickle import RecordParser

    parser = RecordParser()
    good = _record("x", [(1).to_bytes(8, "big")])
    for cut in range(1, len(good)):
        with pytest.raises(UnreadablePickle):
            parser.references(good[:cut])
        assert parser.references(good)[1] == [(1).to_bytes(8, "big")]
