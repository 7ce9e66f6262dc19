"""The NAR serialisation and nix's hash encodings, against nix itself (`nix-store --dump`, `nix hash`)."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from fixtures import nix as nixfix
from fsaudit.target import Target
from fsaudit_checks.nix import nar, store
from tests.conftest import require_program


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    require_program("nix-store", "nix-bin")
    base = tmp_path_factory.mktemp("nar")
    tree = base / "tree"
    (tree / "sub/deeper").mkdir(parents=True)
    (tree / "plain").write_text("plain text\n")
    (tree / "empty").write_bytes(b"")
    (tree / "eight").write_bytes(b"12345678")  # no padding needed
    (tree / "program").write_text("#!/bin/sh\n")
    os.chmod(tree / "program", 0o755)
    (tree / "sub/deeper/data").write_bytes(bytes(range(256)) * 5000)  # larger than a read block
    os.symlink("plain", tree / "relative-link")
    os.symlink("/etc/passwd", tree / "absolute-link")
    (tree / os.fsdecode(b"caf\xe9 \x1b[31m\nred")).write_text("hostile\n")
    (tree / "Zeta").write_text("sorts before lower case\n")
    (tree / "emptydir").mkdir()
    single = base / "single"
    single.write_text("one file\n")
    link = base / "link"
    os.symlink("somewhere", link)
    return base, {"directory": tree, "file": single, "symlink": link, "empty directory": tree / "emptydir"}


@pytest.mark.parametrize("kind", ["directory", "file", "symlink", "empty directory"])
def test_the_serialisation_is_nix_own_byte_for_byte(trees, kind):
    base, paths = trees
    path = paths[kind]
    target = Target(base)
    inner = b"/" + os.fsencode(path.relative_to(base))
    archive = nar.plan(target, inner)
    assert archive.problems == []
    reference = nixfix.dump(path, base / "store")
    assert archive.size == len(reference)
    digest, problems = nar.digest(target, archive)
    assert problems == []
    assert digest == hashlib.sha256(reference).digest()
    assert f"{nar.base32_encode(digest)}" == nixfix.nar_hash(path, base / "store")


def test_base32_round_trips_and_hash_forms_are_read():
    digest = hashlib.sha256(b"fsaudit").digest()
    text = nar.base32_encode(digest)
    assert len(text) == 52 and set(text) <= set(nar.ALPHABET)
    assert nar.base32_decode(text, 32) == digest
    b64 = base64.b64encode(digest).decode()
    for form in (f"sha256:{digest.hex()}", f"sha256:{text}", f"sha256:{b64}", f"sha256-{b64}"):
        assert nar.parse_hash(form) == ("sha256", digest)
    for bad in ("sha256:xyz", "md4:00", "sha256:" + "e" * 52, "", "sha256-" + "A" * 10):
        with pytest.raises(ValueError):
            nar.parse_hash(bad)


def test_a_fifo_in_a_tree_is_a_problem_not_a_hang(tmp_path):
    (tmp_path / "tree").mkdir()
    os.mkfifo(tmp_path / "tree/pipe")
    archive = nar.plan(Target(tmp_path), b"/tree")
    assert [(p.kind, p.inner, p.found) for p in archive.problems] == [("wrong-type", b"/tree/pipe", "FIFO")]


def test_store_names_are_split_like_parse_drv_name():
    assert store.split_name("bash-5.2-p15") == ("bash", "5.2-p15")
    assert store.split_name("hello") == ("hello", "")
    assert store.split_name("source-highlight-3.1.9") == ("source-highlight", "3.1.9")
    assert store.split_name("nixos-system-vm-24.05") == ("nixos-system-vm", "24.05")
