"""`baseline`: record a tree, damage it, compare; silent change vs ordinary change."""

import gzip
import os

import pytest

from fixtures.corrupt import flip_byte, replace_with_directory, truncate
from tests.conftest import fsaudit


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    (root / "docs").mkdir(parents=True)
    for number in range(20):
        (root / "docs" / f"doc{number}.txt").write_bytes(f"document {number}\n".encode() * 300)
    (root / "caf\xe9.bin".encode("latin-1").decode("latin-1")).write_bytes(b"x")
    os.symlink("docs/doc1.txt", root / "latest")
    raw = os.fsencode(root) + b"/raw\xff.txt"
    with open(raw, "wb") as handle:
        handle.write(b"raw name\n")
    baseline = tmp_path / "data.baseline"
    run = fsaudit("baseline", "create", root, "--output", baseline)
    assert run.code == 0, run.stderr
    assert "recorded" in run.stdout
    return root, baseline


def check(root, baseline):
    return fsaudit("audit", "--check", "baseline", "--set", f"baseline.file={baseline}", "--format", "json")


def test_unchanged_tree_is_ok(tree):
    root, baseline = tree
    run = check(root, baseline)
    assert run.code == 0, run.stdout
    assert run.check("baseline")["stats"]["files_verified"] == 22


def test_silent_change_is_critical_and_ordinary_change_is_info(tree):
    root, baseline = tree
    flip_byte(root / "docs" / "doc3.txt", 5)  # content changed, size and mtime kept
    truncate(root / "docs" / "doc4.txt", 100)  # size changed, mtime kept
    (root / "docs" / "doc5.txt").write_bytes(b"a new version\n")  # new mtime: an update
    os.unlink(root / "docs" / "doc6.txt")
    replace_with_directory(root / "docs" / "doc7.txt")
    os.unlink(root / "latest")
    os.symlink("docs/doc2.txt", root / "latest")
    os.chmod(root / "docs" / "doc8.txt", 0o600)
    run = check(root, baseline)
    assert run.code == 2
    codes = {f["path"].rsplit("/", 1)[1]: f["code"] for f in run.findings("baseline")}
    assert codes["doc3.txt"] == "silent-change"
    assert codes["doc4.txt"] == "silent-change"
    assert codes["doc5.txt"] == "changed"
    assert codes["doc6.txt"] == "missing"
    assert codes["doc7.txt"] == "wrong-type"
    assert codes["latest"] == "link-changed"
    assert codes["doc8.txt"] == "metadata-changed"
    severities = {f["code"]: f["severity"] for f in run.findings("baseline")}
    assert severities["changed"] == "info" and severities["silent-change"] == "critical"


def test_non_utf8_names_round_trip(tree):
    root, baseline = tree
    raw = os.fsencode(root) + b"/raw\xff.txt"
    with open(raw, "r+b") as handle:
        stat = os.fstat(handle.fileno())
        handle.write(b"R")
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run = check(root, baseline)
    finding = run.findings("baseline", "silent-change")[0]
    assert finding["path"].endswith("raw\\xff.txt")
    assert "path_b64" in finding["details"]


def test_a_cut_short_baseline_is_reported_not_trusted(tree, tmp_path):
    root, baseline = tree
    lines = gzip.decompress(baseline.read_bytes()).splitlines(keepends=True)
    short = tmp_path / "short.baseline"
    short.write_bytes(gzip.compress(b"".join(lines[:10])))
    run = check(root, short)
    assert run.code == 3
    assert "baseline-damaged" in run.codes("baseline")
    assert "cut short" in run.findings("baseline", "baseline-damaged")[0]["message"]


def test_baseline_works_for_an_image_root(tmp_path):
    image = tmp_path / "image"
    (image / "srv").mkdir(parents=True)
    (image / "srv" / "file").write_bytes(b"payload" * 100)
    baseline = tmp_path / "image.baseline"
    assert fsaudit("baseline", "create", "/srv", "--root", image, "--output", baseline).code == 0
    flip_byte(image / "srv" / "file", 3)
    run = fsaudit(
        "audit",
        "--root",
        image,
        "--check",
        "baseline",
        "--set",
        f"baseline.file={baseline}",
        "--format",
        "json",
    )
    assert run.code == 2
    assert run.findings("baseline")[0]["path"] == "/srv/file"
