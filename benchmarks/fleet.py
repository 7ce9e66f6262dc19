"""Benchmark: `fsaudit fleet` over 200 host entries on loopback at concurrency 50.

Prints the wall time of the whole run against (200 / 50) x the wall time of one host's audit through
the same path, and their ratio (goal: at most 1.5).

On loopback every "VM" shares this machine's cores, unlike a real fleet where each audit runs on its
own VM. So by default each host runs a simulated audit of fixed duration (`--audit-seconds`: sleep, then
print a canned fsaudit report through the real loader, ssh session, validation and result directory):
that measures what the fleet itself costs. `--real` runs the installed fsaudit (a one-file audit) on
every host instead, which mostly measures this machine's CPU.

    python benchmarks/fleet.py [--hosts 200] [--concurrency 50] [--ports 4] [--audit-seconds 5] [--real]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fixtures.fleet import SshLab, ini_inventory, installed_command, probe_plugin, probe_root  # noqa: E402

USER = "fsaudit-fleet-test"  # a user with /bin/sh: root's shell start-up files would be measured too


def ensure_user() -> None:
    subprocess.run(
        ["useradd", "--system", "--shell", "/bin/sh", "--no-create-home", USER], stderr=subprocess.DEVNULL
    )
    subprocess.run(["usermod", "-p", "*", USER], check=True)


def host_seconds(out: Path) -> float:
    """The time one host's audit took, from its record (ssh session start to validated report)."""
    return json.loads(next((out / "hosts").glob("*.json")).read_text())["seconds"]


TICK = os.sysconf("SC_CLK_TCK")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class CpuGroup:
    """The CPU time of a set of processes and all their descendants: a cgroup v1 cpuacct group when
    this machine has one (we run as root), else the waited-for children that /proc shows."""

    def __init__(self, name: str):
        self.path = CPUACCT / f"{name}-{os.getpid()}"
        try:
            self.path.mkdir()
        except OSError:
            self.path = None
        self.pids: List[int] = []

    def add(self, pid: int) -> None:
        self.pids.append(pid)
        if self.path:
            (self.path / "tasks").write_text(f"{pid}\n")

    def seconds(self) -> float:
        if self.path:
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        return sum(sum(proc_cpu(pid)) for pid in self.pids)

    def remove(self) -> None:
        if self.path:
            for pid in (self.path / "tasks").read_text().split():
                try:
                    (CPUACCT / "tasks").write_text(f"{pid}\n")
                except OSError:
                    pass
            try:
                self.path.rmdir()
            except OSError:
                pass


def proc_cpu(pid: int) -> Tuple[float, float]:
    """(CPU of process `pid` itself, CPU of its children it has waited for), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK


def machine_cpu() -> Tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK, idle / TICK


def run_fleet(
    inventory: Path, lab: SshLab, hosts: CpuGroup, out: Path, concurrency: int, extra: list
) -> Tuple[float, str]:
    """Run `fsaudit fleet`; return its wall time and where the CPU went while it ran: the control
    process itself, its ssh clients, the simulated hosts (sshd, login, loader, audit) and the rest
    of the machine (other work on it)."""
    control_group = CpuGroup("fsaudit-fleet-control")
    hosts_before = hosts.seconds()
    busy_before, idle_before = machine_cpu()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "fsaudit", "fleet", str(inventory), "--ssh-config", str(lab.config),
         "--out", str(out), "--concurrency", str(concurrency), "--timeout", "600", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    control_group.add(process.pid)  # before it starts its first ssh: the interpreter takes longer
    own = 0.0
    while process.poll() is None:  # the last sample before it exits: /proc forgets it afterwards
        own = proc_cpu(process.pid)[0] or own
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    stdout, stderr = process.communicate()
    busy, idle = machine_cpu()
    busy, idle = busy - busy_before, idle - idle_before
    hosts_cpu = hosts.seconds() - hosts_before
    control = control_group.seconds() if control_group.path else own + proc_cpu(process.pid)[1]
    control_group.remove()
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    print(f"  {last}")
    if "no report" in last:
        raise SystemExit(f"some hosts sent no report: {stderr[-2000:]}")
    cpu = (
        f"CPU {busy:.1f} s busy, {idle:.1f} s idle: control process {own:.1f} s, its ssh clients "
        f"{control - own:.1f} s, simulated hosts {hosts_cpu:.1f} s, "
        f"rest of the machine {busy - control - hosts_cpu:.1f} s"
        + ("" if hosts.path else " (no cpuacct cgroup: processes not waited for are missed)")
    )
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--ports", type=int, default=4, help="sshd ports the host entries point at")
    parser.add_argument("--audit-seconds", type=float, default=5.0)
    parser.add_argument("--real", action="store_true", help="run the installed fsaudit on every host")
    parser.add_argument(
        "--kex",
        help="ssh KexAlgorithms, e.g. curve25519-sha256: OpenSSH's default post-quantum key exchange costs "
        "~0.1 s of CPU per connection on each side, and on loopback the server side runs here too",
    )
    options = parser.parse_args()

    ensure_user()
    work = Path(tempfile.mkdtemp(prefix="fsaudit-fleet-bench-"))
    lab = SshLab(work)
    simulated = CpuGroup("fsaudit-fleet-hosts")
    try:
        ports = lab.start("bench", ports=options.ports)
        for process in lab.processes:
            simulated.add(process.pid)
        if options.real:
            plugin = probe_plugin(lab.public / "plugin")
            root = probe_root(lab.public / "root", "fine\n")
            variables = {
                "fsaudit_command": installed_command(plugin),
                "fsaudit_args": f"--check probe --root {root}",
            }
            what = "the installed fsaudit (one probe check) on every host"
        else:
            canned = lab.public / "report.json"
            done = subprocess.run(
                [sys.executable, "-m", "fsaudit", "audit", "--root", str(lab.public), "--skip", "debian",
                 "--format", "json"], capture_output=True, text=True,
            )  # fmt: skip
            canned.write_text(done.stdout)
            canned.chmod(0o644)
            command = f"sh -c 'sleep {options.audit_seconds:g}; cat {canned}' simulated-audit"
            variables = {"fsaudit_command": command}
            what = f"a simulated {options.audit_seconds:g} s audit on every host"
        # --real runs as root: this venv's python lives under /root, which the test user cannot read
        common = {
            "ansible_host": "127.0.0.1",
            "ansible_user": "root" if options.real else USER,
            "fsaudit_python": "/usr/bin/python3",
            **variables,
        }
        hosts = {
            f"vm{i:04d}": {**common, "ansible_port": ports[i % len(ports)]} for i in range(options.hosts)
        }
        one = ini_inventory(work / "one.ini", {"vm0000": hosts["vm0000"]})
        fleet = ini_inventory(work / "fleet.ini", hosts)
        print(f"fleet benchmark: {options.hosts} host entries on {len(ports)} sshd ports, concurrency "
              f"{options.concurrency}, {what}; kex {options.kex or 'default'}; "
              f"{os.cpu_count()} cores")  # fmt: skip
        extra = ["--ssh-option", f"KexAlgorithms={options.kex}"] if options.kex else []
        for i in range(3):
            run_fleet(one, lab, simulated, work / f"one{i}", 1, extra)
        single = min(host_seconds(work / f"one{i}") for i in range(3))
        total, cpu = run_fleet(fleet, lab, simulated, work / "fleet", options.concurrency, extra)
        ideal = options.hosts / options.concurrency * single
        print(f"one host's audit:   {single:7.2f} s (best of 3, from its host record)")
        print(f"{options.hosts} hosts:          {total:7.2f} s")
        print(f"({options.hosts}/{options.concurrency}) x one host: {ideal:7.2f} s")
        print(f"ratio:              {total / ideal:7.2f} (goal <= 1.5)")
        times = sorted(
            json.loads(path.read_text())["seconds"] for path in (work / "fleet" / "hosts").glob("*.json")
        )
        median, longest = times[len(times) // 2], times[-1]
        print(f"each host's own time in the run: median {median:.2f} s, max {longest:.2f} s")
        print(f"{options.hosts} hosts' {cpu}")
    finally:
        lab.stop()
        simulated.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
