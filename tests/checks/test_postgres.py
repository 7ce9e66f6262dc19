"""The `postgres` checker against real throwaway clusters, damaged on purpose while stopped."""

from __future__ import annotations

import os
import shutil

import pytest

from fixtures.corrupt import truncate, zero_block
from fixtures.postgres import (
    BLOCK,
    OWNER,
    as_owner,
    copy_cluster,
    line_pointer,
    make_base_dir,
    make_template,
    read_page,
    server_bin,
    wait_for_stats,
    write_at,
)
from tests.conftest import fsaudit

CORRUPTION = {"index-corrupt", "table-corrupt", "toast-corrupt", "file-missing", "file-short", "rows-lost"}


@pytest.fixture(scope="session")
def pg_template():
    if server_bin() is None:
        pytest.fail("the PostgreSQL server is missing: apt-get install postgresql postgresql-contrib")
    base = make_base_dir("fsaudit-pgtpl-")
    try:
        yield make_template(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def new_cluster(pg_template):
    """Make started clusters from the template; every one is stopped and removed at the end."""
    made = []

    def make(checksums: bool = True):
        cluster = copy_cluster(pg_template, checksums=checksums)
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.destroy()


@pytest.fixture(scope="module")
def shared_cluster(pg_template):
    """One undamaged cluster for the tests that only add objects to it."""
    cluster = copy_cluster(pg_template)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def audit(cluster, *sets, dsn=None, jobs=2):
    args = ["audit", "--check", "postgres", "--format", "json", "--jobs", str(jobs)]
    args += ["--set", f"postgres.dsn={dsn or cluster.dsn}"]
    for item in sets:
        args += ["--set", f"postgres.{item}"]
    return fsaudit(*args)


def audit_data_dir(cluster, *sets):
    args = ["audit", "--check", "postgres", "--format", "json", "--set", f"postgres.data_dir={cluster.data}"]
    for item in sets:
        args += ["--set", f"postgres.{item}"]
    return fsaudit(*args)


def test_clean_cluster_is_ok_by_dsn_and_as_its_owner(shared_cluster):
    cluster = shared_cluster
    cluster.sql("CREATE DATABASE shop")
    cluster.sql("CREATE TABLE orders (id int PRIMARY KEY, note text, body text)", "shop")
    cluster.sql("CREATE INDEX ON orders (note)", "shop")
    cluster.sql(
        "INSERT INTO orders SELECT g, md5(g::text), repeat(md5(g::text), 200)"
        " FROM generate_series(1, 1000) g",
        "shop",
    )
    cluster.sql("VACUUM ANALYZE orders", "shop")

    run = audit(cluster, "full_read=true")
    assert run.code == 0, run.stdout + run.stderr
    check = run.check("postgres")
    assert check["status"] == "ok" and check["findings"] == []
    assert check["stats"]["databases_checked"] == 3
    assert check["stats"]["clusters_with_data_checksums"] == 1
    assert check["stats"]["indexes_checked"] > 100 and check["stats"]["tables_read"] > 50

    # A running postmaster is found by its working directory, which is its data directory.
    from fsaudit.target import Target
    from fsaudit_checks.postgres.clusters import discover

    [found] = [c for c in discover(Target("/"), []) if c.data_dir == str(cluster.data)]
    assert found.running and found.port == cluster.port and found.owner_name == OWNER

    # As root without a DSN: the check runs as the cluster's owner over peer authentication.
    owned = audit_data_dir(cluster)
    assert owned.code == 0, owned.stdout + owned.stderr
    assert owned.check("postgres")["stats"]["databases_checked"] == 3


def test_no_checksums_and_no_amcheck_are_said_and_amcheck_installs_only_when_asked(new_cluster):
    cluster = new_cluster(checksums=False)
    cluster.sql("CREATE DATABASE plain")
    cluster.sql("DROP EXTENSION amcheck", "plain")
    cluster.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 500) g", "plain")

    run = audit(cluster)
    assert run.code == 1, run.stdout + run.stderr
    assert run.codes("postgres") == {"checksums-disabled", "amcheck-missing"}
    [missing] = run.findings("postgres", "amcheck-missing")
    assert missing["details"]["database"] == "plain"
    assert cluster.sql("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'", "plain")[0][0] == 0

    installed = audit(cluster, "install_amcheck=true", "databases=plain")
    assert installed.codes("postgres") == {"checksums-disabled", "amcheck-installed"}
    assert installed.code == 0
    assert cluster.sql("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'", "plain")[0][0] == 1


def test_bytes_over_a_tuple_header_and_an_index_item(new_cluster):
    cluster = new_cluster(checksums=False)
    cluster.sql("CREATE TABLE people (id int PRIMARY KEY, name text)")
    cluster.sql("INSERT INTO people SELECT g, 'person ' || g FROM generate_series(1, 300) g")
    cluster.sql("CREATE TABLE parts (id int PRIMARY KEY, name text)")
    cluster.sql("INSERT INTO parts SELECT g, 'part ' || g FROM generate_series(1, 300) g")
    block, offset = cluster.ctid("SELECT ctid FROM people WHERE id = 10")
    heap = cluster.relation_file("people")
    index = cluster.relation_file("parts_pkey")
    cluster.stop()

    lp_off, _ = line_pointer(read_page(heap, block), offset)
    write_at(heap, block * BLOCK + lp_off, b"\xff" * 23)
    # Index block 1 is the first leaf; put a key far out of order on its 5th item.
    leaf = read_page(index, 1)
    item_off, _ = line_pointer(leaf, 5)
    write_at(index, BLOCK + item_off + 8, (999999).to_bytes(4, "little"))
    cluster.start()

    run = audit(cluster)
    assert run.code == 2, run.stdout + run.stderr
    codes = run.codes("postgres")
    assert {"table-corrupt", "index-corrupt"} <= codes
    [table] = [f for f in run.findings("postgres", "table-corrupt") if f["details"]["relation"] == "people"]
    assert table["details"]["block"] == block and table["details"]["offset"] == offset
    assert table["details"]["database"] == "postgres" and table["details"]["schema"] == "public"
    [index_finding] = [
        f for f in run.findings("postgres", "index-corrupt") if f["details"]["relation"] == "parts_pkey"
    ]
    assert "REINDEX INDEX CONCURRENTLY public.parts_pkey" in index_finding["advice"]


def test_heap_page_put_back_to_its_image_before_an_update_and_vacuum(new_cluster):
    cluster = new_cluster()
    cluster.sql("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
    cluster.sql("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 100) g")
    cluster.sql("CHECKPOINT")
    heap = cluster.relation_file("accounts")
    cluster.stop()
    before = read_page(heap, 0)
    cluster.start()
    cluster.sql("UPDATE accounts SET id = id + 1000 WHERE id <= 5")
    cluster.sql("VACUUM accounts")
    cluster.sql("CHECKPOINT")
    cluster.stop()
    write_at(heap, 0, before)  # the write of the newer page image was lost
    cluster.start()

    # The old page is valid, checksum included: pg_amcheck with default options sees nothing.
    plain = as_owner(
        cluster.bin / "pg_amcheck", "-h", cluster.sockets, "-p", cluster.port, "-d", "postgres", check=False
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr

    run = audit(cluster)
    assert run.code == 2, run.stdout + run.stderr
    [finding] = run.findings("postgres", "index-corrupt")
    assert finding["details"]["relation"] == "accounts_pkey"
    assert "lacks matching index tuple" in finding["details"]["server_message"]
    assert "Compare the table with a backup first" in finding["advice"]


def test_truncated_table_file_removed_index_file_and_a_checksum_failure(new_cluster):
    cluster = new_cluster()
    cluster.sql("CREATE TABLE notes AS SELECT g AS id, 'note ' || g AS body FROM generate_series(1, 100) g")
    notes = cluster.relation_file("notes")
    cluster.sql("CREATE TABLE events (id int, pad text)")
    cluster.sql("INSERT INTO events SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
    cluster.sql("CREATE TABLE tags (id int, name text)")
    cluster.sql("CREATE INDEX tags_name ON tags (name)")
    cluster.sql("INSERT INTO tags SELECT g, 'tag ' || g FROM generate_series(1, 500) g")
    cluster.sql("VACUUM ANALYZE events")
    cluster.sql("VACUUM ANALYZE tags")
    table = cluster.relation_file("events")
    index = cluster.relation_file("tags_name")
    cluster.stop()
    truncate(table, BLOCK)
    os.unlink(index)
    write_at(notes, 6000, b"\x00\x01")
    cluster.start()

    run = audit(cluster)
    assert run.code == 2, run.stdout + run.stderr
    [short] = run.findings("postgres", "file-short")
    assert short["details"]["relation"] == "events" and short["details"]["size"] == BLOCK
    assert short["path"] == str(table)
    assert "rows-lost" not in run.codes("postgres")  # the short file already says where they went
    [missing] = run.findings("postgres", "file-missing")
    assert missing["details"]["relation"] == "tags_name"
    assert "REINDEX INDEX public.tags_name" in missing["advice"]
    [damaged] = run.findings("postgres", "table-corrupt")
    assert damaged["details"]["relation"] == "notes" and "invalid page" in damaged["message"]
    [failures] = run.findings("postgres", "checksum-failures")
    assert failures["details"]["database"] == "postgres" and failures["details"]["checksum_failures"] >= 1


def test_damaged_toast_chunks(new_cluster):
    cluster = new_cluster(checksums=False)
    cluster.sql("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    cluster.sql("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    cluster.sql("INSERT INTO docs SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 20) g")
    toast = cluster.relation_file(
        cluster.sql("SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'docs'")[0][0]
    )
    cluster.stop()
    zero_block(toast, 0, BLOCK)  # a lost write of a whole page: zeros, as a fresh extent reads
    cluster.start()

    run = audit(cluster, "full_read=true")
    assert run.code == 2, run.stdout + run.stderr
    toast_findings = run.findings("postgres", "toast-corrupt")
    assert toast_findings, run.stdout
    assert any("public.docs" in f["advice"] for f in toast_findings)


def test_zeroed_pg_xact_segment_loses_rows_without_an_error(new_cluster):
    cluster = new_cluster()
    cluster.sql("CREATE TABLE orders (id int, amount int)")
    cluster.sql("SELECT count(*) FROM orders")
    cluster.sql("CHECKPOINT")
    cluster.sql("INSERT INTO orders SELECT g, g FROM generate_series(1, 5000) g")
    wait_for_stats(cluster, "orders", 5000)
    cluster.stop()
    segment = cluster.data / "pg_xact" / "0000"
    zero_block(segment, 0, segment.stat().st_size)
    cluster.start()

    assert cluster.sql("SELECT count(*) FROM orders")[0][0] == 0  # gone, and nothing complains
    run = audit(cluster)
    [lost] = run.findings("postgres", "rows-lost")
    assert lost["details"]["relation"] == "orders"
    assert lost["details"]["rows"] == 0 and lost["details"]["estimated_rows"] == 5000
    assert run.code == 1, run.stdout + run.stderr


def test_findings_do_not_depend_on_how_many_connections_check_a_database(new_cluster):
    """Checks of one database spread over several connections: the report is the same as with one."""
    cluster = new_cluster(checksums=False)
    for dbname in ("postgres", "shop"):
        if dbname == "shop":
            cluster.sql("CREATE DATABASE shop")  # amcheck comes with template1
        # A table big enough to be checked on its own connection, and small ones checked in groups.
        cluster.sql("CREATE TABLE big (id int PRIMARY KEY, pad text)", dbname)
        cluster.sql("INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 30000) g", dbname)
        cluster.sql("CREATE TABLE people (id int PRIMARY KEY, name text)", dbname)
        cluster.sql("INSERT INTO people SELECT g, 'person ' || g FROM generate_series(1, 300) g", dbname)
        cluster.sql("CREATE TABLE events (id int, pad text)", dbname)
        cluster.sql("INSERT INTO events SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g", dbname)
        cluster.sql("CREATE TABLE tags (id int, name text)", dbname)
        cluster.sql("CREATE INDEX tags_name ON tags (name)", dbname)
        cluster.sql("INSERT INTO tags SELECT g, 'tag ' || g FROM generate_series(1, 500) g", dbname)
        cluster.sql("VACUUM ANALYZE", dbname)
    damage = {}
    for dbname in ("postgres", "shop"):
        block, offset = cluster.ctid("SELECT ctid FROM people WHERE id = 10", dbname)
        big_block, big_offset = cluster.ctid("SELECT ctid FROM big WHERE id = 20000", dbname)
        damage[dbname] = (
            (cluster.relation_file("people", dbname), block, offset),
            (cluster.relation_file("big", dbname), big_block, big_offset),
            cluster.relation_file("events", dbname),
            cluster.relation_file("tags_name", dbname),
        )
    cluster.stop()
    for (heap, block, offset), (big, big_block, big_offset), events, index in damage.values():
        for path, page, item in ((heap, block, offset), (big, big_block, big_offset)):
            lp_off, _ = line_pointer(read_page(path, page), item)
            write_at(path, page * BLOCK + lp_off, b"\xff" * 23)
        truncate(events, BLOCK)
        os.unlink(index)
    cluster.start()

    runs = [audit(cluster, jobs=jobs) for jobs in (1, 3, 3)]
    for run in runs:
        assert run.code == 2, run.stdout + run.stderr
    one = runs[0].check("postgres")
    assert {"table-corrupt", "file-short", "file-missing"} <= {f["code"] for f in one["findings"]}
    assert {f["details"].get("database") for f in one["findings"]} == {None, "postgres", "shop"}
    for run in runs[1:]:
        assert run.check("postgres")["findings"] == one["findings"]
        assert run.check("postgres")["stats"] == one["stats"]


def test_cluster_that_cannot_start_is_unknown_with_its_log(new_cluster):
    cluster = new_cluster()
    cluster.stop()
    truncate(cluster.data / "global" / "pg_control", 0)
    assert cluster.start(check=False).returncode != 0

    run = audit_data_dir(cluster)
    assert run.code == 3, run.stdout + run.stderr
    [down] = run.findings("postgres", "cluster-down")
    assert down["details"]["log_tail"], down
    assert any("pg_control" in line for line in down["details"]["log_tail"])
    assert run.check("postgres")["status"] == "unknown"


def test_role_without_privileges_is_not_damage(shared_cluster):
    cluster = shared_cluster
    cluster.sql("CREATE ROLE clerk LOGIN")
    cluster.sql("CREATE TABLE ledger AS SELECT g AS id FROM generate_series(1, 1000) g")
    cluster.sql("CREATE INDEX ON ledger (id)")
    cluster.sql("VACUUM ANALYZE ledger")

    run = audit(cluster, dsn=cluster.dsn_for("clerk"))
    assert run.code == 3, run.stdout + run.stderr
    codes = run.codes("postgres")
    assert "permission-denied" in codes
    assert not codes & CORRUPTION
    assert run.check("postgres")["status"] == "unknown"


def test_a_locked_table_times_out_and_the_rest_is_checked(shared_cluster):
    cluster = shared_cluster
    cluster.sql("CREATE TABLE busy (id int PRIMARY KEY)")
    cluster.sql("INSERT INTO busy SELECT generate_series(1, 1000)")
    holder = cluster.connect()
    try:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        run = audit(cluster, "lock_timeout=0.2")
    finally:
        holder.close()
    assert run.code == 3, run.stdout + run.stderr
    assert run.codes("postgres") == {"timeout"}
    assert {f["details"]["relation"] for f in run.findings("postgres", "timeout")} >= {"busy"}
    assert run.check("postgres")["stats"]["indexes_checked"] > 100


def test_unreachable_dsn_is_unknown(tmp_path):
    run = fsaudit(
        "audit", "--check", "postgres", "--format", "json", "--set", f"postgres.dsn=host={tmp_path} port=1"
    )
    assert run.code == 3
    assert run.codes("postgres") == {"connection-failed"}


# -- pure logic ---------------------------------------------------------------------------------


def test_discovery_reads_debian_layout_and_log_tail(tmp_path):
    from fsaudit.target import Target
    from fsaudit_checks.postgres.clusters import discover, log_tail, parse_conf

    conf = tmp_path / "etc/postgresql/15/main"
    conf.mkdir(parents=True)
    (conf / "postgresql.conf").write_text(
        "data_directory = '/srv/pg/main'   # moved\nport = 5433\n#port = 1\n"
        "unix_socket_directories = '/run/pg,/tmp'\n"
    )
    data = tmp_path / "srv/pg/main"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    logs = tmp_path / "var/log/postgresql"
    logs.mkdir(parents=True)
    (logs / "postgresql-15-main.log").write_text(
        "\n".join(f"line {n}" for n in range(100)) + "\nFATAL: boom\n"
    )

    [cluster] = discover(Target(tmp_path), [])
    assert (cluster.label, cluster.data_dir, cluster.port, cluster.socket_dir) == (
        "15/main",
        "/srv/pg/main",
        5433,
        "/run/pg",
    )
    assert not cluster.running and not cluster.problem
    lines, path = log_tail(Target(tmp_path), cluster)
    assert path == "/var/log/postgresql/postgresql-15-main.log"
    assert lines[-1] == "FATAL: boom" and len(lines) == 15
    assert parse_conf("a = 'it''s'\nb=3 # c\n") == {"a": "it's", "b": "3"}


def test_errors_are_classified_by_sqlstate():
    from fsaudit_checks.postgres.report import _location
    from fsaudit_checks.postgres.session import error_kind

    class Fake(Exception):
        def __init__(self, sqlstate):
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    assert error_kind(Fake("XX001")) == "corrupt"
    assert error_kind(Fake("XX002")) == "corrupt"
    assert error_kind(Fake("58P01")) == "corrupt"
    assert error_kind(Fake("42501")) == "permission"
    assert error_kind(Fake("57014")) == "timeout"
    assert error_kind(Fake("55P03")) == "timeout"
    assert error_kind(Fake("42P01")) == "gone"
    assert error_kind(Fake("22012")) == "other"
    assert _location('heap tuple (3,7) from table "t" lacks matching index tuple') == {
        "heap_block": 3,
        "heap_offset": 7,
    }


def test_the_finding_a_sequential_run_would_keep_wins_and_findings_come_sorted():
    from fsaudit_checks.postgres.parallel import PHASE_HEAPS, PHASE_ROWS, Slots, Task, run_tasks
    from fsaudit_checks.postgres.report import DatabaseReport, Relation
    from fsaudit_checks.postgres.session import Events

    emitted = []
    report = DatabaseReport(Events(emitted.append, "c", None), "", "db", {}, shared=False)
    people = Relation(
        1, "public", "people", "r", 1, 10.0, False, "p", "base/5/1", 8192, "heap", True, None, None, 10
    )
    parts = Relation(
        2, "public", "parts", "r", 1, 10.0, False, "p", "base/5/2", 8192, "heap", True, None, None, 10
    )
    report.rank = (PHASE_ROWS, 0)  # a row count saw the damage first ...
    report.table_corrupt(people, [{"message": "could not read"}], "counting rows", "XX001")
    report.rank = (PHASE_HEAPS, 0)  # ... verify_heapam, which runs before it in sequence, too
    report.table_corrupt(people, [{"block": 3, "offset": 7, "message": "bad xmin"}], "verify_heapam", None)
    report.rank = (PHASE_ROWS, 1)
    report.table_corrupt(people, [{"message": "again"}], "counting rows", "XX001")
    report.table_corrupt(parts, [{"message": "bad"}], "counting rows", "XX001")
    report.incomplete("b")
    report.incomplete("a")
    report.flush()
    findings = [event["finding"] for event in emitted if "finding" in event]
    assert [f["details"]["relation"] for f in findings] == ["parts", "people"]
    assert findings[1]["details"]["step"] == "verify_heapam" and findings[1]["details"]["block"] == 3
    assert [event["incomplete"] for event in emitted if "incomplete" in event] == ["a", "b"]

    # Biggest task first; with one slot everything runs on the calling thread, in that order.
    done = []
    report.slots = Slots(1)
    tasks = [
        Task(cost, 1, rank, lambda rank=rank: done.append(rank)) for rank, cost in enumerate((5, 50, 5, 9))
    ]
    run_tasks(report, tasks)
    assert done == [1, 3, 0, 2]


def test_password_comes_from_a_file_never_the_command_line(tmp_path):
    from fsaudit_checks.postgres import PostgresChecker

    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    checker = PostgresChecker({"dsn": ["host=/nowhere"], "password_file": [str(secret)]})
    assert checker.audit_settings()["password"] == "s3cret"
