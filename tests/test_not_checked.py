"""`skipped` means "nothing of this kind here"; a subject that is here but cannot be checked (its
Python module is missing, its server is not running, it cannot be reached from an image) is
`unknown` with the reason, so that monitoring never reads an unchecked database as fine. And a
check that ran over nothing says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from fixtures.ldap import Slapd
from fixtures.postgres import copy_cluster, make_base_dir, make_template, server_bin
from tests.conftest import Run, fsaudit


def without_modules(*modules: str):
    """The argv that runs `fsaudit` in an interpreter where `modules` cannot be imported, as on a VM
    that lacks the optional dependency."""
    hide = "; ".join(f"sys.modules[{name!r}] = None" for name in modules)
    program = f"import sys; {hide}; from fsaudit.cli import main; main(sys.argv[1:])"
    return [sys.executable, "-c", program]


def run_without(modules, *args) -> Run:
    completed = subprocess.run(
        [*without_modules(*modules), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=300,
    )
    return Run(completed)


@pytest.fixture(scope="module")
def stopped_cluster():
    if server_bin() is None:
        pytest.fail("the PostgreSQL server is missing: apt-get install postgresql postgresql-contrib")
    base = make_base_dir("fsaudit-pgtpl-")
    try:
        cluster = copy_cluster(make_template(base))
        try:
            yield cluster
        finally:
            cluster.destroy()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_cluster_without_psycopg_is_unknown_not_skipped(stopped_cluster):
    cluster = stopped_cluster
    cluster.start()
    try:
        run = run_without(
            ["psycopg"], "audit", "--check", "postgres", "--set", f"postgres.data_dir={cluster.data}",
            "--format", "json",
        )  # fmt: skip
    finally:
        cluster.stop()
    check = run.check("postgres")
    assert run.code == 3, run.stderr
    assert check["status"] == "unknown"
    assert "psycopg" in check["reason"] and "fsaudit[postgres]" in check["reason"]
    assert str(cluster.data) in check["reason"]


def test_without_psycopg_and_without_a_cluster_the_check_is_skipped(tmp_path):
    run = run_without(["psycopg"], "audit", "--root", tmp_path, "--check", "postgres", "--format", "json")
    assert run.code == 0, run.stderr
    assert run.check("postgres")["status"] == "skipped"


def test_a_postgres_cluster_in_an_image_is_unknown(tmp_path, stopped_cluster):
    # Under --root the servers of the image do not run: its clusters are there, and not checked.
    root = tmp_path / "image"
    (root / "etc" / "postgresql" / "15" / "main").mkdir(parents=True)
    data = root / "var" / "lib" / "postgresql" / "15" / "main"
    shutil.copytree(stopped_cluster.data, data, symlinks=True)
    conf = "data_directory = '/var/lib/postgresql/15/main'\nport = 5432\n"
    (root / "etc" / "postgresql" / "15" / "main" / "postgresql.conf").write_text(conf)
    run = fsaudit("audit", "--root", root, "--check", "postgres", "--format", "json")
    check = run.check("postgres")
    assert run.code == 3 and check["status"] == "unknown", run.stdout
    assert "15/main" in check["reason"] and "postgres.dsn" in check["reason"]


def test_a_configured_slapd_that_is_not_running_is_unknown(tmp_path):
    root = tmp_path / "image"
    (root / "etc" / "ldap").mkdir(parents=True)
    server = Slapd(tmp_path / "slapd")  # a real slapd configuration, never started
    (root / "etc" / "ldap" / "slapd.conf").write_text(server.config_text())
    run = fsaudit("audit", "--root", root, "--check", "ldap", "--format", "json")
    check = run.check("ldap")
    assert run.code == 3 and check["status"] == "unknown", run.stdout
    assert "/etc/ldap/slapd.conf" in check["reason"] and "ldap.url" in check["reason"]
    empty = fsaudit("audit", "--root", tmp_path / "slapd", "--check", "ldap", "--format", "json")
    assert empty.code == 0 and empty.check("ldap")["status"] == "skipped"


def test_a_named_zodb_storage_is_never_skipped(tmp_path):
    run = fsaudit(
        "audit", "--root", tmp_path, "--check", "zodb", "--set", "zodb.paths=/srv/Data.fs", "--format", "json"
    )
    assert run.check("zodb")["status"] != "skipped"


def test_a_check_that_ran_over_nothing_says_so(tmp_path):
    (tmp_path / "srv").mkdir()
    run = fsaudit(
        "audit", "--root", tmp_path, "--check", "git", "--set", "git.paths=/srv", "--format", "json"
    )
    check = run.check("git")
    assert run.code == 0 and check["status"] == "ok"
    assert check["reason"] == "nothing of this kind was found to check"
