"""Permission denied is not damage: an audit without root counts what it may not read as "not checked
(permission)", never as a finding that repair would act on, and the report says whose audit it was."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from fixtures.apps import make_repo, make_venv, make_wheel, sample_files
from fixtures.corrupt import flip_byte
from tests.conftest import fsaudit

NOBODY = 65534
PACKAGE = {"shop/__init__.py": b"VERSION = '1.0'\n", "shop/cart.py": b"def total(items):\n    return 1\n"}


@pytest.fixture
def customer():
    """A customer's tree that `nobody` can read, except for one file in each kind of place that only
    root may read: a tracked file of a git checkout, an installed file of a virtualenv, a plain file."""
    base = Path(tempfile.mkdtemp(prefix="fsaudit-permission-", dir="/tmp"))
    try:
        app = make_repo(
            base / "app", {name: data for name, data in sample_files().items() if name != "program"}
        )
        make_venv(base / "app" / "venv", [make_wheel(base, "shop", "1.0", PACKAGE)])
        for path in [base, *base.rglob("*")]:
            if not path.is_symlink():
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
        yield base, app
    finally:
        shutil.rmtree(base, ignore_errors=True)


def lock(path: Path) -> None:
    os.chown(path, 0, 0)
    os.chmod(path, 0o600)


def test_files_a_customer_may_not_read_are_not_checked_rather_than_damaged(customer):
    base, app = customer
    baseline = base / "app.baseline"
    assert fsaudit("baseline", "create", app, "--output", baseline).code == 0
    os.chmod(baseline, 0o644)
    lock(app / "notes.txt")  # tracked by git, recorded in the baseline, checked by its format
    lock(next(app.glob("venv/lib/python*/site-packages/shop/cart.py")))  # installed by pip
    run = fsaudit("self-check", app, "--baseline", baseline, "--format", "json", user="nobody", cwd=base)
    assert run.code == 3, run.stderr
    assert run.report["uid"] == NOBODY
    for name in ("git", "pip", "baseline", "content"):
        check = run.check(name)
        assert check["findings"] == [], (name, check)
        assert check["stats"]["not_checked_permission"] >= 1, (name, check)
        assert check["status"] == "unknown", (name, check)
        assert "permission denied" in check["reason"], (name, check)


def test_damage_found_beside_unreadable_files_is_still_critical(customer):
    base, app = customer
    lock(app / "notes.txt")
    flip_byte(app / "image.png", 40)
    run = fsaudit("self-check", app, "--format", "json", user="nobody", cwd=base)
    assert run.code == 2, run.stderr
    assert run.codes("git") == {"content-differs"}
    assert run.check("git")["stats"]["not_checked_permission"] == 1
    assert "unreadable" not in run.codes("content")


def test_an_audit_as_root_records_uid_0(tmp_path):
    run = fsaudit("audit", "--root", tmp_path, "--check", "git", "--format", "json")
    assert run.report["uid"] == 0
