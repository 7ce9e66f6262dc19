"""The reading engine where fsaudit runs from the fleet's in-memory bootstrap on a VM (no fsaudit
installed, the zipapp imported from a memfd or straight from memory): the worker processes start
from the reader's source, which the zip's importer hands over, and verify the files as an installed
fsaudit does."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from fixtures import debian as debfix
from fixtures.corrupt import flip_byte
from fsaudit.fleet.bootstrap import build_zipapp, digest, loader_config, loader_inline
from tests.conftest import require_program

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def zipapp():
    return build_zipapp()


@pytest.mark.parametrize("importer", ["memfd", "memory"])
def test_worker_processes_start_from_the_in_memory_bootstrap(zipapp, tmp_path, importer):
    require_program("dpkg-deb", "dpkg")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail("the system python3 is missing: apt-get install python3")
    root = debfix.make_root(tmp_path / "root")
    files = {f"/usr/lib/tool/f{n}": os.urandom(5000 + n) for n in range(200)}
    debfix.install(root, debfix.make_deb(tmp_path / "debs", "tool", files=files))
    flip_byte(root / "usr" / "lib" / "tool" / "f7")
    args = ["--root", str(root), "--check", "debian", "--jobs", "2"]
    loader = subprocess.Popen(
        [
            SYSTEM_PYTHON,
            "-I",
            "-c",
            loader_inline(),
            loader_config(None, args, True, digest(zipapp), importer),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    loader.stdout.readline()
    loader.stdin.write(b"%d\n" % len(zipapp) + zipapp)
    loader.stdin.flush()
    output = loader.stdout.read()
    loader.stdin.close()
    assert loader.wait(timeout=120) == 2, loader.stderr.read()
    check = json.loads(output)["checks"][0]
    assert check["stats"]["reading"].startswith("2 worker processes")
    assert check["stats"]["files_verified"] == 200
    assert [f["path"] for f in check["findings"] if f["code"] == "content-differs"] == ["/usr/lib/tool/f7"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debs", "root"]  # nothing written
