"""The zipapp and its loader, run locally with the system python3 (which lacks click and the rest):
fsaudit imports from memory, importlib.metadata finds the checkers in the zip, nothing is written."""

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from importlib import metadata

import pytest

from fixtures.addon import PACKAGE as ADDON_PACKAGE
from fixtures.addon import VERSION as ADDON_VERSION
from fixtures.addon import make_addon
from fixtures.fleet import sleeping
from fsaudit.fleet.bootstrap import MAGIC, build_zipapp, digest, loader_config, loader_inline
from tests.conftest import REPO

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def zipapp():
    return build_zipapp()


def _loader(config: str, cwd) -> subprocess.Popen:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail("the system python3 is missing: apt-get install python3")
    return subprocess.Popen(
        [SYSTEM_PYTHON, "-I", "-c", loader_inline(), config],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, cwd=cwd, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_zipapp_is_deterministic_and_registers_the_builtin_checkers(zipapp):
    assert build_zipapp() == zipapp
    archive = zipfile.ZipFile(io.BytesIO(zipapp))
    names = set(archive.namelist())
    assert {
        "fsaudit/cli/__init__.py",
        "fsaudit_checks/debian/__init__.py",
        "fsaudit/schema/report.schema.json",
        "click/__init__.py",
        "debian/deb822.py",
    } <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    builtin = [
        p for p in metadata.entry_points(group="fsaudit.checks") if p.value.startswith("fsaudit_checks.")
    ]
    for point in builtin:
        assert f"{point.name} = {point.value}" in entry_points


@pytest.mark.parametrize("importer", ["memfd", "memory"])
def test_loader_runs_fsaudit_from_memory_with_a_bare_python(zipapp, tmp_path, importer):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    process = _loader(loader_config(None, ["--root", str(root)], True, digest(zipapp), importer), tmp_path)
    hello = process.stdout.readline().decode()
    assert hello.startswith(f"{MAGIC} need-zip python=3.")
    process.stdin.write(b"%d\n" % len(zipapp) + zipapp)
    process.stdin.flush()
    output = process.stdout.read()
    process.stdin.close()
    # the root holds nothing any checker checks: every check is skipped, the audit is ok
    assert process.wait(timeout=60) == 0, process.stderr.read()
    report = json.loads(output)
    assert report["root"] == str(root)
    # importlib.metadata found the checkers through the zip's dist-info, in memory:
    expected = {
        p.name for p in metadata.entry_points(group="fsaudit.checks") if p.value.startswith("fsaudit_checks.")
    }
    assert {c["name"] for c in report["checks"]} == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing written (no .pyc, no zip)


def test_a_damaged_zipapp_is_refused(zipapp, tmp_path):
    process = _loader(loader_config(None, [], True, digest(zipapp)), tmp_path)
    process.stdout.readline()
    damaged = bytearray(zipapp)
    damaged[100] ^= 0xFF
    out, err = process.communicate(b"%d\n" % len(damaged) + bytes(damaged), timeout=60)
    assert process.returncode == 125 and out == b""
    assert b"fsaudit-fleet: bootstrap: the zipapp arrived damaged" in err


def test_without_bootstrap_a_missing_fsaudit_is_said(tmp_path):
    process = _loader(loader_config(["/nonexistent/fsaudit"], [], False, ""), tmp_path)
    out, err = process.communicate(b"", timeout=60)
    assert process.returncode == 127 and b"fsaudit-fleet: not-installed:" in err


def test_end_of_stdin_kills_the_remote_audit(tmp_path):
    marker = "sleep 619"
    process = _loader(loader_config(["sh", "-c", marker, "hang"], [], True, ""), tmp_path)
    assert process.stdout.readline().decode().startswith(f"{MAGIC} installed")
    deadline = time.monotonic() + 10
    while not sleeping(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeping(marker)
    process.stdin.close()  # what the remote sees when the control host goes away
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while sleeping(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sleeping(marker)


def test_a_vm_python_older_than_a_bundled_dependency_needs_is_said(tmp_path, monkeypatch):
    import fsaudit.fleet.bootstrap as bootstrap

    assert bootstrap.bundle_plan().requires_python == [3, 9]  # whatever click the control host has
    monkeypatch.setattr(
        bootstrap,
        "bundle_plan",
        lambda: bootstrap.BundlePlan([99, 0], "click 99 (bundled from the control host)"),
    )
    zipapp = bootstrap.build_zipapp()
    process = _loader(loader_config(None, [], True, digest(zipapp)), tmp_path)
    process.stdout.readline()
    process.stdin.write(b"%d\n" % len(zipapp) + zipapp)
    process.stdin.flush()
    out = process.stdout.read()
    process.stdin.close()
    assert process.wait(timeout=60) == 125 and out == b""
    assert b"fsaudit-fleet: python-too-old: python 3." in process.stderr.read()


VENDORED_CLICK = "63c132bbbed01578a06712a2d1f497bb62d9c1c0d329b7903a866228027263b2"  # click 8.1.8, from PyPI


def test_the_vendored_click_is_the_release_from_pypi():
    import fsaudit.fleet.bootstrap as bootstrap

    wheel = os.path.join(bootstrap.VENDOR, "click-8.1.8-py3-none-any.whl")
    with open(wheel, "rb") as handle:
        assert digest(handle.read()) == VENDORED_CLICK


@pytest.mark.parametrize("importer", ["memfd", "memory"])
def test_a_python_older_than_the_control_hosts_click_runs_the_vendored_click(tmp_path, monkeypatch, importer):
    """The control host may run a click that needs a newer Python than a VM has (click 8.2 needs
    3.10): the zipapp then carries click 8.1 for such VMs, and the loader imports it first there."""
    import fsaudit.fleet.bootstrap as bootstrap

    real = bootstrap.metadata.metadata

    def newer_click(distribution):
        data = real(distribution)
        if distribution != "click":
            return data
        return {"Requires-Python": ">=3.99", "Name": "click"}

    monkeypatch.setattr(bootstrap.metadata, "metadata", newer_click)
    plan = bootstrap.bundle_plan()
    assert plan.requires_python == [3, 9] and plan.compat_below == [3, 99] and set(plan.compat) == {"click"}
    zipapp = bootstrap.build_zipapp()
    archive = zipfile.ZipFile(io.BytesIO(zipapp))
    assert '__version__ = "8.1.8"' in archive.read("compat/click/__init__.py").decode()
    manifest = json.loads(archive.read(bootstrap.MANIFEST))
    assert manifest["compat"] == {"root": "compat", "below": [3, 99]}
    # the compat click is put first on the path: break the other one to prove which one is used
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename == "click/__init__.py":
                data = b"raise ImportError('the control host click was imported')\n"
            out.writestr(info, data)
    zipapp = broken.getvalue()
    root = tmp_path / "root"
    root.mkdir()
    process = _loader(loader_config(None, ["--root", str(root)], True, digest(zipapp), importer), tmp_path)
    process.stdout.readline()
    process.stdin.write(b"%d\n" % len(zipapp) + zipapp)
    process.stdin.flush()
    output = process.stdout.read()  # stdin stays open: its end would mean the control host gave up
    process.stdin.close()
    process.wait(timeout=60)
    assert output.startswith(b"{"), process.stderr.read().decode(errors="replace")[-3000:]
    assert json.loads(output)["root"] == str(root)


def test_the_zipapp_carries_add_ons_and_they_run_on_the_vm(tmp_path):
    """An add-on installed on the control host (its checker, renderer and command) travels in the
    zipapp with its package and its own dist-info, and its checker runs on the VM like a built-in."""
    site = make_addon(tmp_path / "site")
    build = subprocess.run(
        [sys.executable, "-c", "import sys; from fsaudit.fleet.bootstrap import build_zipapp; "
         "sys.stdout.buffer.write(build_zipapp())"],
        capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": f"{site}:{REPO}"},
    )  # fmt: skip
    assert build.returncode == 0, build.stderr.decode()[-2000:]
    zipapp = build.stdout
    archive = zipfile.ZipFile(io.BytesIO(zipapp))
    assert f"{ADDON_PACKAGE}/__init__.py" in archive.namelist()
    points = archive.read(f"{ADDON_PACKAGE}-{ADDON_VERSION}.dist-info/entry_points.txt").decode()
    assert "[fsaudit.checks]\nexample = " in points and "[fsaudit.renderers]\nsummary = " in points
    own = next(n for n in archive.namelist() if n.startswith("fsaudit-") and n.endswith("entry_points.txt"))
    assert "[fsaudit.renderers]\nhtml = fsaudit.report.html:render_html" in archive.read(own).decode()
    root = tmp_path / "root"
    root.mkdir()
    (root / "example-damage").write_text("x")
    process = _loader(loader_config(None, ["--root", str(root)], True, digest(zipapp)), tmp_path)
    process.stdout.readline()
    process.stdin.write(b"%d\n" % len(zipapp) + zipapp)
    process.stdin.flush()
    output = process.stdout.read()
    process.stdin.close()
    assert process.wait(timeout=60) == 2, process.stderr.read()
    checks = {c["name"]: c for c in json.loads(output)["checks"]}
    assert [f["code"] for f in checks["example"]["findings"]] == ["example-damage"]
