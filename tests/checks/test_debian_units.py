"""Pure logic of the `debian` checker: database parsing, path filters, damage classification,
reading .deb files, and the mapping of read errors to findings."""

from __future__ import annotations

import errno
import hashlib
import io
import random

import pytest

from fixtures.debian import bomb_deb, make_deb, make_root
from fsaudit import bounded
from fsaudit.hashing import HashRequest, HashResult
from fsaudit.target import Target
from fsaudit_checks.debian import classify, debfile, dpkg_db, placement
from fsaudit_checks.debian.plan import Item, Owner
from fsaudit_checks.debian.verdicts import Judge


def test_paragraph_with_garbage_is_damage_and_the_rest_is_kept():
    lines = [b"Package: a", b"\x00garbage", b"Version: 1", b" continued"]
    fields, damage = dpkg_db.parse_paragraph(lines, b"/status", 10)
    assert fields == {"package": "a", "version": "1\n continued"}
    assert [(d.line, d.problem.startswith("malformed line")) for d in damage] == [(11, True)]


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            " /etc/a.conf 0123456789abcdef0123456789abcdef",
            (b"/etc/a.conf", "0123456789abcdef0123456789abcdef", False),
        ),
        (
            " /etc/with space.conf 0123456789abcdef0123456789abcdef obsolete",
            (b"/etc/with space.conf", "0123456789abcdef0123456789abcdef", True),
        ),
        (" /etc/new.conf newconffile", (b"/etc/new.conf", "newconffile", False)),
        (" /etc/x.conf 0123 remove-on-upgrade", None),
        (" etc/relative 0123456789abcdef0123456789abcdef", None),
    ],
)
def test_conffile_lines(line, expected):
    conffile = dpkg_db.parse_conffile(line)
    assert (conffile and (conffile.path, conffile.md5, conffile.obsolete)) == expected


def test_later_path_rules_win():
    rules = placement.PathFilter([(True, b"/usr/share/doc/*"), (False, b"/usr/share/doc/*/copyright")])
    assert rules.excluded(b"/usr/share/doc/a/README")
    assert not rules.excluded(b"/usr/share/doc/a/copyright")
    assert not rules.excluded(b"/usr/bin/a")


def test_truncated_md5sums_drops_the_cut_line(tmp_path):
    root = make_root(tmp_path / "root")
    info = root / "var/lib/dpkg/info/p.md5sums"
    info.write_bytes(
        b"d41d8cd98f00b204e9800998ecf8427e  usr/bin/a\nnot a line\nd41d8cd98f00b204e9800998ecf8427e  usr/bi"
    )
    sums, damage = dpkg_db.read_md5sums(Target(root), b"/var/lib/dpkg/info/p.md5sums")
    assert sums == {b"/usr/bin/a": "d41d8cd98f00b204e9800998ecf8427e"}
    assert sorted(d.problem.split(":")[0] for d in damage) == [
        "malformed lines",
        "the file does not end with a newline",
    ]


@pytest.mark.parametrize("limit", [25, 10])
def test_file_lists_and_md5sums_stop_at_the_most_paths_a_package_holds(tmp_path, monkeypatch, limit):
    # Within the bound, every line is taken (the common case, without a step per line); past it,
    # the rest is not read and the damage names the first line left out.
    monkeypatch.setattr(dpkg_db, "MAX_PATHS", limit)
    info = tmp_path / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    names = [b"/usr/share/p/f%02d" % n for n in range(20)]
    (info / "p.list").write_bytes(b"/.\n/usr/share/p/\n" + b"".join(name + b"\n" for name in names))
    (info / "p.md5sums").write_bytes(b"".join(b"%032X  %s\n" % (n, name[1:]) for n, name in enumerate(names)))
    listed, list_damage = dpkg_db.read_list(Target(tmp_path), b"/var/lib/dpkg/info/p.list")
    sums, sums_damage = dpkg_db.read_md5sums(Target(tmp_path), b"/var/lib/dpkg/info/p.md5sums")
    if limit == 25:
        assert listed == [b"/usr/share/p"] + names and not list_damage
        assert sums == {name: f"{n:032x}" for n, name in enumerate(names)} and not sums_damage
    else:
        assert listed == [b"/usr/share/p"] + names[:9]
        assert [(d.line, "more than" in d.problem) for d in list_damage] == [(12, True)]
        assert list(sums) == names[:10]
        assert [(d.line, "more than" in d.problem) for d in sums_damage] == [(11, True)]


def test_diversions_and_their_owner(tmp_path):
    root = make_root(tmp_path / "root")
    (root / "var/lib/dpkg/diversions").write_bytes(b"/a\n/a.real\nwrap\n/b\n/b.local\n:\n/c\n")
    diversions, damage = placement.read_diversions(Target(root))
    assert placement.diverted_location(b"/a", "orig", diversions) == b"/a.real"
    assert placement.diverted_location(b"/a", "wrap", diversions) == b"/a"
    assert placement.diverted_location(b"/b", "any", diversions) == b"/b.local"
    assert len(damage) == 1


def _blocks(*values) -> bytes:
    return b"".join(bytes([v]) * 4096 for v in values)


@pytest.mark.parametrize(
    "actual, classification",
    [
        (_blocks(1, 2), "truncated"),
        (_blocks(1, 0, 3), "zero-filled"),
        (_blocks(1, 9, 3), "random"),
        (_blocks(1, 2, 3, 4), "random"),
    ],
)
def test_compare_classifies(actual, classification):
    packaged = _blocks(1, 2, 3)
    result = classify.compare(io.BytesIO(actual), io.BytesIO(packaged), len(actual), len(packaged))
    assert result["classification"] == classification


def test_evidence_without_a_package():
    assert classify.evidence(io.BytesIO(b""), 0) == {"classification": "empty"}
    data = _blocks(1, 0, 0)
    assert classify.evidence(io.BytesIO(data), len(data)) == {
        "classification": "unknown",
        "zero_blocks": 2,
    }


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "none"])
def test_deb_members_for_every_compression(tmp_path, compression):
    files = {"/usr/bin/a": b"a" * 100_000, "/usr/lib/l": ("symlink", "../bin/a")}
    deb = make_deb(tmp_path, "p", files=files, compression=compression)
    root = make_root(tmp_path / "root")
    (root / "p.deb").write_bytes(deb.read_bytes())
    sums = debfile.md5sums(Target(root), b"/p.deb")
    assert sums[b"/usr/bin/a"] == ("file", hashlib.md5(b"a" * 100_000).hexdigest())
    assert sums[b"/usr/lib/l"] == ("symlink", None)


def test_damaged_deb_is_an_error_not_a_crash(tmp_path):
    deb = make_deb(tmp_path, "p", files={"/usr/bin/a": bytes(range(256)) * 1000})
    root = make_root(tmp_path / "root")
    data = deb.read_bytes()
    (root / "p.deb").write_bytes(data[: len(data) // 2])
    with pytest.raises(debfile.DebError):
        debfile.md5sums(Target(root), b"/p.deb")
    (root / "q.deb").write_bytes(b"not a deb at all")
    with pytest.raises(debfile.DebError):
        debfile.md5sums(Target(root), b"/q.deb")


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd"])
def test_a_deb_damaged_halfway_through_a_member_is_an_error_not_a_crash(tmp_path, compression):
    # Lost writes hit cached .debs too: a corrupt stream in the middle of a member's bytes is read by
    # md5sums outside the archive walk, and must still be a DebError, not the decompressor's exception.
    content = random.Random(16).randbytes(3 << 20)
    deb = make_deb(tmp_path, "p", files={"/usr/bin/big": content}, compression=compression)
    data = bytearray(deb.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(byte ^ 0x55 for byte in data[middle : middle + 4096])
    root = make_root(tmp_path / "root")
    (root / "p.deb").write_bytes(bytes(data))
    with pytest.raises(debfile.DebError):
        debfile.md5sums(Target(root), b"/p.deb")


def test_a_pax_header_claiming_2_to_the_62_bytes_is_refused_not_read(tmp_path):
    root = make_root(tmp_path / "root")
    bomb_deb(root / "p.deb", claimed=2**62, zeros=64 << 20)
    with pytest.raises(debfile.DebError, match="extended header claims 4,611,686,018,427,387,904 bytes"):
        list(debfile.members(Target(root), b"/p.deb"))


def test_a_data_archive_that_decompresses_far_beyond_its_size_is_refused(tmp_path, monkeypatch):
    root = make_root(tmp_path / "root")
    # A regular file member of zeros: legitimate tar, but 1,000 times its compressed size.
    bomb_deb(root / "p.deb", claimed=40 << 20, zeros=40 << 20, kind=b"0")
    monkeypatch.setattr(bounded, "MIN_DECOMPRESSED", 1 << 20)
    with pytest.raises(debfile.DebError, match="decompression bomb"):
        for member in debfile.members(Target(root), b"/p.deb"):
            member.fileobj.read()


def test_cache_names():
    assert debfile.cache_name("sed", "1:4.9-1", "amd64") == b"sed_1%3a4.9-1_amd64.deb"
    assert debfile.parse_cache_name(b"sed_1%3a4.9-1_amd64.deb") == ("sed", "1:4.9-1", "amd64")
    assert debfile.parse_cache_name(b"partial") is None


def _judge(root, counts):
    return Judge(
        Target(root),
        placement.PathFilter([]),
        classify.AptCache(Target(root)),
        lambda key, amount: counts.__setitem__(key, counts.get(key, 0) + amount),
        set(),
    )


def test_read_errors_are_unreadable_warnings_and_permission_is_not_damage(tmp_path):
    # Root reads through chmod 000, and EIO cannot be made on demand: feed the errors in directly.
    root = make_root(tmp_path / "root")
    counts = {}
    judge = _judge(root, counts)
    owner = Owner(dpkg_db.Package("p", "1", "all", "install ok installed"), True, None)
    item = Item(owner, "file", b"/usr/bin/p", b"/usr/bin/p", expected="0" * 32)
    failed = HashResult(HashRequest(b"/usr/bin/p"), error=OSError(errno.EIO, "boom"))
    (finding,) = judge.file(item, failed)
    assert (finding.code, finding.severity) == ("unreadable", "warning")
    assert finding.details["errno"] == "EIO"
    assert counts == {"unreadable": 1}
    denied = HashResult(HashRequest(b"/usr/bin/p"), error=PermissionError(errno.EACCES, "denied"))
    assert list(judge.file(item, denied)) == []
    assert counts == {"unreadable": 1, "not_checked_permission": 1}
