"""`fsaudit repair` for pacman, apk, portage and nix against hostile reports and hostile images.

A report may come from a VM whose tenant is root there, and an image's files (its package database,
its package cache, its directories) are the tenant's. Each test builds its attack from code and
asserts that it had no effect (no marker file, the host's victim unchanged, memory bounded) and that
repair said why it did not do what was asked.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from fixtures import apk as alpine
from fixtures import pacman as pacfix
from fixtures import portage as gentoo
from fixtures.corrupt import flip_byte
from fixtures.measured import MIB, run_measured
from tests.conftest import fsaudit, require_program

FSAUDIT = f"{sys.executable} -m fsaudit"
DEMO = {
    "/usr/bin/demo": ("#!/bin/sh\necho demo\n" * 40, 0o755),
    "/usr/share/demo/data.bin": bytes(range(256)) * 64,
    "/usr/share/demo/notes.txt": "notes\n" * 100,
}
PAYLOADS = [
    "--config=/tmp/PWNED-pkgmgr",
    "--root=/tmp/PWNED-pkgmgr",
    "-o APT::Update::Pre-Invoke::=touch /tmp/PWNED-pkgmgr",
    "=sys-apps/sed-4.9 --ask; touch /tmp/PWNED-pkgmgr",
    "$(touch /tmp/PWNED-pkgmgr)",
    "--allow-untrusted",
]
MARKER = Path("/tmp/PWNED-pkgmgr")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    require_program("pacman", "pacman-package-manager")
    require_program("bsdtar", "libarchive-tools")
    work = tmp_path_factory.mktemp("hostile-pacman")
    marker = work / "ran-from-image"
    return {
        "demo": pacfix.build_package(work, "demo", "1.0-1", DEMO),
        "marker": marker,
        # What a tenant leaves in the cache: the same name and version, other bytes, and a scriptlet.
        "impostor": pacfix.build_package(
            tmp_path_factory.mktemp("impostor"),
            "demo",
            "1.0-1",
            {**DEMO, "/usr/bin/demo": ("#!/bin/sh\necho evil\n", 0o755)},
            install_script=f"post_install() {{ touch {marker}; }}\npost_upgrade() {{ touch {marker}; }}\n",
        ),
    }


@pytest.fixture
def arch(packages, tmp_path) -> Path:
    root = pacfix.make_root(tmp_path / "root")
    pacfix.install(root, [packages["demo"]])
    pacfix.cache(root, packages["demo"])
    return root


def _report(root: Path, tmp_path: Path, check: str) -> Path:
    output = tmp_path / "report.json"
    fsaudit("audit", "--root", root, "--check", check, "--format", "json", "--output", output)
    return output


def _poisoned(report: Path) -> None:
    """Every name a finding gives becomes a payload; more findings name payloads as paths."""
    data = json.loads(report.read_text())
    check = data["checks"][0]
    findings = check["findings"]
    for number, finding in enumerate(findings):
        payload = PAYLOADS[number % len(PAYLOADS)]
        finding["details"].update(package=payload, version=payload, architecture=payload, store_path=payload)
        finding["subject"] = payload
    for payload in PAYLOADS:
        findings.append(
            {
                "check": check["name"],
                "code": "content-differs",
                "severity": "critical",
                "path": payload,
                "message": "differs",
                "details": {"package": payload, "version": payload},
            }
        )
    report.write_text(json.dumps(data))


def test_names_in_a_report_never_reach_a_command_or_choose_a_package(arch, tmp_path):
    flip_byte(arch / "usr/bin/demo", 10)
    report = _report(arch, tmp_path, "pacman")
    _poisoned(report)
    for args in ((), ("--apply", "--yes")):
        run = fsaudit("repair", report, "--root", arch, *args)
        assert run.code == 0, run.stdout + run.stderr
        assert not MARKER.exists()
        # The damaged file is restored for what the image's database says it is.
        assert "- demo 1.0-1 (x86_64)" in run.stdout
        assert "the report gives no usable path for it" in run.stdout
    assert (arch / "usr/bin/demo").read_text() == DEMO["/usr/bin/demo"][0]


def test_names_in_a_report_never_reach_pacman_on_the_running_system(packages, tmp_path):
    require_program("unshare", "util-linux")
    system = pacfix.running_system(tmp_path / "system", [packages["demo"]], repository=[packages["demo"]])
    flip_byte(system.path("/usr/bin/demo"), 10)
    audited = system.run(f"{FSAUDIT} audit --check pacman --format json --output /tmp/report.json")
    assert audited.returncode == 2, audited.stdout + audited.stderr
    _poisoned(system.path("/tmp/report.json"))
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pacman -Sw --noconfirm --nodeps --nodeps -- demo\n" in run.stdout
    assert not system.path(str(MARKER)).exists() and not MARKER.exists()
    assert system.path("/usr/bin/demo").read_text() == DEMO["/usr/bin/demo"][0]


def test_a_package_database_name_the_manager_would_read_as_an_option_is_refused(tmp_path):
    root = alpine.make_root(tmp_path / "alpine")
    files = {"/usr/bin/tool": ("tool\n" * 100, 0o755)}
    alpine.install(root, "--allow-untrusted", "1.0-r0", files)
    alpine.cache_apk(root, "--allow-untrusted", "1.0-r0", files)
    flip_byte(root / "usr/bin/tool", 3)
    report = _report(root, tmp_path, "apk")
    run = fsaudit("repair", report, "--root", root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "nothing to restore" in run.stdout
    assert "names it in a way the package manager would refuse" in run.stdout


def test_symlinks_in_the_image_never_redirect_writes_to_the_host_and_nothing_runs(packages, arch, tmp_path):
    victim = tmp_path / "host-victim"
    victim.mkdir()
    (victim / "keep").write_text("the host's file\n")
    # A parent directory that is an absolute link to the host's victim, and a damaged file that is a
    # link to the host's file; the cached package's scriptlet would touch a marker if it ran.
    os.unlink(arch / "usr/share/demo/data.bin")
    os.unlink(arch / "usr/share/demo/notes.txt")
    os.rmdir(arch / "usr/share/demo")
    os.symlink(str(victim), arch / "usr/share/demo")
    os.unlink(arch / "usr/bin/demo")
    os.symlink(str(victim / "keep"), arch / "usr/bin/demo")
    report = _report(arch, tmp_path, "pacman")
    run = fsaudit("repair", report, "--root", arch, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert sorted(os.listdir(victim)) == ["keep"]
    assert (victim / "keep").read_text() == "the host's file\n"
    inside = arch / str(victim).lstrip("/")
    assert (inside / "data.bin").read_bytes() == DEMO["/usr/share/demo/data.bin"]
    assert not (arch / "usr/bin/demo").is_symlink()
    assert (arch / "usr/bin/demo").read_text() == DEMO["/usr/bin/demo"][0]
    assert not packages["marker"].exists()


def test_an_impostor_package_file_is_never_written_from(packages, arch, tmp_path):
    cached = arch / "var/cache/pacman/pkg" / packages["demo"].name
    cached.write_bytes(packages["impostor"].read_bytes())
    flip_byte(arch / "usr/bin/demo", 10)
    damaged = (arch / "usr/bin/demo").read_bytes()
    report = _report(arch, tmp_path, "pacman")
    run = fsaudit("repair", report, "--root", arch, "--apply", "--yes")
    assert run.code == 3, run.stdout + run.stderr
    assert "FAILED: demo 1.0-1 (x86_64)" in run.stdout
    assert "not written" in run.stdout
    assert (arch / "usr/bin/demo").read_bytes() == damaged
    assert sorted(os.listdir(arch / "usr/bin")) == ["demo"]
    assert not packages["marker"].exists()


def test_an_impostor_apk_and_binary_package_are_never_written_from(tmp_path):
    root = alpine.make_root(tmp_path / "alpine")
    files = {"/usr/bin/tool": ("tool\n" * 100, 0o755), "/usr/bin/tool-link": ("link", "tool")}
    alpine.install(root, "tool", "1.0-r0", files)
    alpine.cache_apk(
        root,
        "tool",
        "1.0-r0",
        {"/usr/bin/tool": ("evil\n" * 120, 0o755), "/usr/bin/tool-link": ("link", "/etc/shadow")},
    )
    flip_byte(root / "usr/bin/tool", 3)
    os.unlink(root / "usr/bin/tool-link")
    damaged = (root / "usr/bin/tool").read_bytes()
    run = fsaudit("repair", _report(root, tmp_path, "apk"), "--root", root, "--apply", "--yes")
    assert run.code == 3, run.stdout + run.stderr
    assert "not written" in run.stdout
    assert (root / "usr/bin/tool").read_bytes() == damaged
    assert not os.path.lexists(root / "usr/bin/tool-link")
    gentoo_root = gentoo.make_root(tmp_path / "gentoo")
    gentoo.install(gentoo_root, "app-misc", "tool-1.0", {"/usr/bin/tool": ("tool\n" * 100, 0o755)})
    gentoo.make_binpkg(
        gentoo_root, "app-misc", "tool-1.0", {"/usr/bin/tool": ("tool\n" * 100, 0o755)}, fmt="xpak"
    )
    # The file names tool-1.0 but the package inside is another one.
    other = gentoo.make_binpkg(
        gentoo_root, "app-misc", "evil-1.0", {"/usr/bin/tool": ("evil\n", 0o755)}, fmt="gpkg"
    )
    os.replace(other, other.with_name("tool-1.0.gpkg.tar"))
    os.unlink(gentoo_root / "var/cache/binpkgs/app-misc/tool-1.0.tbz2")
    flip_byte(gentoo_root / "usr/bin/tool", 3)
    run = fsaudit(
        "repair", _report(gentoo_root, tmp_path, "portage"), "--root", gentoo_root, "--apply", "--yes"
    )
    assert run.code == 3, run.stdout + run.stderr
    assert "holds app-misc/evil-1.0, not app-misc/tool-1.0" in run.stdout


def _bounded_run(command):
    """(exit status, stdout, peak RSS in MiB) of `command`."""
    done, cost = run_measured(command)
    return done.returncode, done.stdout, cost.max_rss / MIB


@pytest.mark.parametrize(
    "kind, claimed, expected",
    [
        (b"x", 2**62, "an extended header claims"),
        (b"0", 2**40, "a decompression bomb"),
    ],
)
def test_a_bomb_in_the_package_cache_costs_neither_memory_nor_the_verdict(
    arch, tmp_path, kind, claimed, expected
):
    cached = arch / "var/cache/pacman/pkg/demo-1.0-1-x86_64.pkg.tar.zst"
    cached.unlink()
    # About 300 KB on disk; 256 MiB of zeros behind the header when decompressed.
    pacfix.bomb_package(
        cached.with_name("demo-1.0-1-x86_64.pkg.tar.gz"), "demo", "1.0-1", claimed, 256 << 20, kind
    )
    flip_byte(arch / "usr/bin/demo", 10)
    damaged = (arch / "usr/bin/demo").read_bytes()
    report = _report(arch, tmp_path, "pacman")
    command = [
        sys.executable,
        "-m",
        "fsaudit",
        "repair",
        str(report),
        "--root",
        str(arch),
        "--apply",
        "--yes",
    ]
    code, out, peak = _bounded_run(command)
    assert code == 3, out
    assert "FAILED: demo 1.0-1 (x86_64): cannot read the package file" in out
    assert expected in out
    assert peak < 200, peak
    assert (arch / "usr/bin/demo").read_bytes() == damaged


def test_store_paths_in_a_report_are_only_ever_valid_paths_of_the_images_store(tmp_path):
    from fixtures import nix as nixfix

    require_program("nix-store", "nix-bin")
    source = tmp_path / "tree"
    source.mkdir()
    (source / "a").write_text("a\n" * 100)
    root = tmp_path / "nixroot"
    root.mkdir()
    (path,) = nixfix.add(root, [source])
    flip_byte(nixfix.writable(root, path) / "a", 3)
    report = _report(root, tmp_path, "nix")
    _poisoned(report)
    data = json.loads(report.read_text())
    # Paths that climb out of the store, and a well-formed store path the image's database lacks.
    for bad in (
        "/nix/store/../../etc/shadow",
        f"{path}/../../../etc/shadow",
        "/nix/store/" + "a" * 32 + "-x",
    ):
        data["checks"][0]["findings"].append({**data["checks"][0]["findings"][0], "path": bad})
    report.write_text(json.dumps(data))
    run = fsaudit("repair", report, "--root", root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert not MARKER.exists()
    assert "nothing to restore" in run.stdout
    assert run.stdout.count("the report gives no usable store path for it") >= len(PAYLOADS) + 2
    assert "does not list /nix/store/" + "a" * 32 + "-x as a valid path" in run.stdout
