"""Issues 13.6 and 13.7 (progress): a progress line naming a file from the audited system must not
interpret rich markup (`[blink]`, `x[/bad]Data.fs` used to crash the audit with exit 3 and no
report) and must not pass its control characters to the terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys

from fsaudit.progress import Progress
from tests.conftest import REPO

HOSTILE = "x[/bad][blink]\x1b]0;PWNED\x07\x1b[2J\rOK forged"


def _under_a_terminal(args, timeout: float = 120) -> tuple:
    """Run fsaudit with its stderr on a pseudo-terminal (so progress is shown): (exit code, what the
    terminal received)."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "fsaudit", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=REPO,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "200"},
    )
    os.close(slave)
    received = b""
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            process.kill()
            raise AssertionError("fsaudit hung")
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        received += chunk
    os.close(master)
    return process.wait(timeout=timeout), received


def test_a_hostile_storage_name_in_the_progress_line_is_shown_inert(tmp_path):
    from fixtures.zodb import build_storage

    root = tmp_path / "root"
    layout = build_storage(root / "srv" / "app", blobs=False)
    # The path /srv/app/x[/bad][blink]...Data.fs: a directory "x[" holding "bad][blink]...Data.fs".
    directory, name = HOSTILE.split("/", 1)
    (root / "srv" / "app" / directory).mkdir()
    os.rename(layout.path, root / "srv" / "app" / directory / f"{name}Data.fs")
    report = tmp_path / "report.json"
    code, terminal = _under_a_terminal(
        ["audit", "--root", root, "--check", "zodb", "--set", "zodb.paths=/srv/app", "--format", "json"]
        + ["--output", report]
    )
    assert code in (0, 1), terminal.decode(errors="replace")[-2000:]
    check = json.loads(report.read_text())["checks"][0]
    assert check["name"] == "zodb" and check["status"] in ("ok", "warning")
    assert any(f["code"] == "storage-checked" for f in check["findings"])
    assert b"PWNED\x07" not in terminal and b"\x1b]0;" not in terminal and b"\rOK forged" not in terminal
    assert b"MarkupError" not in terminal and b"Traceback" not in terminal


def test_labels_are_plain_text_and_a_failing_display_turns_itself_off(monkeypatch):
    progress = Progress(enabled=True)
    progress.start(HOSTILE, total=3)
    try:
        description = progress._bar.tasks[0].description
        assert "\x1b" not in description and "\\x1b]0;PWNED\\x07" in description
        assert description.startswith("x[/bad][blink]")  # shown as it is, not as markup
        progress.update(description="[/oops]" + HOSTILE)
        progress.advance()
        progress.add_bytes(5 << 20)
        assert progress.bytes == 5 << 20
        monkeypatch.setattr(progress._bar, "advance", lambda *a, **k: 1 / 0)
        progress.advance()  # the display fails: it is turned off, the audit goes on
        assert not progress.enabled and progress._bar is None
    finally:
        progress.stop()
