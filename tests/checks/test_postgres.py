"""The `postgres` checker against real throwaway clusters, damaged on purpose while stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fixtures.corrupt import truncate, zero_block
from fixtures.postgres import (
    BLOCK,
    COLUMN_B,
    GARBAGE_XID,
    HEAP_XMAX_INVALID,
    HEAP_XMIN_COMMITTED,
    HEAP_XMIN_INVALID,
    OWNER,
    amcheck_table,
    as_owner,
    clear_all_visible,
    copy_cluster,
    edit_tuple_header,
    jump_to_segment,
    line_pointer,
    make_base_dir,
    make_template,
    read_page,
    server_bin,
    tuple_offset,
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


def test_zeroed_pg_xact_segment_is_found_from_evidence_and_the_statistics_stay_the_fallback(new_cluster):
    """Issue 14.3: a commit-log page overwritten with zeros hides rows committed long ago, without any
    error. The page reads 'in progress' for transactions older than every running one while tuples
    name them: critical `commit-log-damaged` naming the file and the tables. A role that may not read
    server files gets the statistics comparison (`rows-lost`, a warning) instead."""
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
    cluster.sql("CREATE ROLE reader LOGIN")  # after the damage: a role made before it is hidden too
    cluster.sql("GRANT pg_read_all_data, pg_read_all_stats TO reader")

    assert cluster.sql("SELECT count(*) FROM orders")[0][0] == 0  # gone, and nothing complains
    run = audit(cluster)
    assert run.code == 2, run.stdout + run.stderr
    damaged = {f["details"]["database"]: f for f in run.findings("postgres", "commit-log-damaged")}
    orders = damaged["postgres"]
    assert orders["severity"] == "critical" and orders["details"]["segment"] == "pg_xact/0000"
    assert orders["details"]["tables"][0] == {"table": "public.orders", "hidden_rows": 5000}
    assert orders["path"] == str(segment)
    assert "public.orders" in orders["advice"] and "VACUUM" in orders["advice"]
    # The evidence names the table: no guess from the statistics on top of it.
    assert not [f for f in run.findings("postgres", "rows-lost") if f["details"]["relation"] == "orders"]

    fallback = audit(cluster, dsn=cluster.dsn_for("reader"))
    assert "commit-log-damaged" not in fallback.codes("postgres")
    assert fallback.check("postgres")["stats"]["commit_log_not_read_clusters"] == 1
    [lost] = [f for f in fallback.findings("postgres", "rows-lost") if f["details"]["relation"] == "orders"]
    assert lost["details"]["rows"] == 0 and lost["details"]["estimated_rows"] == 5000
    assert lost["severity"] == "warning"


def test_full_read_never_reads_the_rows_of_a_table_found_damaged(new_cluster):
    """Issue 14.1, pg_amcheck 004's offset 12: column b's 1-byte varlena header overwritten with
    FC FF FF FF (it then claims about 1 GB). verify_heapam reports it; reading the row would crash
    the server (signal 11, every client dropped), so neither the full read nor `heapallindexed`
    touches the table. An application session open across the audit survives it."""
    cluster = new_cluster(checksums=False)
    heap = amcheck_table(cluster)
    cluster.stop()
    write_at(heap, tuple_offset(heap, 0, 12) + COLUMN_B, b"\xfc\xff\xff\xff")
    cluster.start()
    application = cluster.connect()
    try:
        run = audit(cluster, "full_read=true")
        assert application.execute("SELECT 1").fetchone() == (1,)  # the server never restarted
    finally:
        application.close()
    assert run.code == 2, run.stdout + run.stderr
    assert "terminated by signal" not in cluster.log.read_text(errors="replace")
    codes = run.codes("postgres")
    assert {"server-restarted", "check-failed", "index-corrupt"}.isdisjoint(codes), codes
    [damaged] = [f for f in run.findings("postgres", "table-corrupt") if f["details"]["relation"] == "test"]
    assert (damaged["details"]["block"], damaged["details"]["offset"]) == (0, 12)
    stats = run.check("postgres")["stats"]
    assert stats["tables_not_read_damaged"] == 1
    assert stats["indexes_checked_without_their_table"] == 1
    assert stats["tables_read"] > 50  # every other table was read in full


def test_a_server_restart_during_the_audit_is_said_plainly_and_ends_the_cluster_check(new_cluster):
    """Issue 14.1: if the server restarts anyway (here: the backend reading a table is killed, which
    makes the postmaster restart and drop every client), the report says so, critical, naming the
    relation being read, and nothing more is read from that cluster."""
    cluster = new_cluster()
    cluster.sql("CREATE TABLE busy (id int PRIMARY KEY)")
    cluster.sql("INSERT INTO busy SELECT generate_series(1, 1000)")
    holder = cluster.connect()
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
    args = ["audit", "--check", "postgres", "--format", "json", "--jobs", "2"]
    args += ["--set", f"postgres.dsn={cluster.dsn}", "--set", "postgres.lock_timeout=60"]
    child = subprocess.Popen(
        [sys.executable, "-m", "fsaudit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        waiting = []
        deadline = time.monotonic() + 60
        while not waiting and time.monotonic() < deadline:
            waiting = cluster.sql(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = 'fsaudit' AND wait_event_type = 'Lock'"
            )
            time.sleep(0.05)
        assert waiting, "fsaudit never waited for the locked table"
        os.kill(waiting[0][0], signal.SIGKILL)  # the postmaster now restarts, as after a crash
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
        try:
            holder.close()
        except Exception:  # the restart dropped it
            pass
    from tests.conftest import Run

    run = Run(subprocess.CompletedProcess(args, child.returncode, stdout, stderr))
    assert run.code == 2, stdout + stderr
    check = run.check("postgres")
    [restarted] = run.findings("postgres", "server-restarted")
    assert restarted["severity"] == "critical", restarted
    named = [restarted["details"]["relation"]] + (restarted["details"]["relations"] or [])
    assert {"public.busy", "public.busy_pkey"} & set(named), json.dumps(restarted)
    assert restarted["details"]["database"] == "postgres"
    assert "restarted during the audit" in check["reason"]
    # The dropped sessions are not reported as failed checks of innocent relations.
    assert "check-failed" not in run.codes("postgres")
    assert "checksum-failures" not in run.codes("postgres")


def _drop_verify_heapam(cluster, dbname="postgres"):
    """An amcheck without verify_heapam, as on PostgreSQL 13 and older (the index check then reads
    the table unverified, as the issue's audit did)."""
    signature = "verify_heapam(regclass, boolean, boolean, text, bigint, bigint)"
    cluster.sql(f"ALTER EXTENSION amcheck DROP FUNCTION {signature}", dbname)
    cluster.sql(f"DROP FUNCTION {signature}", dbname)


def test_garbage_transaction_ids_in_rows_are_table_damage_not_a_missing_index_file(new_cluster):
    """Issue 14.2, pg_amcheck 004's offsets 3 and 4: xmin and xmax 4026531839. Reading the rows fails
    with 58P01 naming pg_xact/0EFF; that is not the index's file (no `file-missing`, no REINDEX), it
    is a transaction the cluster never had: the table's rows are damaged."""
    cluster = new_cluster(checksums=False)
    heap = amcheck_table(cluster)
    _drop_verify_heapam(cluster)
    cluster.stop()
    edit_tuple_header(heap, 0, 3, xmin=GARBAGE_XID, clear_bits=HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID)
    edit_tuple_header(heap, 0, 4, xmax=GARBAGE_XID, clear_bits=HEAP_XMAX_INVALID)
    clear_all_visible(heap, 0)  # else readers take every row of the frozen page as visible
    cluster.start()

    run = audit(cluster)
    assert run.code == 2, run.stdout + run.stderr
    codes = run.codes("postgres")
    assert "file-missing" not in codes and "commit-log-damaged" not in codes, codes
    assert not [f for f in run.findings("postgres") if f["details"].get("relation") == "test_idx"]
    [damaged] = run.findings("postgres", "table-corrupt")
    assert damaged["details"]["relation"] == "test"
    assert damaged["details"]["problems"][0]["xid"] == GARBAGE_XID
    assert "never existed" in damaged["advice"] and "REINDEX" not in damaged["advice"]


def test_a_lost_commit_log_segment_is_commit_log_damage(new_cluster):
    """Issue 14.2 and 14.3: the rows of `orders` were written by transactions of pg_xact/0001, and
    that file is gone. As a superuser the evidence names the file and the table; a role that may not
    read server files gets the server's own 58P01 naming the file, classified the same way."""
    cluster = new_cluster()
    cluster.sql("CREATE TABLE orders (id int, amount int)")
    cluster.sql("SELECT count(*) FROM orders")  # its catalog rows are seen committed
    cluster.stop()
    jump_to_segment(cluster, 1)
    cluster.start()
    cluster.sql("INSERT INTO orders SELECT g, g FROM generate_series(1, 5000) g")
    wait_for_stats(cluster, "orders", 5000)
    cluster.stop()
    jump_to_segment(cluster, 2)
    os.unlink(cluster.data / "pg_xact" / "0001")
    cluster.start()
    cluster.sql("CREATE ROLE reader LOGIN")
    cluster.sql("GRANT pg_read_all_data, pg_read_all_stats TO reader")

    run = audit(cluster)
    assert run.code == 2, run.stdout + run.stderr
    [gone] = run.findings("postgres", "commit-log-damaged")
    assert gone["details"]["segment"] == "pg_xact/0001" and gone["details"]["file_gone"] is True
    assert gone["details"]["tables"] == [{"table": "public.orders", "hidden_rows": 5000}]
    assert gone["details"]["transactions"] == [{"first": 1 << 20, "last": (2 << 20) - 1}]

    reader = audit(cluster, dsn=cluster.dsn_for("reader"))
    assert reader.code == 2, reader.stdout + reader.stderr
    [named] = reader.findings("postgres", "commit-log-damaged")
    assert named["details"]["segment"] == "pg_xact/0001" and named["details"]["relation"] == "orders"
    assert "rows-lost" not in reader.codes("postgres")


def test_sequences_are_checked_against_the_catalog_and_read(new_cluster):
    """Issue 14.4: a sequence whose file is gone makes nextval() fail; one whose page is damaged too.
    Both are found (exit 2), with advice that says how to set a recreated sequence past the values
    in use."""
    cluster = new_cluster()
    cluster.sql("CREATE TABLE orders (id serial PRIMARY KEY, note text)")
    cluster.sql("CREATE TABLE parts (id serial PRIMARY KEY)")
    cluster.sql("CREATE SEQUENCE tickets")
    cluster.sql("INSERT INTO orders (note) SELECT 'x' FROM generate_series(1, 10)")
    cluster.sql("SELECT nextval('tickets'), nextval('parts_id_seq')")
    orders_seq = cluster.relation_file("orders_id_seq")
    parts_seq = cluster.relation_file("parts_id_seq")
    cluster.stop()
    os.unlink(orders_seq)
    write_at(parts_seq, 4000, b"\x01\x02")  # checksums on: the page no longer verifies
    cluster.start()

    run = audit(cluster)
    assert run.code == 2, run.stdout + run.stderr
    [missing] = run.findings("postgres", "file-missing")
    assert missing["details"]["relation"] == "orders_id_seq" and missing["details"]["kind"] == "sequence"
    assert "SELECT setval('public.orders_id_seq', max(id)) FROM public.orders;" in missing["advice"]
    [damaged] = run.findings("postgres", "table-corrupt")
    assert damaged["details"]["relation"] == "parts_id_seq" and damaged["details"]["kind"] == "sequence"
    assert "setval('public.parts_id_seq', max(id)) FROM public.parts" in damaged["advice"]
    assert run.check("postgres")["stats"]["sequences_read"] >= 1  # tickets, undamaged


def test_index_kinds_amcheck_cannot_verify_are_counted_and_said(new_cluster):
    """Issue 14.5: on PostgreSQL 15 amcheck verifies btree indexes only; hash, gist, spgist, brin and
    gin indexes are counted as not verified and said so (info), never silently taken as sound."""
    cluster = new_cluster()
    cluster.sql("CREATE DATABASE kinds")
    cluster.sql("CREATE TABLE shapes (id int, p point, tags int[], n int)", "kinds")
    cluster.sql(
        "INSERT INTO shapes SELECT g, point(g, g), ARRAY[g, g + 1], g FROM generate_series(1, 200) g", "kinds"
    )
    for statement in (
        "CREATE INDEX shapes_gist ON shapes USING gist (p)",
        "CREATE INDEX shapes_spgist ON shapes USING spgist (p)",
        "CREATE INDEX shapes_gin ON shapes USING gin (tags)",
        "CREATE INDEX shapes_brin ON shapes USING brin (n)",
        "CREATE INDEX shapes_hash ON shapes USING hash (n)",
        "CREATE UNIQUE INDEX shapes_id ON shapes (id)",
    ):
        cluster.sql(statement, "kinds")
    run = audit(cluster, "databases=kinds")
    assert run.code == 0, run.stdout + run.stderr
    [said] = run.findings("postgres", "indexes-not-verified")
    assert said["severity"] == "info"
    assert said["details"]["access_methods"] == {"gist": 1, "spgist": 1, "gin": 1, "brin": 1, "hash": 1}
    stats = run.check("postgres")["stats"]
    assert stats["indexes_not_verified"] == 5 and stats["indexes_not_verified_gin"] == 1
    assert stats["indexes_checked"] > 100  # the btree ones, shapes_id among them


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


def test_a_data_directory_this_user_may_not_read_is_not_damage(tmp_path):
    """The shared convention: permission denied is never a finding; counted, and the check unknown."""
    data = tmp_path / "main"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    data.chmod(0o700)
    tmp_path.chmod(0o755)
    run = fsaudit(
        "audit",
        "--check",
        "postgres",
        "--format",
        "json",
        "--set",
        f"postgres.data_dir={data}",
        user="nobody",
    )
    check = run.check("postgres")
    assert run.code == 3, run.stdout + run.stderr
    assert check["findings"] == []
    assert check["stats"]["not_checked_permission"] == 1
    assert "permission denied (run as root to check them)" in check["reason"]


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
    from fsaudit_checks.postgres.problems import Incomplete, Place, Problem
    from fsaudit_checks.postgres.relation import Relation
    from fsaudit_checks.postgres.report import DatabaseReport

    report = DatabaseReport(Place("c", None), "", "db", {}, shared=False)
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
    emitted = report.flush()
    findings = [item.__dict__ for item in emitted if isinstance(item, Problem)]
    assert [f["details"]["relation"] for f in findings] == ["parts", "people"]
    assert findings[1]["details"]["step"] == "verify_heapam" and findings[1]["details"]["block"] == 3
    assert [item.reason for item in emitted if isinstance(item, Incomplete)] == ["a", "b"]

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


def test_amcheck_calls_follow_the_server_version_and_the_installed_functions():
    """Issue 14.5: checkunique for unique btree indexes on 17+ (amcheck 1.4), gin_index_check on 18+
    (amcheck 1.5); an extension left at an older version keeps the older calls."""
    from fsaudit_checks.postgres.amcheck import Amcheck

    def text(statement):
        return statement.as_string(None)

    bt = ("bt_index_check", ["index", "heapallindexed"])
    bt_unique = ("bt_index_check", ["index", "heapallindexed", "checkunique"])
    heap = ("verify_heapam", ["relation", "on_error_stop", "check_toast", "skip", "startblock", "endblock"])
    gin = ("gin_index_check", ["index"])

    v15 = Amcheck.from_functions("public", 150004, [bt, heap])
    assert (v15.heap, v15.checkunique, v15.gin) == (True, False, False)
    assert [v15.verifies(kind) for kind in ("btree", "gin", "gist", "hash", None)] == [True] + [False] * 4
    one, many = v15.index_statements("btree")
    assert "checkunique" not in text(one) and "u.uniq" not in text(many)
    assert text(one) == 'SELECT "public".bt_index_check(%(oid)s::oid::regclass, %(heapallindexed)s::bool)'

    v13 = Amcheck.from_functions("ext", 130010, [bt])
    assert not v13.heap and not v13.checkunique

    v17 = Amcheck.from_functions("public", 170002, [bt, bt_unique, heap])
    assert v17.checkunique and not v17.gin
    one, many = v17.index_statements("btree")
    assert "%(unique)s::bool)" in text(one) and "bt_index_check(u.oid::regclass, u.heap, u.uniq)" in text(
        many
    )
    # PostgreSQL 17 with amcheck still at 1.3 (not updated after the upgrade): no checkunique.
    assert not Amcheck.from_functions("public", 170002, [bt, heap]).checkunique

    v18 = Amcheck.from_functions("public", 180000, [bt, bt_unique, heap, gin])
    assert v18.gin and v18.verifies("gin") and not v18.verifies("gist")
    one, many = v18.index_statements("gin")
    assert text(one) == 'SELECT "public".gin_index_check(%(oid)s::oid::regclass)'
    assert not Amcheck.from_functions("public", 170002, [bt, heap, gin]).gin


def test_files_named_in_server_errors_are_classified():
    """Issue 14.2: the file a 58P01 names says what is damaged."""
    from fsaudit_checks.postgres.commitlog import named_file, refused_for_damage, segment_of, xid_in_message

    relation = named_file('could not open file "base/5/16404": No such file or directory')
    assert (relation.kind, relation.relation, relation.fork) == ("relation", "base/5/16404", "")
    fork = named_file('could not open file "pg_tblspc/16385/PG_15_202209061/5/16386_vm.2": x')
    assert (fork.kind, fork.relation, fork.fork) == (
        "relation",
        "pg_tblspc/16385/PG_15_202209061/5/16386",
        "vm",
    )
    xact = named_file(
        "could not access status of transaction 4026531839", 'Could not open file "pg_xact/0EFF": x'
    )
    assert (xact.kind, xact.area, xact.multixact) == ("commit-log", "pg_xact", False)
    assert named_file('could not open file "pg_multixact/offsets/0000": x').multixact
    assert named_file('could not open file "global/pg_filenode.map": x').kind == "other"
    assert named_file("no file here") is None
    # A relation's name in quotes is not a file, whatever the tenant named it.
    assert named_file('index "pg_xact/0EFF" lacks a main relation fork') is None
    assert xid_in_message("could not access status of transaction 4026531839") == 4026531839
    assert segment_of(4026531839) == "0EFF" and segment_of(1048576) == "0001"
    # A socket path in a connection error is not a damaged file.
    assert refused_for_damage('connection to server on socket "/tmp/x/.s.PGSQL.5432" failed: refused') is None
    assert (
        refused_for_damage(
            'FATAL:  could not access status of transaction 727 DETAIL:  Could not open file "pg_xact/0000"'
        ).path
        == "pg_xact/0000"
    )


def test_commit_log_pages_and_the_rows_they_hide():
    """Issue 14.3, pure logic: which commit-log pages count as damaged, confirmed by the server, and
    which tuples of a heap page they hide. Hostile page bytes never raise."""
    import random
    import struct

    from fsaudit_checks.postgres.commitlog import (
        PAGE_BYTES,
        PAGE_XIDS,
        SEGMENT_BYTES,
        DamagedPage,
        Horizon,
        full_xid,
        hidden_in_page,
        precedes,
        spans,
        zero_pages,
    )

    committed = bytes([0x55]) * PAGE_BYTES  # 01 01 01 01: every transaction committed
    segment = bytearray(committed * 3)
    segment[PAGE_BYTES : 2 * PAGE_BYTES] = bytes(PAGE_BYTES)  # page 1 zeroed
    horizon = Horizon(oldest=700, running=3 * PAGE_XIDS - 10, checkpoint=3 * PAGE_XIDS - 5)
    asked = []

    def status(xids):
        asked.extend(xids)
        return ["aborted"] * len(xids)

    damaged, read = zero_pages(horizon, lambda name: bytes(segment) if name == "0000" else None, status)
    assert read == 3
    assert [(d.segment, d.page, d.first, d.last, d.gone) for d in damaged] == [
        ("0000", 1, PAGE_XIDS, 2 * PAGE_XIDS - 1, False)
    ]
    assert asked and all(PAGE_XIDS <= xid < 2 * PAGE_XIDS for xid in asked)
    # The server holds the page newer than the disk: not damage.
    assert zero_pages(horizon, lambda name: bytes(segment), lambda xids: ["committed"] * len(xids))[0] == []
    # A segment that is gone: every page of it, marked gone, the server asked once for the segment.
    calls = []
    gone, _ = zero_pages(horizon, lambda name: None, lambda xids: calls.append(xids) or [None] * len(xids))
    assert [page.gone for page in gone] == [True, True, True] and len(calls) == 1
    assert max(calls[0]) < horizon.end
    assert spans(gone) == [(3, 3 * PAGE_XIDS - 11)]  # a page counts from its first transaction
    assert SEGMENT_BYTES == 32 * PAGE_BYTES

    assert precedes(4026531839, 716) and not precedes(716, 4026531839) and precedes(5, 6)
    assert full_xid(5, (1 << 32) + 10) == (1 << 32) + 5 and full_xid(20, (1 << 32) + 10) == 20

    # A heap page: three tuples, xmin 1000 (hidden), 40000 (hidden but seen committed), 50 (not damaged).
    page = bytearray(PAGE_BYTES)
    items = [(8000, 1000, 0), (7900, 40000, 0x0100), (7800, 50, 0)]
    struct.pack_into("<HH", page, 12, 24 + 4 * len(items), 7800)
    for index, (offset, xmin, infomask) in enumerate(items):
        struct.pack_into("<I", page, 24 + 4 * index, offset | (1 << 15) | (40 << 17))
        struct.pack_into("<I", page, offset, xmin)
        struct.pack_into("<H", page, offset + 20, infomask)
    pages = [DamagedPage("0000", 0, 700, PAGE_XIDS - 1), DamagedPage("0000", 1, PAGE_XIDS, 2 * PAGE_XIDS - 1)]
    assert hidden_in_page(bytes(page), pages) == {"pg_xact/0000": 1}
    noise = random.Random(14)
    for _ in range(300):
        junk = bytes(noise.getrandbits(8) for _ in range(PAGE_BYTES))
        hidden_in_page(junk, pages)
    assert hidden_in_page(b"short", pages) == {}
