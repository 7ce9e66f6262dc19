"""`fsaudit self-check`: a customer without root checks their own files."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from fixtures.apps import make_repo, sample_files
from fixtures.corrupt import flip_byte
from tests.conftest import fsaudit


@pytest.fixture
def home():
    """A customer's files in a world-readable place (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="fsaudit-selfcheck-", dir="/tmp"))
    try:
        os.chmod(base, 0o777)
        app = make_repo(
            base / "app", {name: data for name, data in sample_files().items() if name != "program"}
        )
        for path in [base, *base.rglob("*")]:
            if not path.is_symlink():
                os.chmod(path, 0o777 if path.is_dir() else 0o644)
        yield base, app
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_self_check_as_an_unprivileged_user_finds_damage(home):
    base, app = home
    flip_byte(app / "image.png", 40)
    (base / "secret").mkdir(mode=0o700)  # not readable by the customer: reported, not fatal
    run = fsaudit("self-check", app, "--format", "json", user="nobody", cwd=base)
    assert run.code == 2, run.stderr
    assert run.codes("git") == {"content-differs"}
    assert run.codes("content") == {"checksum-mismatch"}
    assert run.check("pip")["status"] == "skipped"
    assert run.check("baseline")["status"] == "skipped"


def test_self_check_writes_a_report_file_by_default(home):
    base, app = home
    run = fsaudit("self-check", app, user="nobody", cwd=base)
    assert run.code == 0, run.stderr
    assert "OK: no damage found" in run.stdout
    written = [p for p in base.iterdir() if p.name.startswith("fsaudit-self-check")]
    assert written, run.stdout


def test_self_check_with_a_baseline(home, tmp_path):
    base, app = home
    baseline = base / "app.baseline"
    assert fsaudit("baseline", "create", app, "--output", baseline, user="nobody").code == 0
    flip_byte(app / "notes.txt", 10)
    run = fsaudit("self-check", app, "--baseline", baseline, "--format", "json", user="nobody", cwd=base)
    assert run.code == 2
    assert "silent-change" in run.codes("baseline")
