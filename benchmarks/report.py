"""Benchmarks of the report renderers and of repair, side by side with what a user would run instead.

- Renderers: `fsaudit report --format F` on a generated report with many findings, next to a bare
  `json.load` of the same file in a fresh Python (the floor: starting Python and reading the JSON).
- Repair: `fsaudit repair --root R --apply --yes` (each damaged file restored from its cached .deb,
  then checked again) next to one `dpkg --root R -i` of the same package files, on two copies of the
  same damaged root.

Usage: .venv/bin/python benchmarks/report.py [--findings N] [--packages K]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fixtures.corrupt import flip_byte  # noqa: E402
from fixtures.debroot import CACHE, audit_json, make_deb, make_root  # noqa: E402


def _timed(command, **kwargs) -> float:
    started = time.monotonic()
    subprocess.run(command, check=False, capture_output=True, **kwargs)
    return time.monotonic() - started


def big_report(findings: int) -> dict:
    data = json.loads((REPO / "tests" / "golden" / "report.json").read_text())
    template = data["checks"][0]["findings"][0]
    listed = []
    for i in range(findings):
        finding = json.loads(json.dumps(template))
        finding["path"] = f"/usr/lib/pkg{i % 500}/file{i}.so"
        finding["details"]["package"] = f"pkg{i % 500}"
        finding["advice"] = f"reinstall the package pkg{i % 500}"
        listed.append(finding)
    data["checks"][0]["findings"] = listed
    return data


def bench_renderers(work: Path, findings: int) -> None:
    path = work / "big.json"
    path.write_text(json.dumps(big_report(findings)))
    size = path.stat().st_size / 1e6
    floor = _timed([sys.executable, "-c", f"import json; json.load(open({str(path)!r}))"])
    print(f"renderers: report with {findings:,} findings ({size:.1f} MB JSON)")
    print(f"  json.load (floor)   {floor:7.2f} s")
    for fmt in ("text", "json", "html", "nagios", "prometheus"):
        out = work / f"big.{fmt}"
        seconds = _timed(
            [sys.executable, "-m", "fsaudit", "report", str(path), "--format", fmt, "--output", str(out)]
        )
        megabytes = out.stat().st_size / 1e6
        print(
            f"  fsaudit {fmt:<11} {seconds:7.2f} s  ratio {seconds / floor:5.1f}  output {megabytes:.1f} MB"
        )


def bench_repair(work: Path, packages: int) -> None:
    debs = [
        make_deb(
            work,
            f"bench{i}",
            "1.0",
            {f"/usr/share/bench{i}/f{j}": bytes([i % 256]) * 65536 for j in range(20)},
        )
        for i in range(packages)
    ]
    first = make_root(work / "root-a", debs)
    for i in range(packages):
        flip_byte(first / f"usr/share/bench{i}/f0", 10)
    second = work / "root-b"
    shutil.copytree(first, second, symlinks=True)
    report = work / "report.json"
    audit_json(first, report)
    ours = _timed(
        [sys.executable, "-m", "fsaudit", "repair", str(report), "--root", str(first), "--apply", "--yes"]
    )
    cached = sorted(str(p) for p in (second / CACHE).glob("*.deb"))
    peer = _timed(["dpkg", "--root", str(second), "--force-confdef", "--force-confold", "-i", *cached])
    print(f"repair: {packages} damaged packages of 20 files x 64 KiB")
    print(f"  dpkg -i, all at once       {peer:7.2f} s")
    ratio = ours / peer
    print(
        f"  fsaudit repair --apply     {ours:7.2f} s  ratio {ratio:5.1f} (restore from the .deb, check again)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--findings", type=int, default=100_000)
    parser.add_argument("--packages", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fsaudit-bench-") as temporary:
        work = Path(temporary)
        bench_renderers(work, args.findings)
        bench_repair(work, args.packages)


if __name__ == "__main__":
    main()
