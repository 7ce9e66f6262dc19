"""The cap a checker declares is one runner feature: the first findings of each group are listed, the
rest counted, and the report says how many were not listed (and renders it)."""

from fsaudit.checker import Checker, Context
from fsaudit.model import Report, Severity
from fsaudit.report import render
from fsaudit.runner import run_check
from fsaudit.target import Target


class Noisy(Checker):
    """Yields many findings of one code in two files."""

    name = "noisy"
    codes = {"bad": "a bad thing", "note": "a note"}
    cap = 2
    cap_by = ("code", "severity", "path")

    def run(self, target):
        for number in range(5):
            yield self.finding("bad", "critical", f"bad {number}", path="/a")
        for number in range(3):
            yield self.finding("bad", "critical", f"bad {number}", path="/b")
        yield self.finding("note", "info", "a note", path="/a")


def test_the_runner_lists_up_to_the_cap_per_group_and_counts_the_rest(tmp_path):
    result = run_check(Noisy({}, Context()), Target(tmp_path))
    assert [(f.path, f.message) for f in result.findings if f.code == "bad"] == [
        ("/a", "bad 0"), ("/a", "bad 1"), ("/b", "bad 0"), ("/b", "bad 1")
    ]  # fmt: skip
    groups = {group.path: (group.count, group.last) for group in result.not_listed}
    assert groups == {"/a": (3, "bad 4"), "/b": (1, "bad 2")}
    assert result.counts() == {"critical": 8, "warning": 0, "info": 1}
    assert result.status.value == "critical"


def test_a_cap_of_zero_lists_everything(tmp_path):
    checker = Noisy({}, Context())
    checker.cap = 0
    result = run_check(checker, Target(tmp_path))
    assert len(result.findings) == 9 and result.not_listed == []


def test_renderers_say_how_many_were_not_listed(tmp_path):
    result = run_check(Noisy({}, Context()), Target(tmp_path))
    result.seconds = 1.0  # the JSON keeps milliseconds
    report = Report(host={"hostname": "vm"}, root="/", started="", finished="", checks=[result])
    text = render(report, "text")
    assert "critical bad: 8" in text
    assert "... and 3 more in /a, counted but not listed by the check; the last: bad 4" in text
    loaded = Report.from_json(report.to_json())
    assert loaded == report and loaded.checks[0].counts()[Severity.CRITICAL.value] == 8
    page = render(report, "html")
    assert "and 3 more in /a, counted but not listed by the check; the last: bad 4." in page
