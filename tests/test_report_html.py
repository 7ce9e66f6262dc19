"""The HTML report: self-contained, escaped, and rendered by a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import REPO, fsaudit, require_program

REPORT = REPO / "tests" / "golden" / "report.json"
MARKER = "PWNED-by-fsaudit-test"
PAYLOADS = {
    "path": f"/srv/www/<script>document.title='{MARKER}'</script>.html",
    "message": f"<img src=x onerror=\"document.title='{MARKER}'\">",
    "subject": f"<svg onload=\"document.body.innerHTML='{MARKER}'\">",
    "advice": f"</li></ol><script>document.write('{MARKER}')</script>",
}


def _hostile_report(tmp_path: Path) -> Path:
    data = json.loads(REPORT.read_text())
    data["host"]["hostname"] = "<b onmouseover=alert(1)>vm42</b>"
    data["checks"][0]["findings"].append(
        {
            "check": "debian",
            "code": "content-differs",
            "severity": "critical",
            "details": {"package": "<script>x</script>", "version": "1", "architecture": "all"},
            **PAYLOADS,
        }
    )
    data["checks"][4]["reason"] = f"<iframe src='javascript:alert(\"{MARKER}\")'></iframe>"
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(data))
    return path


class _Elements(HTMLParser):
    """Every start tag with its attributes, as the browser's parser would see them."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _elements(html: str):
    parser = _Elements()
    parser.feed(html)
    return parser.tags


def _chromium(*args, profile: Path) -> subprocess.CompletedProcess:
    binary = require_program("chromium", "chromium")
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture
def hostile_page(tmp_path) -> Path:
    page = tmp_path / "report.html"
    run = fsaudit("report", _hostile_report(tmp_path), "--format", "html", "--output", page)
    assert run.code == 2, run.stderr
    return page


def test_untrusted_text_is_escaped_not_markup(hostile_page):
    html = hostile_page.read_text()
    elements = _elements(html)
    assert not [tag for tag, _ in elements if tag in ("script", "iframe", "img", "svg", "b")]
    assert not [(tag, name) for tag, attrs in elements for name in attrs if name.startswith("on")]
    assert "&lt;script&gt;document.title=&#39;" in html
    # Self-contained: nothing is loaded from anywhere.
    assert not [attrs for _, attrs in elements if "src" in attrs or attrs.get("rel") == "stylesheet"]
    assert "default-src 'none'" in html


def test_chromium_runs_no_script_and_shows_the_names_as_text(hostile_page, tmp_path):
    done = _chromium("--dump-dom", hostile_page.as_uri(), profile=tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0]
    assert MARKER not in title
    assert title == "fsaudit: Damage found on &lt;b onmouseover=alert(1)&gt;vm42&lt;/b&gt;"
    assert "<h1>Damage found</h1>" in dom
    # The payloads are on the page as text, and no element made from them exists.
    assert "&lt;script&gt;document.title=" in dom
    assert not [tag for tag, _ in _elements(dom) if tag in ("script", "iframe", "img", "svg")]


@pytest.mark.parametrize("size", ["390,1400", "1280,1000"])
def test_chromium_renders_a_real_screenshot(hostile_page, tmp_path, size):
    shot = tmp_path / "shot.png"
    done = _chromium(
        f"--screenshot={shot}", f"--window-size={size}", hostile_page.as_uri(), profile=tmp_path / "p"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == tuple(int(n) for n in size.split(","))
    # A blank page compresses to a few kilobytes; text and colour do not.
    assert len(data) > 30_000


def test_the_page_states_the_verdict_todo_and_what_was_not_checked(tmp_path):
    page = tmp_path / "report.html"
    assert fsaudit("report", REPORT, "--format", "html", "--output", page).code == 2
    html = page.read_text()
    assert "3 system files were damaged; reinstalling 2 packages (sed, zlib1g) restores them." in html
    assert "PostgreSQL databases: 1 damaged item found." in html
    # plain words for the customer; the checks' own reasons folded away for the administrator
    assert "<strong>The LDAP directory</strong>: not checked to the end: damage there may be missing" in html
    assert "none on this system: system files (RPM packages); ZODB databases" in html
    customer, administrator = html.split("Details for your administrator</summary>", 1)
    assert "ldapi" not in customer.split("What was not checked", 1)[1]
    assert "<code>ldap</code>: cannot bind to ldapi:///: no such socket" in administrator
    assert "<code>rpm</code>: no RPM database on this system" in administrator
    assert "run REINDEX INDEX public.orders_pkey in the database shop" in html
    assert "2026-06-02 00:00 (UTC+02:00)" in html
    # The package step replaces the per-file advice of package damage.
    assert "reinstall the package sed</li>" not in html


def test_an_unknown_check_and_an_empty_report_still_read_well(tmp_path):
    data = json.loads(REPORT.read_text())
    finding = {
        "check": "acme-crm",
        "code": "row-lost",
        "severity": "critical",
        "message": "a customer row is gone",
        "subject": "customer 42",
        "advice": "restore the CRM database from last night's dump",
    }
    data["checks"] = [
        {"name": "acme-crm", "status": "critical", "findings": [finding]},
        {"name": "other", "status": "skipped", "reason": "does not apply", "findings": []},
    ]
    data["status"] = "critical"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    html = fsaudit("report", path, "--format", "html").stdout
    assert "The acme-crm check: 1 damaged item found." in html
    assert "restore the CRM database from last night&#39;s dump" in html
    data["checks"] = [{"name": "other", "status": "skipped", "reason": "does not apply", "findings": []}]
    data["status"] = "ok"
    path.write_text(json.dumps(data))
    html = fsaudit("report", path, "--format", "html").stdout
    assert "<h1>Nothing was checked</h1>" in html


def test_without_jinja2_the_hint_names_the_extra(tmp_path):
    blocker = tmp_path / "jinja2"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('jinja2 is not installed')\n")
    run = fsaudit("report", REPORT, "--format", "html", env={"PYTHONPATH": str(tmp_path)})
    assert run.code == 3
    assert "pip install 'fsaudit[html]'" in run.stderr


def test_chromium_is_on_the_test_machine_list():
    assert "chromium" in (REPO / "tests" / "system-packages.txt").read_text().split()
    assert shutil.which("chromium") or pytest.fail("chromium is missing: apt-get install chromium")


def test_without_jinja2_an_html_audit_stops_before_it_starts(tmp_path):
    blocker = tmp_path / "jinja2"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('jinja2 is not installed')\n")
    # Checked even before the checkers are selected: an unknown one is not what stops this audit.
    run = fsaudit("audit", "--check", "no-such-check", "--format", "html", env={"PYTHONPATH": str(tmp_path)})
    assert run.code == 3
    assert run.stdout == ""
    assert "pip install 'fsaudit[html]'" in run.stderr
    assert "unknown checker" not in run.stderr


def test_what_a_check_could_not_read_is_listed_as_not_checked(tmp_path):
    data = json.loads(REPORT.read_text())
    data["checks"][0]["stats"]["files_unreadable"] = 3
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    html = fsaudit("report", path, "--format", "html").stdout
    assert (
        "<strong>System files (Debian packages)</strong>: 3 files unreadable: these could not be read" in html
    )
    assert "1,204 files not verified: these could not be read or verified" in html


def test_without_jinja2_self_check_falls_back_to_text(tmp_path):
    blocker = tmp_path / "blocked"
    (blocker / "jinja2").mkdir(parents=True)
    (blocker / "jinja2" / "__init__.py").write_text("raise ImportError('jinja2 is not installed')\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("hello\n")
    run = fsaudit("self-check", mine, env={"PYTHONPATH": f"{blocker}{os.pathsep}{REPO}"}, cwd=tmp_path)
    assert run.code == 0, run.stderr  # an intact text file: nothing to report
    assert (tmp_path / "fsaudit-self-check.txt").exists(), run.stdout + run.stderr
    assert not (tmp_path / "fsaudit-self-check.html").exists()


def _many_package_findings(tmp_path, files: int = 1293) -> Path:
    """A VM where npm rewrote nodejs's files: many critical findings with one advice, and an edited
    configuration file of the same check."""
    data = json.loads(REPORT.read_text())
    debian = data["checks"][0]
    template, _, _, conffile = debian["findings"]
    debian["findings"] = [
        {**template, "path": f"/usr/share/nodejs/npm/f{n}.js", "subject": "nodejs 18.19.0",
         "details": {"package": "nodejs", "version": "18.19.0", "architecture": "amd64"},
         "advice": "reinstall the package nodejs"}
        for n in range(files)
    ] + [conffile]  # fmt: skip
    path = tmp_path / "npm.json"
    path.write_text(json.dumps(data))
    return path


def test_the_verdict_does_not_contradict_the_damage_and_advice_is_said_once(tmp_path):
    html = fsaudit("report", _many_package_findings(tmp_path), "--format", "html").stdout
    assert "1,293 system files were damaged; reinstalling 1 package (nodejs) restores them." in html
    assert "System files (Debian packages): besides the damage, 1 more thing to look at." in html
    assert "System files (Debian packages): 1 thing to look at" not in html
    assert html.count("reinstall the package nodejs") == 1  # once for the group, not on 1,293 rows
    assert "What to do: reinstall the package nodejs</p>" in html


def test_the_page_says_whose_audit_it_was_and_that_it_was_stopped(tmp_path):
    data = json.loads(REPORT.read_text())
    data.update(uid=1000, interrupted=True)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    html = fsaudit("report", path, "--format", "html").stdout
    assert "user 1000, not the administrator" in html and "stopped before the end" in html
