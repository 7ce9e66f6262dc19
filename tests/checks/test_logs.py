"""Checker `logs`: real-looking kernel, system and service logs, rotated and compressed, a real
systemd journal, and damaged logs, through the real CLI; the signature table and the time parsing
as pure logic."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from fixtures.logs import JOURNAL_REMOTE, make_journal, write_gzip_log, write_log
from fsaudit_checks.logs import LogsChecker
from fsaudit_checks.logs.scan import quote
from fsaudit_checks.logs.signatures import CODES, SIGNATURES, TRIGGERS, match, trigger_positions
from fsaudit_checks.logs.times import line_time
from tests.conftest import Run, fsaudit, require_program

UTC = timezone.utc
WINDOW = "2014-06-02T00:00:00Z..2014-06-07T00:00:00Z"
JUNE_5 = datetime(2014, 6, 5, 8, 0, tzinfo=UTC)


def audit(root, *args) -> Run:
    return fsaudit("audit", "--root", root, "--check", "logs", "--format", "json", *args, timeout=120)


def by_signature(run: Run) -> dict:
    found = {}
    for finding in run.check("logs")["findings"]:
        if "signature" in finding["details"]:
            found.setdefault(finding["details"]["signature"], []).append(finding)
    return found


@pytest.fixture
def image(tmp_path):
    """A VM image's logs around an incident on 3 June 2014 (the system's zone: UTC)."""
    root = tmp_path / "root"
    log = root / "var" / "log"
    write_log(
        log / "kern.log",
        [
            "Jun  1 23:59:58 vm42 kernel: [    0.000000] Linux version 3.2.0-4-amd64",
            "Jun  1 23:59:59 vm42 kernel: EXT4-fs error (device vda1): ext4_lookup:1602: inode #2: comm ls: "
            "deleted inode referenced: 1048602",  # before the window: not reported
            "Jun  3 12:00:01 vm42 kernel: [ 1234.5678] Buffer I/O error on dev vda1, logical block 1234, "
            "lost async page write",
            "Jun  3 12:00:02 vm42 kernel: EXT4-fs error (device vda1): ext4_find_entry:1455: inode #131073: "
            "comm nginx: checksum invalid",
            "Jun  3 12:00:03 vm42 kernel: \x1b[31mEXT4-fs (vda1): Remounting filesystem read-only",
        ],
        JUNE_5,
    )
    write_gzip_log(
        log / "kern.log.1.gz",
        ["May 31 10:00:00 vm42 kernel: blk_update_request: I/O error, dev vda, sector 2048 op 0x1:(WRITE)"],
        datetime(2014, 5, 31, 10, 0, tzinfo=UTC),
    )
    write_log(
        log / "syslog",
        [
            "Jun  3 12:05:00 vm42 slapd[901]: mdb_id2entry_get: failed: MDB_PAGE_NOTFOUND: "
            "Requested page not found",
            "Jun  3 12:05:01 vm42 CRON[1234]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1)",
        ],
        JUNE_5,
    )
    write_gzip_log(
        log / "syslog.2.gz",
        ['Jun  2 03:00:00 vm42 rsync[812]: readdir("/srv/data"): Structure needs cleaning (117)'],
        datetime(2014, 6, 2, 6, 25, tzinfo=UTC),
    )
    write_log(
        log / "postgresql" / "postgresql-15-main.log",
        [
            "2014-06-01 09:00:00.000 UTC [4242] ERROR:  invalid page in block 1 of relation base/16384/1",
            "2014-06-03 12:10:00.123 UTC [4242] ERROR:  invalid page in block 4 of relation base/16384/16397",
            "2014-06-03 12:10:00.123 UTC [4242] STATEMENT:  SELECT * FROM orders",
            "2014-06-03 14:10:00.123 CEST [4243] ERROR:  could not access status of transaction 3881909",
            "2014-06-03 12:11:00.001 UTC [4244] LOG:  checkpoint complete",
        ],
        JUNE_5,
    )
    write_log(
        root / "opt" / "plone" / "zeocluster" / "var" / "log" / "instance.log",
        [
            "2014-06-04T09:15:02 ERROR Zope.SiteErrorLog 1401873302.10.1 http://vm42/site/front-page",
            "Traceback (innermost last):",
            "  Module ZODB.Connection, line 860, in setstate",
            "ZODB.POSException.POSKeyError: 0x3e1a",
        ],
        JUNE_5,
    )
    write_log(
        log / "nginx" / "error.log",
        [
            '2014/06/03 12:20:00 [crit] 1234#1234: *1 pread() "/srv/www/index.html" failed '
            "(5: Input/output error)"
        ],
        JUNE_5,
    )
    return root


def test_signatures_since_the_window_start_are_reported_with_file_line_and_time(image):
    run = audit(image, "--window", WINDOW)
    assert run.code == 2, run.stderr
    check = run.check("logs")
    assert check["status"] == "critical"
    found = by_signature(run)
    assert set(found) == {
        "lost-page-write",
        "ext4-error",
        "ext4-corruption",
        "lmdb-corrupted",
        "structure-needs-cleaning",
        "pg-invalid-page",
        "pg-transaction-status",
        "zodb-poskeyerror",
        "eio",
    }
    ext4 = found["ext4-error"]
    assert len(ext4) == 1  # the one on 1 June is before the window
    assert ext4[0]["path"] == "/var/log/kern.log" and ext4[0]["code"] == "filesystem-error"
    assert (
        ext4[0]["details"]["line_number"] == 4 and ext4[0]["details"]["time"] == "2014-06-03T12:00:02+00:00"
    )
    assert ext4[0]["subject"] == "ext4-error" and "checksum invalid" in ext4[0]["details"]["line"]
    # Terminal escapes in a log are quoted, never passed through.
    assert "\x1b" not in run.stdout and "\\x1b[31m" in found["ext4-corruption"][0]["details"]["line"]
    # The rotated, compressed syslog was read; the slapd line came through syslog.
    assert found["structure-needs-cleaning"][0]["path"] == "/var/log/syslog.2.gz"
    assert found["lmdb-corrupted"][0]["code"] == "ldap-corruption"
    pg = found["pg-invalid-page"]
    assert [f["details"]["line_number"] for f in pg] == [2]
    assert pg[0]["details"]["time"] == "2014-06-03T12:10:00+00:00"
    # A traceback line without a time of its own takes its header's.
    poskey = found["zodb-poskeyerror"][0]
    assert poskey["path"] == "/opt/plone/zeocluster/var/log/instance.log"
    assert poskey["details"]["time"] == "2014-06-04T09:15:02+00:00" and poskey["details"]["line_number"] == 4
    assert found["eio"][0]["severity"] == "warning" and found["eio"][0]["path"] == "/var/log/nginx/error.log"
    # kern.log.1.gz was last written before the window: not even opened.
    assert check["stats"]["logs_older_than_since"] == 1
    assert check["stats"]["since"] == "2014-06-02T00:00:00+00:00"


def test_lookback_reaches_before_the_window(image):
    run = audit(image, "--window", WINDOW, "--set", "logs.lookback=3")
    found = by_signature(run)
    assert found["block-request-error"][0]["path"] == "/var/log/kern.log.1.gz"
    assert len(found["ext4-error"]) == 2
    assert len(found["pg-invalid-page"]) == 2


def test_the_text_report_quotes_the_line(image):
    run = fsaudit("audit", "--root", image, "--check", "logs", "--window", WINDOW, timeout=120)
    assert run.code == 2
    assert "/var/log/kern.log (ext4-error): line 4 at 2014-06-03T12:00:02+00:00" in run.stdout


def test_damaged_logs_are_findings_and_a_fifo_does_not_block(image):
    log = image / "var" / "log"
    rotated = write_gzip_log(
        log / "messages.1.gz",
        [
            "Jun  3 12:30:00 vm42 kernel: XFS (vdb1): Corruption of in-memory data detected. "
            "Shutting down filesystem"
        ]
        + [
            f"Jun  3 12:30:{n % 60:02d} vm42 systemd[1]: Started Session {n} of user root."
            for n in range(5000)
        ],
        JUNE_5,
    )
    data = rotated.read_bytes()
    rotated.write_bytes(data[: len(data) // 2])  # a lost write cut the archive short
    os.utime(rotated, (JUNE_5.timestamp(), JUNE_5.timestamp()))
    # The tail of the live log was never written: zeros where lines were.
    messages = log / "messages"
    messages.write_bytes(b"Jun  3 12:40:00 vm42 systemd[1]: Starting Cleanup...\n" + b"\0" * 6000)
    os.utime(messages, (JUNE_5.timestamp(), JUNE_5.timestamp()))
    os.mkfifo(log / "daemon.log")
    run = audit(image, "--window", WINDOW)
    assert run.code == 2, run.stderr
    damaged = run.findings("logs", "log-damaged")
    assert [f["path"] for f in damaged] == ["/var/log/messages.1.gz"]
    assert damaged[0]["details"]["compression"] == "gzip"
    assert "xfs-corruption" in by_signature(run)  # the lines before the damage were read
    zeros = run.findings("logs", "log-zero-filled")
    assert [f["path"] for f in zeros] == ["/var/log/messages"]
    assert zeros[0]["details"]["zero_bytes"] == 6000 and zeros[0]["details"]["first_offset"] == 53
    unreadable = run.findings("logs", "log-unreadable")
    assert [f["path"] for f in unreadable] == ["/var/log/daemon.log"]
    assert "FIFO" in unreadable[0]["message"]


def test_long_lines_and_large_files_are_read_in_bounded_pieces(tmp_path):
    root = tmp_path / "root"
    log = root / "var" / "log"
    line = "Jun  3 12:00:01 vm42 kernel: EXT4-fs error (device vda1): ext4_readdir: bad entry"
    # 6 MiB without a newline, then a signature line: the scan goes on past the giant line.
    (log).mkdir(parents=True)
    (log / "kern.log").write_bytes(b"x" * (6 << 20) + b"\n" + line.encode() + b"\n")
    os.utime(log / "kern.log", (JUNE_5.timestamp(), JUNE_5.timestamp()))
    # 3 MiB of old lines and one signature at the end: with max_file_mb=1 only the end is read.
    filler = b"Jun  3 11:00:00 vm42 systemd[1]: Started Session 1 of user root.\n" * (3 << 14)
    (log / "syslog").write_bytes(filler + line.encode() + b"\n")
    os.utime(log / "syslog", (JUNE_5.timestamp(), JUNE_5.timestamp()))
    run = audit(root, "--window", WINDOW, "--set", "logs.max_file_mb=1")
    found = {f["path"]: f for f in by_signature(run)["ext4-error"]}
    assert found["/var/log/syslog"]["details"]["line_number"] is None  # read from the middle
    assert found["/var/log/kern.log"]["details"]["line_number"] is None
    assert [f["path"] for f in run.findings("logs", "log-partly-read")] == [
        "/var/log/kern.log",
        "/var/log/syslog",
    ]
    run = audit(root, "--window", WINDOW)
    found = {f["path"]: f for f in by_signature(run)["ext4-error"]}
    assert found["/var/log/kern.log"]["details"]["line_number"] == 2
    assert found["/var/log/syslog"]["details"]["line_number"] == (3 << 14) + 1


def test_many_matches_are_listed_up_to_the_limit_then_counted(tmp_path):
    root = tmp_path / "root"
    lines = [
        f"Jun  3 12:00:{n:02d} vm42 kernel: Buffer I/O error on device vda1, block {n}" for n in range(30)
    ]
    write_log(root / "var" / "log" / "kern.log", lines, JUNE_5)
    run = audit(root, "--window", WINDOW, "--set", "logs.max_per_signature=5")
    listed = by_signature(run)["buffer-io-error"]
    assert len(listed) == 5 and all(f["severity"] == "critical" for f in listed)
    [rest] = run.check("logs")["not_listed"]
    assert (rest["count"], rest["severity"], rest["path"]) == (25, "critical", "/var/log/kern.log")
    assert rest["subject"] == listed[0]["subject"] and "2014-06-03T12:00:29+00:00" in rest["last"]
    assert run.check("logs")["stats"]["lines_matched"] == 30


def test_without_a_window_the_last_30_days_are_read(tmp_path):
    root = tmp_path / "root"
    now = datetime.now(UTC).replace(microsecond=0)
    old = now - timedelta(days=40)
    write_log(
        root / "var" / "log" / "app.log",
        [f"{old.isoformat()} ERROR sqlite3.DatabaseError: database disk image is malformed",
         f"{now.isoformat()} ERROR sqlite3.DatabaseError: database disk image is malformed"],
        now,
    )  # fmt: skip
    run = audit(root, "--set", "logs.paths=/var/log/app.log")
    found = by_signature(run)["sqlite-malformed"]
    assert [f["details"]["time"] for f in found] == [now.isoformat()]
    assert found[0]["code"] == "sqlite-corruption"


def test_no_logs_at_all_is_skipped_with_the_reason(tmp_path):
    (tmp_path / "root" / "etc").mkdir(parents=True)
    run = audit(tmp_path / "root", "--window", WINDOW)
    assert run.code == 0
    assert run.check("logs")["status"] == "skipped" and "/var/log" in run.check("logs")["reason"]


def test_a_clean_log_is_ok(tmp_path):
    root = tmp_path / "root"
    write_log(root / "var" / "log" / "syslog", ["Jun  3 12:05:01 vm42 CRON[1234]: (root) CMD (true)"], JUNE_5)
    run = audit(root, "--window", WINDOW)
    assert run.code == 0 and run.check("logs")["findings"] == []
    assert run.check("logs")["stats"]["logs_read"] == 1
    # No journal in the image: none is read (this machine's own journal never is under --root).
    assert "journal_entries_read" not in run.check("logs")["stats"]


# -- the systemd journal -------------------------------------------------------------------------------


@pytest.fixture
def journal_image(tmp_path):
    if not os.access(JOURNAL_REMOTE, os.X_OK):
        pytest.fail(
            f"{JOURNAL_REMOTE} is missing: apt-get install systemd-journal-remote (tests/run installs it)"
        )
    root = tmp_path / "root"
    make_journal(
        root,
        [
            (datetime(2014, 6, 1, 12, 0, tzinfo=UTC), "kernel", "EXT4-fs error (device vda1): too early"),
            (datetime(2014, 6, 3, 12, 0, 1, tzinfo=UTC), "kernel", "systemd-journald[123]: Received SIGTERM"),
            (datetime(2014, 6, 3, 12, 0, 2, tzinfo=UTC), "kernel",
             "blk_update_request: I/O error, dev vda, sector 2048 op 0x1:(WRITE) flags 0x800"),
            (datetime(2014, 6, 3, 12, 0, 3, tzinfo=UTC), "postgres",
             'ERROR:  index "orders_pkey" contains unexpected zero page at block 7'),
            (datetime(2014, 6, 3, 12, 0, 4, tzinfo=UTC), "kernel", b"caf\xe9: EXT4-fs error (device vda): x"),
        ],
    )  # fmt: skip
    return root


def test_the_journal_of_the_image_is_read_with_journalctl(journal_image):
    run = audit(journal_image, "--window", WINDOW)
    assert run.code == 2, run.stderr
    found = by_signature(run)
    assert set(found) == {"block-request-error", "pg-index-corruption", "ext4-error"}
    block = found["block-request-error"][0]
    assert block["path"] == "/var/log/journal"
    assert block["details"]["time"] == "2014-06-03T12:00:02+00:00"
    assert block["details"]["identifier"] == "kernel" and block["details"]["cursor"].startswith("s=")
    assert found["pg-index-corruption"][0]["details"]["line"].startswith("postgres: ERROR:  index")
    # A binary MESSAGE (not UTF-8) is matched and quoted with escapes; the entry before the window is not.
    assert [f["details"]["line"] for f in found["ext4-error"]] == [
        "kernel: caf\\xe9: EXT4-fs error (device vda): x"
    ]
    assert run.check("logs")["stats"]["journal_entries_read"] == 4
    assert not run.findings("logs", "journal-unreadable")


def test_the_journal_can_be_left_out(journal_image):
    run = audit(journal_image, "--window", WINDOW, "--set", "logs.journal=false")
    assert run.code == 0 and "journal_entries_read" not in run.check("logs")["stats"]


def test_a_damaged_journal_file_is_reported(journal_image):
    journal = next((journal_image / "var" / "log" / "journal").rglob("system.journal"))
    data = bytearray(journal.read_bytes())
    data[8:16] = b"\xff" * 8  # the header's compatible/incompatible flags: unknown to journalctl
    journal.write_bytes(bytes(data))
    run = audit(journal_image, "--window", WINDOW)
    unreadable = run.findings("logs", "journal-unreadable")
    assert unreadable and "unsupported feature" in unreadable[0]["message"]
    assert run.code == 3 and "could not read all of /var/log/journal" in run.check("logs")["reason"]


# -- pure logic -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("signature", SIGNATURES, ids=lambda s: s.name)
def test_each_signature_matches_its_own_example(signature):
    line = signature.example.encode()
    assert signature.trigger in line
    assert trigger_positions(line) == [0]
    assert match(line) is signature
    assert signature.code in CODES and signature.code in LogsChecker.codes


def test_signature_names_are_unique_and_ordinary_lines_match_nothing():
    assert len({s.name for s in SIGNATURES}) == len(SIGNATURES)
    assert TRIGGERS
    for line in (
        b"Jun  3 12:00:01 vm42 kernel: EXT4-fs (vda1): mounted filesystem with ordered data mode.",
        b"Jun  3 12:00:01 vm42 kernel: XFS (vdb1): Mounting V5 Filesystem",
        b"2014-06-03 12:00:01.123 UTC [4242] LOG:  database system is ready to accept connections",
        b"2014-06-03 12:00:01.123 UTC [4242] LOG:  invalid record length at 0/1F000A0: wanted 24, got 0",
        b'Jun  3 12:00:01 vm42 slapd[901]: conn=1000 op=1 SRCH base="dc=example,dc=com"',
    ):
        assert match(line) is None, line


def test_trigger_positions_find_each_line_once():
    block = b"ok\nEXT4-fs error and Input/output error\nok\nPOSKeyError"
    assert trigger_positions(block) == [3, 43]


LOCAL = timezone(timedelta(hours=2))
MTIME = datetime(2014, 6, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"Jun  3 12:00:01 vm42 kernel: x", datetime(2014, 6, 3, 12, 0, 1, tzinfo=LOCAL)),
        (b"<13>Jun  4 01:02:03 vm42 x", datetime(2014, 6, 4, 1, 2, 3, tzinfo=LOCAL)),
        (b"2014-06-03T12:00:01.123456+00:00 vm42 x", datetime(2014, 6, 3, 12, 0, 1, 123456, tzinfo=UTC)),
        (b"<34>1 2014-06-03T12:00:01Z vm42 app - - x", datetime(2014, 6, 3, 12, 0, 1, tzinfo=UTC)),
        (b"2014-06-03 12:00:01.123 UTC [1] LOG: x", datetime(2014, 6, 3, 12, 0, 1, 123000, tzinfo=UTC)),
        (b"2014-06-03 12:00:01 CEST [1] LOG: x", datetime(2014, 6, 3, 12, 0, 1, tzinfo=LOCAL)),
        (
            b'{"timestamp":"2014-06-03 12:00:01.5 UTC","pid":1}',
            datetime(2014, 6, 3, 12, 0, 1, 500000, tzinfo=UTC),
        ),
        (b"2014-06-03 12:00:01,442 ERROR x", datetime(2014, 6, 3, 12, 0, 1, 442000, tzinfo=LOCAL)),
        (b"2014-06-04T09:15:02 ERROR Zope x", datetime(2014, 6, 4, 9, 15, 2, tzinfo=LOCAL)),
        (b"2014/06/03 12:20:00 [crit] 1#1: x", datetime(2014, 6, 3, 12, 20, tzinfo=LOCAL)),
        (
            b"[Tue Jun 03 12:00:01.123456 2014] [core:error] x",
            datetime(2014, 6, 3, 12, 0, 1, 123456, tzinfo=LOCAL),
        ),
        (b"[Tue Jun 03 12:00:01 2014] [error] x", datetime(2014, 6, 3, 12, 0, 1, tzinfo=LOCAL)),
        (b"Traceback (most recent call last):", None),
        (b"[ 1234.5678] EXT4-fs error", None),
        (b"Feb 30 12:00:01 vm42 x", None),
        (b"2014-13-03T12:00:01 x", None),
    ],
)
def test_line_times(line, expected):
    assert line_time(line, LOCAL, MTIME) == expected


def test_syslog_lines_after_the_file_mtime_belong_to_the_year_before():
    new_year = datetime(2015, 1, 2, 8, 0, tzinfo=UTC)
    assert line_time(b"Dec 31 23:59:59 vm42 x", UTC, new_year) == datetime(
        2014, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    assert line_time(b"Jan  2 07:00:00 vm42 x", UTC, new_year) == datetime(2015, 1, 2, 7, 0, tzinfo=UTC)


def test_quotes_are_bounded_and_escaped():
    assert quote(b"a\x1b[2Jb\x00c\n") == "a\\x1b[2Jb\\x00c"
    assert quote(b"caf\xe9") == "caf\\xe9"
    long = quote(b"x" * 5000)
    assert len(long) == 400 and long.endswith("…")


def test_zstd_rotated_logs_are_read_with_zstd(tmp_path):
    zstd = require_program("zstd", "zstd")
    root = tmp_path / "root"
    plain = write_log(
        root / "var" / "log" / "syslog.1",
        ["Jun  3 12:00:01 vm42 app[7]: sqlite3.DatabaseError: database disk image is malformed"],
        JUNE_5,
    )
    subprocess.run([zstd, "-q", "--rm", str(plain), "-o", str(plain) + ".zst"], check=True)
    os.utime(str(plain) + ".zst", (JUNE_5.timestamp(), JUNE_5.timestamp()))
    run = audit(root, "--window", WINDOW)
    found = by_signature(run)["sqlite-malformed"]
    assert [(f["path"], f["details"]["line_number"]) for f in found] == [("/var/log/syslog.1.zst", 1)]
