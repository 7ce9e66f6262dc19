"""`logs` over hostile rotated logs: decompression bombs end in under 60 s and 1 GiB with a
warning that says what was not read (issue 13, item 8)."""

from __future__ import annotations

import bz2
import gzip
import lzma

from fixtures.measured import GIB
from tests.conftest import fsaudit_measured


def test_four_tiny_bzip2_bombs_are_cut_by_ratio_and_said_so(tmp_path):
    log = tmp_path / "var" / "log"
    log.mkdir(parents=True)
    stream = bz2.compress(b"\0" * (100 << 20), 9)
    for number in range(2, 6):
        (log / f"syslog.{number}.bz2").write_bytes(stream * 40)  # 4.5 KB, 4 GiB decompressed
    run, cost = fsaudit_measured(
        "audit", "--root", tmp_path, "--check", "logs", "--set", "logs.journal=false", "--format", "json"
    )
    assert cost.seconds < 60, cost
    assert cost.max_rss < GIB, cost
    cut = run.findings("logs", "log-partly-read")
    assert sorted(f["path"] for f in cut) == [f"/var/log/syslog.{n}.bz2" for n in range(2, 6)]
    assert all(f["details"]["max_ratio"] == 1000 for f in cut)
    assert run.code in (1, 2)
    # The cut is by ratio: 64 MiB of each, not max_file_mb's 1 GiB.
    assert run.check("logs")["stats"]["bytes_read"] == 4 * (64 << 20)


def test_an_ordinary_compressed_log_is_read_to_its_end(tmp_path):
    log = tmp_path / "var" / "log"
    log.mkdir(parents=True)
    lines = b"".join(
        b"Jun  3 12:00:%02d host app[1]: request %d served\n" % (n % 60, n) for n in range(200_000)
    )
    (log / "syslog.2.gz").write_bytes(gzip.compress(lines))
    (log / "syslog.3.xz").write_bytes(lzma.compress(lines))
    run, _ = fsaudit_measured(
        "audit", "--root", tmp_path, "--check", "logs", "--set", "logs.journal=false", "--format", "json"
    )
    assert not run.findings("logs", "log-partly-read")
    assert run.check("logs")["stats"]["bytes_read"] == 2 * len(lines)
