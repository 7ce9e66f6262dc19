"""fsaudit's rpm checker beside `rpm --root R -Va` on the same root: wall times and their ratio.

Builds PACKAGES noarch RPMs holding SIZE_MB of incompressible data in all (uncompressed payloads, so
building stays quick), installs them into a throwaway root with `rpm --root`, then times both tools
with a warm page cache (both read the same cached files: like with like). Goal: fsaudit at most 0.8x
rpm's wall time on 30 packages / 600 MB.

    python benchmarks/rpm.py                  # 30 packages, 600 MB
    python benchmarks/rpm.py --size-mb 60     # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """\
Name: {name}
Version: 1.0
Release: 1
Summary: fsaudit benchmark package
License: MIT
BuildArch: noarch
AutoReqProv: no
%global debug_package %{{nil}}
%global __os_install_post %{{nil}}
%define _binary_payload w0.ufdio
%define _build_id_links none
%description
benchmark data
%install
mkdir -p %{{buildroot}}/usr/share/{name} %{{buildroot}}/etc
{commands}
echo "setting = 1" > %{{buildroot}}/etc/{name}.conf
%files
/usr/share/{name}
%config(noreplace) /etc/{name}.conf
"""


def build_packages(work: Path, packages: int, size_mb: int) -> list:
    top = work / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    per_package = size_mb * (1 << 20) // packages
    rpms = []
    for index in range(packages):
        name = f"bench{index:02d}"
        commands = []
        remaining, number = per_package, 0
        while remaining > 0:
            # A realistic mix: a few large files and a tail of small ones.
            size = min(remaining, 4 << 20 if number < 4 else 64 << 10)
            commands.append(f"head -c {size} /dev/urandom > %{{buildroot}}/usr/share/{name}/file{number:03d}")
            remaining -= size
            number += 1
        spec = top / "SPECS" / f"{name}.spec"
        spec.write_text(SPEC.format(name=name, commands="\n".join(commands)))
        subprocess.run(
            ["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)], check=True, capture_output=True
        )
        rpms.append(top / "RPMS" / "noarch" / f"{name}-1.0-1.noarch.rpm")
    return rpms


def make_root(work: Path, packages: int, size_mb: int) -> Path:
    started = time.perf_counter()
    rpms = build_packages(work, packages, size_mb)
    root = work / "root"
    root.mkdir()
    install = ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts"]
    subprocess.run([*install, *map(str, rpms)], check=True, capture_output=True)
    shutil.rmtree(work / "rpmbuild")
    print(f"built and installed {packages} packages, {size_mb} MB in {time.perf_counter() - started:.1f} s")
    return root


def timed(command: list) -> tuple:
    """Wall seconds, CPU seconds (user + system) and the outcome of one run of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, completed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=30)
    parser.add_argument("--size-mb", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--root", type=Path, help="reuse a root a previous --keep run left")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fsaudit-bench-rpm-"))
    try:
        root = args.root or make_root(work, args.packages, args.size_mb)
        rpm_cmd = ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-Va", "--nodeps", "--noscripts"]
        fsaudit_cmd = [
            sys.executable,
            "-m",
            "fsaudit",
            "audit",
            "--root",
            str(root),
            "--check",
            "rpm",
            "--format",
            "json",
        ]
        timed(rpm_cmd)  # warm the page cache for both
        rpm_runs, fsaudit_runs, check_seconds = [], [], []
        for _ in range(args.repeat):
            wall, cpu, completed = timed(rpm_cmd)
            assert completed.stdout == "", f"rpm -Va found differences: {completed.stdout[:500]}"
            rpm_runs.append((wall, cpu))
            wall, cpu, completed = timed(fsaudit_cmd)
            assert completed.returncode == 0, completed.stdout[:2000] + completed.stderr[-2000:]
            fsaudit_runs.append((wall, cpu))
            check_seconds.append(json.loads(completed.stdout)["checks"][0]["seconds"])
        medians = {}
        for label, runs in (("rpm -Va", rpm_runs), ("fsaudit rpm", fsaudit_runs)):
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            medians[label] = wall
            walls = ", ".join(f"{w:.2f}" for w, _ in runs)
            print(
                f"{label:<12}: {wall:.2f} s wall, {cpu:.2f} s CPU (medians of {args.repeat}; walls: {walls})"
            )
        print(f"  of which the rpm check itself (report): {statistics.median(check_seconds):.2f} s")
        ratio = medians["fsaudit rpm"] / medians["rpm -Va"]
        print(f"ratio fsaudit/rpm (wall): {ratio:.2f} (goal: at most 0.80; {os.cpu_count()} cores here)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
