"""Pure logic of the rpm checker: the header parser's bounds checks, rpm -V's rules and flag strings."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import struct

import pytest

from fsaudit_checks.rpm import header as hdr
from fsaudit_checks.rpm.compare import (
    Accounts,
    Outcome,
    attribute_marker,
    effective_flags,
    finish,
    flag_string,
)

ALIGN = {hdr.INT16: 2, hdr.INT32: 4, hdr.INT64: 8}


def _encode(kind, value):
    if kind in (hdr.STRING, hdr.STRING_ARRAY):
        values = [value] if kind == hdr.STRING else value
        return b"".join(v + b"\0" for v in values), len(values)
    if kind == hdr.CHAR:
        return bytes(value), len(value)
    fmt = {hdr.INT16: "H", hdr.INT32: "I"}[kind]
    return struct.pack(f">{len(value)}{fmt}", *value), len(value)


def make_blob(tags, dribble=()):
    """A database header blob: an immutable region holding `tags`, then `dribble` entries after it,
    and a SHA256HEADER over the region like rpm adds at install time."""
    entries, data = [], b""

    def add(tag, kind, value):
        nonlocal data
        raw, count = _encode(kind, value)
        pad = (-len(data)) % ALIGN.get(kind, 1)
        data += b"\0" * pad
        entries.append((tag, kind, len(data), count))
        data += raw

    for tag, kind, value in tags:
        add(tag, kind, value)
    region_count = len(entries) + 1
    trailer = len(data)
    data += struct.pack(">IIiI", hdr.REGION_IMMUTABLE, hdr.BIN, -16 * region_count, 16)
    entries.insert(0, (hdr.REGION_IMMUTABLE, hdr.BIN, trailer, 16))
    region = (
        hdr.HEADER_MAGIC
        + struct.pack(">II", region_count, len(data))
        + b"".join(struct.pack(">IIiI", *e) for e in entries)
        + data
    )
    for tag, kind, value in (
        *dribble,
        (hdr.SHA256HEADER, hdr.STRING, hashlib.sha256(region).hexdigest().encode()),
    ):
        add(tag, kind, value)
    index = b"".join(struct.pack(">IIiI", *e) for e in entries)
    return struct.pack(">II", len(entries), len(data)) + index + data


FILE_TAGS = [
    (hdr.NAME, hdr.STRING, b"demo"),
    (hdr.VERSION, hdr.STRING, b"1.0"),
    (hdr.RELEASE, hdr.STRING, b"3.el9"),
    (hdr.ARCH, hdr.STRING, b"x86_64"),
    (hdr.FILESIZES, hdr.INT32, [5, 0]),
    (hdr.FILEMODES, hdr.INT16, [0o100644, 0o040755]),
    (hdr.FILEMTIMES, hdr.INT32, [1000, 2000]),
    (hdr.FILEDIGESTS, hdr.STRING_ARRAY, [hashlib.sha256(b"hello").hexdigest().encode(), b""]),
    (hdr.FILEFLAGS, hdr.INT32, [hdr.RPMFILE_CONFIG, 0]),
    (hdr.FILEUSERNAME, hdr.STRING_ARRAY, [b"root", b"demo"]),
    (hdr.FILEGROUPNAME, hdr.STRING_ARRAY, [b"root", b"demo"]),
    (hdr.DIRINDEXES, hdr.INT32, [0, 1]),
    (hdr.BASENAMES, hdr.STRING_ARRAY, [b"demo.conf", b"demo"]),
    (hdr.DIRNAMES, hdr.STRING_ARRAY, [b"/etc/", b"/var/lib/"]),
    (hdr.FILEDIGESTALGO, hdr.INT32, [8]),
]
BLOB = make_blob(FILE_TAGS, dribble=[(hdr.FILESTATES, hdr.CHAR, [0, hdr.STATE_NETSHARED])])


def test_a_well_formed_header_is_read_with_its_files():
    header = hdr.Header(BLOB)
    assert header.check_digest() == ("ok", "sha256")
    assert (header.string(hdr.NAME), hdr.version_string(header)) == ("demo", "1.0-3.el9")
    assert hdr.digest_algorithm(header) == "sha256"
    conf, var = hdr.file_entries(header)
    assert conf.path == b"/etc/demo.conf" and conf.size == 5 and conf.flags == hdr.RPMFILE_CONFIG
    assert var.path == b"/var/lib/demo" and stat.S_ISDIR(var.mode) and var.user == b"demo"
    assert var.state == hdr.STATE_NETSHARED
    assert conf.verify == hdr.VERIFY_ALL


def test_epoch_and_md5_default():
    header = hdr.Header(make_blob([*FILE_TAGS[:4], (hdr.EPOCH, hdr.INT32, [2])]))
    assert hdr.version_string(header) == "2:1.0-3.el9"
    assert hdr.digest_algorithm(header) == "md5"
    assert hdr.file_entries(header) == []


def test_a_change_inside_the_region_breaks_the_header_digest():
    damaged = bytearray(BLOB)
    damaged[BLOB.index(b"demo.conf")] ^= 0x01
    assert hdr.Header(bytes(damaged)).check_digest() == ("mismatch", "sha256")


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\0\0\0", "too short"),
        (struct.pack(">II", 0, 0), "index entries"),
        (struct.pack(">II", 1, 4) + struct.pack(">IIiI", 1000, 6, 0, 1) + b"abcd", "past the end"),
        (struct.pack(">II", 1, 4) + struct.pack(">IIiI", 1000, 4, 8, 1) + b"abcd", "outside the data"),
        (struct.pack(">II", 1, 4) + struct.pack(">IIiI", 1000, 4, 0, 2) + b"abcd", "runs past"),
        (struct.pack(">II", 1, 4) + struct.pack(">IIiI", 1000, 4, 0, 0x7FFFFFFF) + b"abcd", "count"),
        (struct.pack(">II", 1, 6) + struct.pack(">IIiI", 1000, 3, 1, 1) + b"abcdef", "aligned"),
        (struct.pack(">II", 1, 4) + struct.pack(">IIiI", 1000, 17, 0, 1) + b"abcd", "unknown type"),
        (struct.pack(">II", 2, 4) + struct.pack(">IIiI", 1000, 6, 0, 1) + b"abcd", "do not match"),
    ],
)
def test_out_of_bounds_headers_are_refused(blob, message):
    with pytest.raises(hdr.HeaderError, match=message):
        header = hdr.Header(blob)
        header.get(1000)


def test_file_tags_that_disagree_are_refused():
    short = [(t, k, v[:1] if t == hdr.FILEMODES else v) for t, k, v in FILE_TAGS]
    with pytest.raises(hdr.HeaderError, match="values for 2 files"):
        hdr.file_entries(hdr.Header(make_blob(short)))
    bad_dir = [(t, k, [0, 7] if t == hdr.DIRINDEXES else v) for t, k, v in FILE_TAGS]
    with pytest.raises(hdr.HeaderError, match="directory index 7"):
        hdr.file_entries(hdr.Header(make_blob(bad_dir)))


def _read_everything(blob):
    header = hdr.Header(blob)
    header.check_digest()
    for tag in header.entries:
        header.get(tag)
    hdr.file_entries(header)
    hdr.digest_algorithm(header)
    hdr.version_string(header)


def test_random_damage_only_ever_raises_header_error():
    rng = random.Random(4)
    for length in range(len(BLOB)):
        with pytest.raises(hdr.HeaderError):
            _read_everything(BLOB[:length])
    for _ in range(3000):
        damaged = bytearray(BLOB)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            _read_everything(bytes(damaged))
        except hdr.HeaderError:
            pass


def _entry(**changes):
    values = dict(
        path=b"/x", size=1, mode=0o100644, mtime=0, digest=b"", link=b"", flags=0,
        verify=hdr.VERIFY_ALL, state=hdr.STATE_NORMAL, user=b"root", group=b"root", rdev=0,
    )  # fmt: skip
    values.update(changes)
    return hdr.FileEntry(**values)


def test_rpm_v_exclusions():
    assert effective_flags(_entry(state=hdr.STATE_NOTINSTALLED)) is None
    assert effective_flags(_entry(state=hdr.STATE_NETSHARED)) is None
    assert effective_flags(_entry(state=hdr.STATE_REPLACED)) == 0
    ghost = effective_flags(_entry(flags=hdr.RPMFILE_GHOST))
    assert not ghost & (hdr.VERIFY_DIGEST | hdr.VERIFY_SIZE | hdr.VERIFY_MTIME | hdr.VERIFY_LINKTO)
    assert ghost & hdr.VERIFY_MODE and ghost & hdr.VERIFY_USER
    color = effective_flags(_entry(state=hdr.STATE_WRONGCOLOR))
    assert not color & (hdr.VERIFY_DIGEST | hdr.VERIFY_SIZE) and color & hdr.VERIFY_MODE


def test_flag_string_and_markers():
    outcome = Outcome(_entry(), flags={"S", "5", "T"})
    assert flag_string(outcome) == "S.5....T."
    outcome = Outcome(_entry(), flags={"M"}, unreadable={"5"})
    assert flag_string(outcome) == ".M?......"
    assert attribute_marker(hdr.RPMFILE_CONFIG | hdr.RPMFILE_MISSINGOK) == "c"
    assert attribute_marker(hdr.RPMFILE_DOC) == "d"
    assert attribute_marker(hdr.RPMFILE_GHOST) == "g"
    assert attribute_marker(0) == " "


def test_a_read_error_is_a_question_mark_in_the_digest_column():
    outcome = Outcome(_entry(digest=b"00"))
    finish(outcome, None, OSError(5, "Input/output error"))
    assert flag_string(outcome) == "..?......" and outcome.error == "Input/output error"
    outcome = Outcome(_entry(digest=b"AB"))
    finish(outcome, "ab", None)
    assert flag_string(outcome) == "........."


def test_owners_match_by_name_or_by_id_like_rpm():
    accounts = Accounts("root:x:0:0::/:/bin/sh\nbin:x:1:1::/:/sbin/nologin\nbad line\n", "wheel:x:10:\n")
    assert accounts.user_ok(b"bin", 1)
    assert accounts.user_ok(b"root", 0)
    assert not accounts.user_ok(b"bin", 0)
    assert not accounts.user_ok(b"nobody", 65534)
    assert accounts.user_ok(b"1", 1) is False
    assert accounts.group_ok(b"wheel", 10) and not accounts.group_ok(b"wheel", 0)
    assert accounts.user(1) == "bin" and accounts.user(4242) == "4242"
    assert os.fsdecode(b"root") == accounts.group(0)
