"""`content` over hostile files: every case ends in under 60 s and 1 GiB, with a finding or a clear
reason, never "ok" (issue 13, items 8 and 9)."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import struct

from fixtures.measured import GIB
from tests.conftest import fsaudit_measured

LIMIT_SECONDS = 60


def audit(directory, *extra):
    return fsaudit_measured(
        "audit", "--check", "content", "--set", f"content.paths={directory}", *extra, "--format", "json"
    )


def assert_bounded(cost) -> None:
    assert cost.seconds < LIMIT_SECONDS, f"{cost.seconds:.1f} s"
    assert cost.max_rss < GIB, f"{cost.max_rss / GIB:.2f} GiB"


def test_a_pyc_announcing_two_billion_items_is_damage_not_16_gb(tmp_path):
    # magic, flags 0, mtime, source size, then a tuple of 0x7fffffff items: 21 bytes.
    pyc = importlib.util.MAGIC_NUMBER + b"\0" * 12 + b"(" + struct.pack("<I", 0x7FFFFFFF)
    assert len(pyc) == 21
    (tmp_path / "bomb.pyc").write_bytes(pyc)
    run, cost = audit(tmp_path)
    assert_bounded(cost)
    [finding] = run.findings("content")
    assert finding["code"] == "structure-damaged"
    assert run.code == 2


def test_a_bzip2_of_200_gib_of_zeros_is_cut_and_said_so(tmp_path):
    stream = bz2.compress(b"\0" * (100 << 20), 9)  # 100 MiB in about 100 bytes
    (tmp_path / "zeros.bz2").write_bytes(stream * 2048)  # 200 GiB once decompressed
    run, cost = audit(tmp_path)
    assert_bounded(cost)
    [finding] = run.findings("content")
    assert finding["code"] == "partly-checked"
    assert finding["severity"] == "warning"
    assert run.code == 1
    assert run.check("content")["stats"]["files_partly_checked"] == 1


def test_a_bomb_inside_a_zip_counts_all_members_against_one_cap(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for number in range(20):
            archive.writestr(f"member{number}.bin", b"\0" * (16 << 20))
    run, cost = audit(tmp_path, "--set", "content.max_ratio=20")
    assert_bounded(cost)
    assert run.codes("content") == {"partly-checked"}


def test_a_check_that_takes_too_long_is_stopped_and_said_so(tmp_path):
    stream = bz2.compress(b"\0" * (100 << 20), 9)
    (tmp_path / "slow.bz2").write_bytes(stream * 2048)
    run, cost = audit(tmp_path, "--set", "content.max_ratio=100000000", "--set", "content.timeout=2")
    assert_bounded(cost)
    [finding] = run.findings("content")
    assert finding["code"] == "partly-checked"
    assert "longer than 2 s" in finding["message"]


def test_a_json_file_too_big_for_the_memory_bound_is_cut_and_said_so(tmp_path):
    (tmp_path / "many.json").write_bytes(b"[" + b"{}," * 3_000_000 + b"{}]")
    run, cost = audit(tmp_path, "--set", "content.max_memory_mb=160")
    assert_bounded(cost)
    [finding] = run.findings("content")
    assert finding["code"] == "partly-checked"
    assert "memory" in finding["message"]


def test_nesting_deeper_than_the_parser_goes_is_reported(tmp_path):
    (tmp_path / "deep.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    (tmp_path / "deep.py").write_bytes(b"x = " + b"(" * 100_000 + b")" * 100_000 + b"\n")
    run, cost = audit(tmp_path)
    assert_bounded(cost)
    codes = {f["path"].rsplit("/", 1)[1]: f["code"] for f in run.findings("content")}
    assert set(codes) == {"deep.json", "deep.py"}
    assert set(codes.values()) <= {"parse-error", "partly-checked"}


def test_a_damaged_gzip_deeper_than_max_depth_is_not_silently_ok(tmp_path):
    directory = tmp_path / "files"
    deep = directory
    for _ in range(300):
        deep = deep / "d"
    deep.mkdir(parents=True)
    data = bytearray(gzip.compress(b"precious data\n" * 1000))
    data[-6] ^= 0xFF  # its CRC
    (deep / "archive.gz").write_bytes(bytes(data))
    run, cost = audit(directory)
    assert_bounded(cost)
    [finding] = run.findings("content")
    assert finding["code"] == "not-checked"
    assert finding["details"]["directories_too_deep"] == 1
    assert run.code == 1
    run, _ = audit(directory, "--set", "content.max_depth=400")
    assert run.codes("content") == {"checksum-mismatch"}
    assert run.code == 2


def test_files_over_max_size_are_reported(tmp_path):
    (tmp_path / "big.txt").write_bytes(b"line\n" * 1000)
    run, _ = audit(tmp_path, "--set", "content.max_size=100")
    [finding] = run.findings("content")
    assert finding["code"] == "not-checked"
    assert finding["details"]["files_too_large"] == 1


def test_nothing_of_a_parser_failure_escapes_into_the_audit(tmp_path):
    """Every format's validator on garbage: findings or counts, the checker never crashes."""
    from fsaudit_checks.content.formats import FORMATS

    rng = __import__("random").Random(13)
    for fmt in FORMATS:
        suffix = fmt.suffixes[0] if fmt.suffixes else ""
        for number in range(3):
            garbage = fmt.magic + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
            (tmp_path / f"{fmt.name}{number}{suffix}").write_bytes(garbage)
    run, cost = audit(tmp_path)
    assert_bounded(cost)
    check = run.check("content")
    assert check["status"] in ("critical", "warning"), check
    assert "error" not in json.dumps(check["reason"]).lower()
    assert check["stats"].get("files_checked", 0) + check["stats"].get("files_unsupported", 0) > 0
