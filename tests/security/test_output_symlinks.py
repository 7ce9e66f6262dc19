"""Files fsaudit writes as root into a directory another user can write (`--output` into /tmp, a shared
incident directory) cannot be redirected: symlinks and FIFOs planted at the names fsaudit writes, or
at the temporary names it used to use (`NAME.tmp-PID`), are replaced, never followed or written into."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.fleet import free_port, host_vars, ini_inventory
from tests.conftest import REPO, fsaudit

NOBODY = 65534
REPORT = REPO / "tests" / "golden" / "report.json"
PRECIOUS = b"root:$6$precious-hash:19000:0:99999:7:::\n"


@pytest.fixture
def shared(tmp_path):
    """A sticky, world-writable directory (like /tmp) and a root-owned victim file elsewhere."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.write_bytes(PRECIOUS)
    victim.chmod(0o600)
    return directory, victim


def plant_symlink(link: Path, target: Path) -> None:
    """A symlink at `link` as another user (nobody) would leave it."""
    os.symlink(target, link)
    os.lchown(link, NOBODY, NOBODY)


def test_the_old_predictable_temporary_name_leads_nowhere(shared):
    directory, victim = shared
    output = directory / "report.txt"
    # `read` holds the process until the attack is in place; `exec` keeps its pid for fsaudit
    command = f'read go; exec {sys.executable} -m fsaudit report "$0" --output "$1"'
    process = subprocess.Popen(
        ["sh", "-c", command, str(REPORT), str(output)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    plant_symlink(directory / f"report.txt.tmp-{process.pid}", victim)
    _, stderr = process.communicate("go\n", timeout=120)
    assert process.returncode == 2, stderr
    assert victim.read_bytes() == PRECIOUS
    assert output.read_text().startswith("CRITICAL: damage found on shop-vm42")
    assert not stat.S_ISLNK(output.lstat().st_mode)


def test_a_symlink_planted_at_the_output_name_is_replaced_not_followed(shared):
    directory, victim = shared
    output = directory / "fsaudit.prom"
    plant_symlink(output, victim)
    run = fsaudit("report", REPORT, "--format", "prometheus", "--output", output)
    assert run.code == 2, run.stderr
    assert victim.read_bytes() == PRECIOUS
    assert stat.S_ISREG(output.lstat().st_mode) and output.lstat().st_uid == 0
    assert "fsaudit_status 2" in output.read_text()
    assert oct(output.stat().st_mode & 0o777) == oct(0o644)  # readable by node_exporter, as before
    leftovers = [p.name for p in directory.iterdir() if p.name != "fsaudit.prom"]
    assert leftovers == []


def test_a_fifo_planted_at_the_output_name_neither_hangs_nor_receives_the_report(shared):
    directory, _ = shared
    output = directory / "report.json"
    os.mkfifo(output)
    os.chown(output, NOBODY, NOBODY)
    run = fsaudit("report", REPORT, "--format", "json", "--output", output, timeout=120)
    assert run.code == 2, run.stderr
    assert stat.S_ISREG(output.lstat().st_mode)
    assert json.loads(output.read_text())["host"]["hostname"] == "shop-vm42"


def test_devices_and_descriptors_are_still_written_directly():
    assert fsaudit("report", REPORT, "--output", "/dev/null").code == 2
    run = fsaudit("report", REPORT, "--format", "nagios", "--output", "/dev/stdout")
    assert run.code == 2 and run.stdout.startswith("FSAUDIT CRITICAL")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_baseline_written_into_a_shared_directory_cannot_be_redirected(shared, tmp_path):
    directory, victim = shared
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file").write_text("hello\n")
    output = directory / "data.baseline"
    plant_symlink(output, victim)
    run = fsaudit("baseline", "create", tmp_path / "data", "--output", output)
    assert run.code == 0, run.stderr
    assert victim.read_bytes() == PRECIOUS
    assert stat.S_ISREG(output.lstat().st_mode)


def test_fleet_results_in_a_shared_directory_cannot_be_redirected(shared, tmp_path):
    directory, victim = shared
    inventory = ini_inventory(tmp_path / "inventory.ini", {"down": host_vars(free_port())})
    out = directory / "run"
    out.mkdir()
    out.chmod(0o1777)
    plant_symlink(out / ".lock", victim)
    refused = fsaudit("fleet", inventory, "--out", out, "--connect-timeout", "2", timeout=120)
    assert refused.code == 3 and ".lock" in refused.stderr
    assert victim.read_bytes() == PRECIOUS

    (out / ".lock").unlink()
    for sub in ("hosts", "reports"):
        (out / sub).mkdir(exist_ok=True)
        (out / sub).chmod(0o1777)
    plant_symlink(out / "index.json", victim)
    plant_symlink(out / "hosts" / "down.json", victim)
    run = fsaudit("fleet", inventory, "--out", out, "--resume", "--connect-timeout", "2", timeout=120)
    assert run.code == 3, run.stderr
    assert victim.read_bytes() == PRECIOUS
    assert json.loads((out / "hosts" / "down.json").read_text())["outcome"] == "unreachable"
    assert json.loads((out / "index.json").read_text())["hosts"][0]["name"] == "down"
