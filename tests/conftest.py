"""Shared test helpers: run the real `fsaudit` command and read its JSON report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class Run:
    """The outcome of one `fsaudit` command."""

    def __init__(self, completed: subprocess.CompletedProcess):
        self.code = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr
        self._report = None

    @property
    def report(self) -> dict:
        # Parsed and validated once: check()/codes()/findings() read it again and again.
        if self._report is None:
            self._report = json.loads(self.stdout)
            assert_valid_report(self._report)
        return self._report

    def check(self, name: str) -> dict:
        for check in self.report["checks"]:
            if check["name"] == name:
                return check
        raise AssertionError(f"no check {name} in the report: {self.stdout[:2000]}")

    def codes(self, name: str) -> set:
        return {f["code"] for f in self.check(name)["findings"]}

    def findings(self, name: str, code: str = None) -> list:
        return [f for f in self.check(name)["findings"] if code is None or f["code"] == code]

    def by_path(self, name: str) -> dict:
        """The findings of check `name`, by their path."""
        return {f["path"]: f for f in self.check(name)["findings"]}


def assert_valid_report(data) -> None:
    """Every JSON report the suite reads must satisfy the shipped schema (`fsaudit report --validate`).
    Other JSON documents (the fleet's index and view) declare another `format` and are left alone."""
    from fsaudit.schema import report_problems

    declared = str(data.get("format", "")) if isinstance(data, dict) else ""
    if declared.startswith("fsaudit-") and not declared.startswith("fsaudit-report/"):
        return
    problems = report_problems(data)
    assert not problems, "the report does not follow its JSON Schema:\n" + "\n".join(problems[:20])


def interruptible() -> None:
    """`preexec_fn` of a child the test sends SIGINT: Ctrl-C's default meaning. A shell that starts
    the test run in the background (`.ci/run &`) leaves SIGINT ignored, and Python then keeps it
    ignored in every child, as a background job should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fsaudit(*args, env=None, timeout=600, user=None, cwd=None) -> Run:
    """Run `python -m fsaudit ARGS` and capture everything."""
    command = [sys.executable, "-m", "fsaudit", *map(str, args)]
    if user:
        command = ["runuser", "-u", user, "--", *command]
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    completed = subprocess.run(
        command, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd
    )
    run = Run(completed)
    _validate_json_output([str(a) for a in args], run, cwd)
    return run


def fsaudit_measured(*args, timeout: float = 300, env=None) -> tuple:
    """(Run, Cost) of `python -m fsaudit ARGS`: its outcome, wall time and its own peak memory."""
    from fixtures.measured import run_measured

    completed, cost = run_measured([sys.executable, "-m", "fsaudit", *args], timeout=timeout, env=env)
    run = Run(completed)
    _validate_json_output([str(a) for a in args], run, None)
    return run, cost


def _validate_json_output(args: list, run: Run, cwd) -> None:
    """A JSON report the command wrote, to stdout or to --output, must follow the schema."""
    if "json" not in [b for a, b in zip(args, args[1:]) if a == "--format"]:
        return
    output = next((b for a, b in zip(args, args[1:]) if a == "--output"), None)
    if output is None:
        if run.stdout.strip():
            run.report  # noqa: B018 - parsing it validates it
        return
    path = Path(cwd or ".", output)
    if path.is_file():
        assert_valid_report(json.loads(path.read_text(encoding="utf-8")))


def audit_root(check: str, root, *args) -> Run:
    """`fsaudit audit --root ROOT --check CHECK --format json ARGS...`."""
    return fsaudit("audit", "--root", root, "--check", check, "--format", "json", *args)


def copy_root(pristine, tmp_path) -> Path:
    """A copy of a root built once per module, for one test to damage (`cp -a` keeps owners, modes
    and times, which the checkers compare)."""
    copy = tmp_path / "root"
    subprocess.run(["cp", "-a", str(pristine), str(copy)], check=True)
    return copy


@contextmanager
def world_readable_directory(prefix: str):
    """A directory under /tmp that other users may enter (tests run fsaudit as them too), removed
    afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def require_module(name: str, install: str):
    """The Python module the test needs; fail with the install hint when it is missing (a test tool
    the suite needs is never a reason to skip: tests/run installs it)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"the Python module {name} is missing: {install} (tests/run installs it)", pytrace=False)


def require_program(name: str, package: str) -> str:
    """The path of a system program the test needs; fail with the install hint when it is missing."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if not path:
        pytest.fail(f"{name} is missing: apt-get install {package} (tests/run installs it)")
    return path


@pytest.fixture
def run_fsaudit():
    return fsaudit
