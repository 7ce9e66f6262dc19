"""`fsaudit repair` for pacman, apk, portage and nix: plan, restore, check again, through the CLI.

Images: real Arch roots installed with Debian's `pacman -U --root` (packages made like makepkg's),
Alpine and Gentoo roots whose databases are written in apk-tools' and Portage's formats beside real
files, with `.apk` files and binary packages (GPKG and XPAK) in their caches. Running systems: this
machine's `/` seen through an overlay in private namespaces (fixtures.debroot.RunningSystem) with its
own pacman configuration, database and repository, or its own Nix store and binary cache; there the
real `pacman` and `nix-store` run. apk and emerge have no Debian package: their running-system path
is tested through its command lines and its reading of their simulated output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import apk as alpine
from fixtures import nix as nixfix
from fixtures import pacman as pacfix
from fixtures import portage as gentoo
from fixtures.corrupt import flip_byte, kept_times, replace_with_fifo, truncate
from fsaudit.repair import Request, Step
from fsaudit_checks.apk.repair import ApkRepairer, simulation
from fsaudit_checks.manifest.entries import Package
from fsaudit_checks.manifest.repair import ManifestStep
from fsaudit_checks.portage.repair import PortageRepairer, pretend
from tests.conftest import assert_valid_report, fsaudit, require_program

FSAUDIT = f"{sys.executable} -m fsaudit"
DEMO = {
    "/usr/bin/demo": ("#!/bin/sh\necho demo\n" * 40, 0o755),
    "/usr/bin/demo-link": ("link", "demo"),
    "/etc/demo.conf": "key = 1\n",
    "/usr/share/demo/data.bin": bytes(range(256)) * 64,
    "/usr/share/demo/notes.txt": "notes\n" * 100,
    "/usr/share/demo/secret.key": ("private\n", 0o600),
    "/usr/share/demo/untouched.txt": "never damaged\n",
}
OTHER = {
    "/usr/bin/other": ("other program\n" * 50, 0o755),
    "/usr/lib/other/lib.so": b"\x7fELF" + bytes(4000),
}


def snapshot(root: Path, skip: tuple) -> dict:
    """Every file's content, inode, mode and mtime under the root (the package database aside)."""
    state = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            relative = str(path.relative_to(root))
            if relative.startswith(skip):
                continue
            st = path.lstat()
            content = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else b""
            state[relative] = (content, st.st_ino, st.st_mode, st.st_mtime_ns)
    return state


def report(root: Path, tmp_path: Path, check: str, *options) -> Path:
    output = tmp_path / f"{check}-report.json"
    run = fsaudit("audit", "--root", root, "--check", check, "--format", "json", "--output", output, *options)
    assert run.code in (1, 2), run.stdout + run.stderr
    assert_valid_report(json.loads(output.read_text()))
    return output


def repair(report_file: Path, root: Path, *args):
    return fsaudit("repair", report_file, "--root", root, *args)


def codes(report_file: Path) -> dict:
    data = json.loads(report_file.read_text())
    return {f["path"]: f["code"] for check in data["checks"] for f in check["findings"]}


# -- pacman: images ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arch_packages(tmp_path_factory):
    require_program("pacman", "pacman-package-manager")
    require_program("bsdtar", "libarchive-tools")
    work = tmp_path_factory.mktemp("pacman-packages")
    return {
        "demo": pacfix.build_package(work, "demo", "1.0-1", DEMO, backup=["/etc/demo.conf"]),
        "other": pacfix.build_package(work, "other", "2:2.5-3", OTHER, arch="any"),
        # The same name and version with other bytes: what a repository or a tenant may offer.
        "demo-rebuilt": pacfix.build_package(
            tmp_path_factory.mktemp("rebuilt"),
            "demo",
            "1.0-1",
            {**DEMO, "/usr/bin/demo": ("rebuilt\n", 0o755)},
        ),
        "other-newer": pacfix.build_package(
            tmp_path_factory.mktemp("newer"), "other", "2:2.6-1", OTHER, arch="any"
        ),
    }


@pytest.fixture(scope="module")
def arch_pristine(arch_packages, tmp_path_factory):
    root = pacfix.make_root(tmp_path_factory.mktemp("arch") / "root")
    pacfix.install(root, [arch_packages["demo"], arch_packages["other"]])
    return root


@pytest.fixture
def arch(arch_pristine, arch_packages, tmp_path) -> Path:
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(arch_pristine), str(root)], check=True)
    pacfix.cache(root, arch_packages["demo"])
    return root


def damage_arch(root: Path) -> None:
    """Lost writes in demo (content, a link, a cut file, a FIFO) and an administrator's edit."""
    flip_byte(root / "usr/bin/demo", 5)
    (root / "usr/bin/demo-link").unlink()
    truncate(root / "usr/share/demo/data.bin", 100)
    with kept_times(root / "usr/share/demo/notes.txt"):
        replace_with_fifo(root / "usr/share/demo/notes.txt")
    (root / "etc/demo.conf").write_text("key = 2 # the admin's\n")


ARCH_SKIP = ("var/lib/pacman", "var/cache")


def test_pacman_image_plan_then_apply_restores_what_pacman_installed(arch, tmp_path):
    damage_arch(arch)
    report_file = report(arch, tmp_path, "pacman")
    before = snapshot(arch, ARCH_SKIP)
    planned = repair(report_file, arch)
    assert planned.code == 0, planned.stdout + planned.stderr
    out = planned.stdout
    cached = arch / "var/cache/pacman/pkg/demo-1.0-1-x86_64.pkg.tar.zst"
    assert "pacman: restore 1 package(s), answering 4 finding(s):" in out
    assert f"- demo 1.0-1 (x86_64) from {cached}: 4 file(s)" in out
    assert "nothing from the image is run" in out
    assert "Left alone (1)" in out and "/etc/demo.conf" in out and "--allow-conffiles" in out
    assert "Nothing was changed." in out
    assert snapshot(arch, ARCH_SKIP) == before
    run = repair(report_file, arch, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "Restored: demo 1.0-1 (x86_64)" in run.stdout
    assert "Checked again with the pacman check: everything restored is intact." in run.stdout
    # pacman itself agrees: only the edited backup file differs (which -Qkk does not count).
    assert pacfix.check(arch) == set()
    after = snapshot(arch, ARCH_SKIP)
    for untouched in ("etc/demo.conf", "usr/share/demo/untouched.txt", "usr/share/demo/secret.key"):
        assert after[untouched] == before[untouched]
    # The owner, mode and mtime of the package's mtree; no temporary file left beside.
    st = (arch / "usr/bin/demo").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, int(st.st_mtime)) == (0o755, 0, 0, pacfix.BUILD_TIME)
    assert os.readlink(arch / "usr/bin/demo-link") == "demo"
    assert sorted(os.listdir(arch / "usr/bin")) == ["demo", "demo-link", "other"]
    assert fsaudit("audit", "--root", arch, "--check", "pacman").code == 1  # the conffile warning only


def test_pacman_image_conffiles_are_replaced_only_when_allowed(arch, tmp_path):
    damage_arch(arch)
    report_file = report(arch, tmp_path, "pacman")
    run = repair(report_file, arch, "--apply", "--yes", "--allow-conffiles")
    assert run.code == 0, run.stdout + run.stderr
    assert (arch / "etc/demo.conf").read_text() == "key = 1\n"
    assert (arch / "etc/demo.conf.pacsave").read_text() == "key = 2 # the admin's\n"
    assert fsaudit("audit", "--root", arch, "--check", "pacman").code == 0


def test_pacman_image_a_local_change_is_restored_only_when_asked(arch, tmp_path):
    changed = arch / "usr/share/demo/notes.txt"
    changed.write_text("notes, as the admin rewrote them\n")
    desc = (arch / "var/lib/pacman/local/demo-1.0-1/desc").read_text()
    installed = int(desc.split("%INSTALLDATE%\n")[1].split()[0])
    os.utime(changed, (installed + 3600, installed + 3600))
    flip_byte(arch / "usr/share/demo/data.bin", 1)
    report_file = report(arch, tmp_path, "pacman")
    assert codes(report_file) == {
        "/usr/share/demo/notes.txt": "modified-after-install",
        "/usr/share/demo/data.bin": "content-differs",
    }
    run = repair(report_file, arch, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "--include-modified restores the packaged version" in run.stdout
    assert "as the admin rewrote them" in changed.read_text()
    assert (arch / "usr/share/demo/data.bin").read_bytes() == DEMO["/usr/share/demo/data.bin"]
    run = repair(report_file, arch, "--apply", "--yes", "--include-modified")
    assert run.code == 0, run.stdout + run.stderr
    assert changed.read_text() == DEMO["/usr/share/demo/notes.txt"]


def test_pacman_image_without_a_cached_package_says_what_to_fetch_and_takes_archives(
    arch, arch_packages, tmp_path
):
    os.unlink(arch / "usr/lib/other/lib.so")
    report_file = report(arch, tmp_path, "pacman")
    # The report's version is not the installed one: the database decides which file is needed.
    data = json.loads(report_file.read_text())
    data["checks"][0]["findings"][0]["details"]["version"] = "0.1-1"
    report_file.write_text(json.dumps(data))
    planned = repair(report_file, arch)
    assert "Cannot repair automatically (1)" in planned.stdout
    assert "no package file of other 2:2.5-3 (any)" in planned.stdout
    assert "other-2:2.5-3-any.pkg.tar.zst" in planned.stdout and "--archives DIR" in planned.stdout
    archives = tmp_path / "downloads"
    archives.mkdir()
    shutil.copy(arch_packages["other"], archives)
    run = repair(report_file, arch, "--apply", "--yes", "--archives", archives)
    assert run.code == 0, run.stdout + run.stderr
    assert f"- other 2:2.5-3 (any) from {archives / arch_packages['other'].name}: 1 file(s)" in run.stdout
    assert (arch / "usr/lib/other/lib.so").read_bytes() == OTHER["/usr/lib/other/lib.so"]


def test_pacman_image_a_damaged_package_file_fails_its_step_and_changes_nothing(arch, tmp_path):
    damage_arch(arch)
    report_file = report(arch, tmp_path, "pacman")
    cached = arch / "var/cache/pacman/pkg/demo-1.0-1-x86_64.pkg.tar.zst"
    truncate(cached, cached.stat().st_size // 2)
    before = pacfix.check(arch)
    run = repair(report_file, arch, "--apply", "--yes")
    assert run.code == 3, run.stdout + run.stderr
    assert "FAILED: demo 1.0-1 (x86_64):" in run.stdout
    assert "cannot read the package file" in run.stdout
    assert "everything restored is intact" not in run.stdout
    # What was written had the packaged digest; nothing became worse.
    assert pacfix.check(arch) <= before


def test_pacman_image_permission_problems_and_foreign_findings_are_never_planned(arch, tmp_path):
    flip_byte(arch / "usr/bin/demo", 5)
    report_file = report(arch, tmp_path, "pacman")
    data = json.loads(report_file.read_text())
    finding = data["checks"][0]["findings"][0]
    data["checks"][0]["findings"] += [
        {
            **finding,
            "code": "unreadable",
            "severity": "warning",
            "path": "/usr/share/demo/secret.key",
            "details": {**finding["details"], "errno": "EACCES", "error": "Permission denied"},
        },
        {**finding, "code": "database-damaged", "path": "/var/lib/pacman/local/demo-1.0-1/mtree"},
        {**finding, "path": "/usr/share/nobody/owns-this"},
    ]
    report_file.write_text(json.dumps(data))
    run = repair(report_file, arch)
    assert run.code == 0
    assert "- demo 1.0-1 (x86_64)" in run.stdout and ": 1 file(s)" in run.stdout
    assert "/usr/share/demo/secret.key" in run.stdout and "permission denied" in run.stdout
    assert "no package installed at" in run.stdout and "/usr/share/nobody/owns-this" in run.stdout
    assert "Cannot repair automatically (3)" in run.stdout


# -- pacman: the running system -------------------------------------------------------------------


@pytest.fixture
def live_programs():
    require_program("unshare", "util-linux")
    require_program("pacman", "pacman-package-manager")


def audit_live(system, check: str) -> dict:
    done = system.run(f"{FSAUDIT} audit --check {check} --format json --output /tmp/report.json")
    assert done.returncode == 2, done.stdout + done.stderr
    return json.loads(system.path("/tmp/report.json").read_text())


def test_pacman_running_system_reinstalls_cached_packages_in_one_transaction(
    live_programs, arch_packages, tmp_path
):
    demo, other = arch_packages["demo"], arch_packages["other"]
    system = pacfix.running_system(tmp_path / "system", [demo, other])
    for package in (demo, other):
        system.path(f"/var/cache/pacman/pkg/{package.name}").write_bytes(package.read_bytes())
    flip_byte(system.path("/usr/bin/demo"), 5)
    system.must("rm /usr/lib/other/lib.so; echo 'key = 2' > /etc/demo.conf")
    audit_live(system, "pacman")
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes --allow-conffiles")
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert (
        "reinstalling 2 package(s) in one transaction: pacman -U --noconfirm -- "
        f"/var/cache/pacman/pkg/{demo.name} /var/cache/pacman/pkg/{other.name}\n"
    ) in out
    assert "Restored: demo 1.0-1 (x86_64), other 2:2.5-3 (any)" in out
    assert "Checked again with the pacman check: everything restored is intact." in out
    # pacman keeps an edited backup file on a reinstall: --allow-conffiles moved it aside first.
    assert system.path("/etc/demo.conf").read_text() == "key = 1\n"
    assert system.path("/etc/demo.conf.pacsave").read_text() == "key = 2\n"
    assert system.run("pacman -Qkk demo other").returncode == 0
    assert not Path("/usr/bin/demo").exists() and not Path("/usr/lib/other").exists()


def test_pacman_running_system_downloads_only_the_installed_version(live_programs, arch_packages, tmp_path):
    demo, other = arch_packages["demo"], arch_packages["other"]
    # The mirror has demo at its installed version, other only at a newer one.
    system = pacfix.running_system(
        tmp_path / "system", [demo, other], repository=[demo, arch_packages["other-newer"]]
    )
    flip_byte(system.path("/usr/share/demo/data.bin"), 5)
    flip_byte(system.path("/usr/bin/other"), 5)
    audit_live(system, "pacman")
    planned = system.run(f"{FSAUDIT} repair /tmp/report.json")
    assert "$ pacman -Sw --noconfirm --nodeps --nodeps -- demo other" in planned.stdout
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    out = run.stdout
    assert run.returncode == 3, out + run.stderr
    assert "downloading 1 package file(s) of the installed versions: pacman -Sw --noconfirm" in out
    assert "--nodeps --nodeps -- demo\n" in out
    assert (
        "FAILED: other 2:2.5-3 (any): the configured repositories have other 2:2.6-1, not the installed"
        in out
    )
    assert "--archives DIR" in out
    assert "Restored: demo 1.0-1 (x86_64)" in out
    assert system.path("/usr/share/demo/data.bin").read_bytes() == DEMO["/usr/share/demo/data.bin"]
    assert system.must("pacman -Q other").strip() == "other 2:2.5-3"
    assert system.path("/usr/bin/other").read_bytes() != OTHER["/usr/bin/other"][0].encode()


def test_pacman_running_system_keeps_a_package_with_a_local_change_unless_asked(
    live_programs, arch_packages, tmp_path
):
    demo = arch_packages["demo"]
    system = pacfix.running_system(tmp_path / "system", [demo], repository=[demo])
    # The admin rewrote the notes a day after installation; a lost write hit the data file.
    system.must("echo 'our notes' > /usr/share/demo/notes.txt; touch -d '+1 day' /usr/share/demo/notes.txt")
    flip_byte(system.path("/usr/share/demo/data.bin"), 5)
    audit_live(system, "pacman")
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "reinstalling demo would also undo the 1 local change(s) left alone in it" in run.stdout
    assert "nothing to restore" in run.stdout
    assert system.path("/usr/share/demo/notes.txt").read_text() == "our notes\n"
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes --include-modified")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Restored: demo 1.0-1 (x86_64)" in run.stdout
    assert system.path("/usr/share/demo/notes.txt").read_text() == DEMO["/usr/share/demo/notes.txt"]


# -- apk: images ----------------------------------------------------------------------------------


ALPINE_DEMO = {
    "/usr/bin/demo": ("#!/bin/sh\necho demo\n" * 40, 0o755),
    "/usr/bin/demo-link": ("link", "demo"),
    "/usr/lib/libdemo.so.1": b"\x7fELF" + bytes(5000),
    "/etc/demo.conf": "key = 1\n",
    "/usr/share/demo/notes.txt": "notes\n" * 100,
    "/usr/share/demo/secret": ("private\n", 0o600),
}


@pytest.fixture
def alpine_root(tmp_path) -> Path:
    root = alpine.make_root(tmp_path / "alpine")
    alpine.install(root, "busybox", "1.36.1-r15", {"/bin/busybox": ("busybox\n" * 100, 0o755)})
    alpine.install(root, "demo", "1.2-r0", ALPINE_DEMO)
    alpine.cache_apk(root, "demo", "1.2-r0", ALPINE_DEMO)
    return root


def test_apk_image_restores_files_and_links_from_the_cached_apk(alpine_root, tmp_path):
    root = alpine_root
    flip_byte(root / "usr/lib/libdemo.so.1", 100)
    (root / "usr/bin/demo-link").unlink()
    (root / "usr/bin/demo-link").symlink_to("/bin/busybox")
    os.unlink(root / "usr/share/demo/notes.txt")
    os.chmod(root / "usr/share/demo/secret", 0o644)
    (root / "etc/demo.conf").write_text("key = 2\n")
    (root / "bin/busybox").unlink()
    report_file = report(root, tmp_path, "apk")
    planned = repair(report_file, root)
    cached = next((root / "var/cache/apk").glob("demo-1.2-r0.*.apk"))
    assert f"- demo 1.2-r0 (x86_64) from {root / 'etc/apk/cache' / cached.name}: 4 file(s)" in planned.stdout
    assert "no package file of busybox 1.36.1-r15 (x86_64)" in planned.stdout
    assert "apk fetch busybox=1.36.1-r15" in planned.stdout
    run = repair(report_file, root, "--apply", "--yes", "--allow-conffiles")
    assert run.code == 0, run.stdout + run.stderr  # busybox stays on the owner's list
    assert "Restored: demo 1.2-r0 (x86_64)" in run.stdout
    assert "Checked again with the apk check: everything restored is intact." in run.stdout
    assert (root / "usr/lib/libdemo.so.1").read_bytes() == ALPINE_DEMO["/usr/lib/libdemo.so.1"]
    assert os.readlink(root / "usr/bin/demo-link") == "demo"
    assert (root / "usr/share/demo/secret").stat().st_mode & 0o7777 == 0o600
    assert (root / "etc/demo.conf").read_text() == "key = 1\n"
    assert (root / "etc/demo.conf.apk-old").read_text() == "key = 2\n"
    after = fsaudit("audit", "--root", root, "--check", "apk", "--format", "json")
    assert {f["path"] for f in after.findings("apk")} == {"/bin/busybox"}


def test_apk_running_system_command_and_its_simulation():
    repairer = ApkRepairer("apk", Request("/"))
    steps = [
        Step("apk", "x", data=ManifestStep(Package("busybox", "1.36.1-r15"))),
        Step("apk", "y", data=ManifestStep(Package("musl", "1.2.4-r2"))),
    ]
    assert repairer.transaction(steps) == ["apk", "fix", "--", "busybox", "musl"]
    assert repairer.transaction(steps, simulate=True) == ["apk", "fix", "--simulate", "--", "busybox", "musl"]
    ours = {"busybox", "musl"}
    clean = "(1/2) Reinstalling busybox (1.36.1-r15)\n(2/2) Reinstalling musl (1.2.4-r2)\nOK: 10 MiB"
    assert simulation(clean, ours) == (set(), [])
    gone = "(1/2) [APK unavailable, skipped] Reinstalling musl (1.2.4-r2)\n(2/2) Reinstalling busybox (1.36)"
    assert simulation(gone, ours) == ({"musl"}, [])
    more = (
        "(1/3) Upgrading libcrypto3 (3.1.4-r1 -> 3.1.4-r5)\n(2/3) Installing ssl_client@edge (1.36)\n"
        "(3/3) Reinstalling musl (1.2.4-r2)\n"
    )
    assert simulation(more, ours) == (set(), ["Upgrading libcrypto3", "Installing ssl_client"])


def test_apk_names_that_apk_would_read_as_options_never_reach_it():
    repairer = ApkRepairer("apk", Request("/"))
    assert repairer.valid(Package("busybox", "1.36.1-r15"))
    assert repairer.valid(Package("py3-setuptools", "68.2.2-r0"))
    for name in ("--allow-untrusted", "-X", "musl>1.2", "musl@edge", "a b", ".hidden", ""):
        assert not repairer.valid(Package(name, "1.0-r0")), name
    assert not repairer.valid(Package("musl", "1.0 --root=/tmp"))


# -- portage: images ------------------------------------------------------------------------------


GENTOO_SED = {
    "/bin/sed": ("sed program\n" * 200, 0o755),
    "/usr/bin/sed": ("link", "../../bin/sed"),
    "/usr/share/doc/sed-4.9/NEWS": "news\n" * 50,
    "/etc/sed.conf": "key = 1\n",
}


@pytest.fixture
def gentoo_root(tmp_path) -> Path:
    root = gentoo.make_root(tmp_path / "gentoo")
    gentoo.install(root, "sys-apps", "sed-4.9", GENTOO_SED)
    return root


@pytest.mark.parametrize("fmt", ["gpkg", "xpak"])
def test_portage_image_restores_from_a_binary_package(gentoo_root, tmp_path, fmt):
    root = gentoo_root
    package = gentoo.make_binpkg(root, "sys-apps", "sed-4.9", GENTOO_SED, fmt=fmt)
    flip_byte(root / "bin/sed", 10)
    os.unlink(root / "usr/share/doc/sed-4.9/NEWS")
    report_file = report(root, tmp_path, "portage")
    planned = repair(report_file, root)
    assert f"- sys-apps/sed-4.9 from {package}: 2 file(s)" in planned.stdout
    run = repair(report_file, root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "Checked again with the portage check: everything restored is intact." in run.stdout
    assert (root / "bin/sed").read_text() == GENTOO_SED["/bin/sed"][0]
    st = (root / "bin/sed").stat()
    # The mode of the binary package, the mtime CONTENTS records.
    assert (st.st_mode & 0o7777, int(st.st_mtime)) == (0o755, gentoo.MERGE_TIME)
    assert fsaudit("audit", "--root", root, "--check", "portage").code == 0


def test_portage_image_without_a_binary_package_says_to_emerge_and_restores_links(gentoo_root, tmp_path):
    root = gentoo_root
    flip_byte(root / "bin/sed", 10)
    (root / "usr/bin/sed").unlink()
    report_file = report(root, tmp_path, "portage")
    run = repair(report_file, root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "- sys-apps/sed-4.9 from the package database (links and directories): 1 file(s)" in run.stdout
    assert "Portage keeps no copy of what it installed" in run.stdout
    assert "emerge --oneshot =sys-apps/sed-4.9 inside the VM" in run.stdout
    assert os.readlink(root / "usr/bin/sed") == "../../bin/sed"
    assert (root / "bin/sed").read_bytes() != GENTOO_SED["/bin/sed"][0].encode()


def test_portage_a_binary_package_of_other_use_flags_is_never_written(gentoo_root, tmp_path):
    root = gentoo_root
    gentoo.make_binpkg(
        root, "sys-apps", "sed-4.9", {**GENTOO_SED, "/bin/sed": ("built with USE=-nls\n", 0o755)}
    )
    flip_byte(root / "bin/sed", 10)
    damaged = (root / "bin/sed").read_bytes()
    report_file = report(root, tmp_path, "portage")
    run = repair(report_file, root, "--apply", "--yes")
    assert run.code == 3, run.stdout + run.stderr
    assert "does not have the digest the package database records: not written" in run.stdout
    assert (root / "bin/sed").read_bytes() == damaged
    assert sorted(os.listdir(root / "bin")) == ["sed"]


def test_portage_running_system_command_and_its_pretend_output():
    repairer = PortageRepairer("portage", Request("/"))
    sed = Package("sys-apps/sed", "4.9", identity={"atom": "=sys-apps/sed-4.9"})
    gcc = Package("sys-devel/gcc", "13.2.1_p20240113-r1")
    steps = [Step("portage", "x", data=ManifestStep(sed)), Step("portage", "y", data=ManifestStep(gcc))]
    assert repairer.transaction(steps) == [
        "emerge", "--oneshot", "--", "=sys-apps/sed-4.9", "=sys-devel/gcc-13.2.1_p20240113-r1"
    ]  # fmt: skip
    assert repairer.transaction(steps, simulate=True)[:5] == [
        "emerge",
        "--oneshot",
        "--pretend",
        "--color",
        "n",
    ]
    atoms = {"=sys-apps/sed-4.9", "=sys-devel/gcc-13.2.1_p20240113-r1"}
    clean = (
        "These are the packages that would be merged, in order:\n\n"
        '[ebuild   R    ] sys-apps/sed-4.9::gentoo  USE="acl nls -selinux" 0 KiB\n'
        "[binary   R    ] sys-devel/gcc-13.2.1_p20240113-r1::gentoo  0 KiB\n"
    )
    assert pretend(clean, atoms) == (set(), [])
    more = clean + "[ebuild  N     ] dev-libs/newdep-1.0::gentoo\n"
    more += "[ebuild     U  ] sys-libs/glibc-2.39::gentoo [2.38]\n"
    assert pretend(more, atoms) == (set(), ["N dev-libs/newdep-1.0", "U sys-libs/glibc-2.39"])
    gone = 'emerge: there are no ebuilds to satisfy "=sys-apps/sed-4.9".\n'
    assert pretend(gone, atoms) == ({"=sys-apps/sed-4.9"}, [])
    for name, version in (("--root=/tmp/x", "1"), ("sys-apps/-sed", "4.9"), ("sys-apps/sed", "4.9 --ask")):
        assert not repairer.valid(Package(name, version)), name
    assert repairer.valid(sed) and repairer.valid(gcc)


# -- nix ------------------------------------------------------------------------------------------


def test_nix_image_damage_goes_to_the_owners_list_with_what_to_run(tmp_path):
    require_program("nix-store", "nix-bin")
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "a").write_text("a\n" * 100)
    (source / "sub/b").write_text("b\n")
    root = tmp_path / "nixroot"
    root.mkdir()
    (path,) = nixfix.add(root, [source])
    file = nixfix.writable(root, path) / "a"
    flip_byte(file, 3)
    report_file = report(root, tmp_path, "nix")
    before = file.read_bytes()
    run = repair(report_file, root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "nothing to restore" in run.stdout
    assert "the Nix store keeps no second copy of a path" in run.stdout
    assert f"nix-store --repair-path {path}" in run.stdout and "nix copy --from" in run.stdout
    assert file.read_bytes() == before


def test_nix_running_system_repairs_store_paths_from_the_binary_cache(tmp_path):
    require_program("unshare", "util-linux")
    require_program("nix-store", "nix-bin")
    system, paths = nixfix.running_system(
        tmp_path / "system", {"tree/a": "a\n" * 100, "tree/sub/b": "b\n", "hello.txt": "hello\n"}
    )
    tree, hello = paths["tree"], paths["hello.txt"]
    system.must(f"chmod -R u+w {tree} {hello}")
    flip_byte(system.path(f"{tree}/a"), 3)
    os.unlink(system.path(hello))
    report_data = audit_live(system, "nix")
    assert {(f["path"], f["code"]) for f in report_data["checks"][0]["findings"]} == {
        (tree, "content-differs"),
        (hello, "missing"),
    }
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert f"nix-store --repair-path -- {' '.join(sorted([hello, tree]))}" in out
    assert "Checked again with the nix check: everything restored is intact." in out
    assert system.path(f"{tree}/a").read_text() == "a\n" * 100
    assert system.path(hello).read_text() == "hello\n"
    assert system.run("nix-store --verify --check-contents").returncode == 0


def test_apk_and_emerge_simulations_decide_what_runs(monkeypatch):
    """The running-system flow of apk and emerge, with their answers given (neither has a Debian package)."""
    # Both simulate through the manifest repairers' shared `simulated`, which runs the program.
    from fsaudit_checks.manifest import repair as manifest_repair

    ran = []

    def answer(outputs):
        def run(command, env, timeout=0):
            ran.append(command)
            return outputs.pop(0)

        return run

    apk = ApkRepairer("apk", Request("/"))
    steps = [Step("apk", n, data=ManifestStep(Package(n, "1.0-r0"))) for n in ("busybox", "musl")]
    skipped = (
        "(1/2) [APK unavailable, skipped] Reinstalling musl (1.0-r0)\n(2/2) Reinstalling busybox (1.0-r0)"
    )
    monkeypatch.setattr(
        manifest_repair, "run", answer([(0, skipped), (0, "(1/1) Reinstalling busybox (1.0-r0)")])
    )
    ready, refused = apk.prepare(steps, {}, print)
    assert [s.label for s in ready] == ["busybox"]
    assert [
        (s.label, "neither the configured repositories nor apk's cache" in why) for s, why in refused
    ] == [("musl", True)]
    assert ran == [
        ["apk", "fix", "--simulate", "--", "busybox", "musl"],
        ["apk", "fix", "--simulate", "--", "busybox"],
    ]
    monkeypatch.setattr(
        manifest_repair,
        "run",
        answer([(0, "(1/2) Upgrading musl (1.0-r0 -> 1.1-r0)\n(2/2) Reinstalling busybox (1.0-r0)")]),
    )
    ready, refused = apk.prepare(steps[:1], {}, print)
    assert ready == [] and "apk would also change other packages (Upgrading musl)" in refused[0][1]

    emerge = PortageRepairer("portage", Request("/"))
    sed = Step("portage", "sed", data=ManifestStep(Package("sys-apps/sed", "4.9")))
    monkeypatch.setattr(
        manifest_repair,
        "run",
        answer([(1, 'emerge: there are no ebuilds to satisfy "=sys-apps/sed-4.9".')]),
    )
    ready, refused = emerge.prepare([sed], {}, print)
    assert ready == [] and "no ebuild of sys-apps/sed-4.9" in refused[0][1]


def test_a_transaction_runs_once_more_for_what_it_left_and_not_after_a_stop(monkeypatch):
    """The loop every running-system repairer shares (dnf, pacman, apk, emerge, nix-store): one run,
    a second over what is still to do, none after the operator asked to stop."""
    from fsaudit.repair import Stop, commands

    ran, told = [], []
    monkeypatch.setattr(commands, "run", lambda command, env: ran.append(command) or (1, "E: flaky\n"))
    fixed_by_second_run = {"beta"}

    def still_to_do(step):
        return step not in fixed_by_second_run or len(ran) < 2

    left, status, output, command = commands.transact(
        lambda steps: ["dnf", "reinstall", "--", *steps],
        ["alpha", "beta"],
        still_to_do,
        {},
        told.append,
        Stop(),
    )
    assert ran == [["dnf", "reinstall", "--", "alpha", "beta"], ["dnf", "reinstall", "--", "alpha", "beta"]]
    assert (left, status, command[0]) == (["alpha"], 1, "dnf") and output == "E: flaky\n"
    assert told == [
        "reinstalling 2 package(s) in one transaction: dnf reinstall -- alpha beta",
        "reinstalling 2 package(s) once more, in one transaction: dnf reinstall -- alpha beta",
    ]
    stop = Stop()
    stop.requested = True
    ran.clear()
    left, *_ = commands.transact(
        lambda steps: ["nix-store", *steps], ["a"], lambda step: True, {}, print, stop
    )
    assert (len(ran), left) == (1, ["a"])


def test_every_package_repairer_sorts_a_reports_findings_by_the_same_rules():
    """Which findings are file repairs is decided once (fsaudit.repair.packages) for every manager:
    an old report's permission-denied `unreadable`, by its errno name or by its error text, is never
    one; nor a path that is no normal absolute path, nor a code the repairer does not restore."""
    from fsaudit.model import Finding
    from fsaudit.repair.packages import NOT_CHECKED, not_a_file_repair
    from fsaudit_checks.debian.repair import DebianRepairer
    from fsaudit_checks.rpm.repair import RpmRepairer

    def finding(code="unreadable", path="/usr/bin/sed", **details):
        return Finding("x", code, "warning", "m", path, details=details, advice="restore it")

    for repairer in (DebianRepairer, RpmRepairer, ApkRepairer, PortageRepairer):
        codes = repairer.file_codes
        assert not_a_file_repair(finding(errno="EACCES", error="Permission denied"), codes) == NOT_CHECKED
        assert not_a_file_repair(finding(errno="EPERM"), codes) == NOT_CHECKED
        assert not_a_file_repair(finding(error="[Errno 13] Permission denied"), codes) == NOT_CHECKED
        assert not_a_file_repair(finding(errno="EIO", error="Input/output error"), codes) == ""
        assert not_a_file_repair(finding("missing", "/usr/../etc/shadow"), codes) != ""
        assert not_a_file_repair(finding("no-such-code"), codes) == "restore it"
