"""The Checker base class: what every checker declares and the helpers it gets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, Callable, Dict, Iterable, Iterator, Sequence, Set, Tuple, Union

from fsaudit.model import Finding, Severity
from fsaudit.problems import Count, Incomplete, Problem, Stat
from fsaudit.progress import Progress
from fsaudit.window import Window


class Skip(Exception):
    """Raised by `applies()` or early in `run()`: the checker does not apply here, and why."""


class OptionError(ValueError):
    """An option value that cannot be used; raised before any checker runs."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"expected true or false, got {raw!r}")


@dataclass(frozen=True)
class Option:
    """One setting of a checker, from `--set CHECK.KEY=VALUE` or `[checks.CHECK]` in the config.

    `kind` is str, int, float or bool. `multiple` options collect a list: repeated `--set`, a TOML
    array, or a comma-separated value, unless `split` is False: DNs, URLs and connection strings
    hold commas of their own (`dc=example,dc=org`, `host=a,b`), so their options take one value per
    `--set` or array item, never split. `flag` (of a checker marked `self_check`): `fsaudit self-check`
    offers the option as `--FLAG FILE`, a file that must exist (e.g. the baseline's `file` as
    `--baseline`), so the core names no checker's option.
    """

    name: str
    help: str
    kind: Callable = str
    default: Any = None
    multiple: bool = False
    choices: Tuple[str, ...] = ()
    split: bool = True
    flag: str = ""

    def parse_one(self, raw: Any) -> Any:
        if isinstance(raw, (list, tuple, dict)):
            raise OptionError(f"expected one {self.kind.__name__}, got {raw!r}")
        if self.kind is bool:
            value = _parse_bool(raw)
        else:
            try:
                value = self.kind(raw)
            except (TypeError, ValueError) as error:
                raise OptionError(f"expected {self.kind.__name__}, got {raw!r}") from error
        if self.choices and value not in self.choices:
            raise OptionError(f"expected one of {', '.join(self.choices)}, got {raw!r}")
        return value

    def parse(self, raws: Sequence[Any]) -> Any:
        """The value from every raw value given for this option, in order (later wins)."""
        if not self.multiple:
            return self.parse_one(raws[-1])
        values = []
        for raw in raws:
            if isinstance(raw, (list, tuple)):
                items = raw
            else:
                items = str(raw).split(",") if self.split else [raw]
            values.extend(self.parse_one(item.strip() if isinstance(item, str) else item) for item in items)
        return [v for v in values if v != ""]

    def default_value(self) -> Any:
        if self.multiple:
            return list(self.default or ())
        return self.default


class Settings(dict):
    """A checker's settings, parsed from the raw option values once (`Checker.validate_options`); a
    checker given a `Settings` takes it as it is, so no value is parsed (or split) a second time."""


@dataclass
class Context:
    """What the audit as a whole tells each checker, worked out once by the CLI (fsaudit.settings): the
    audited system's time zone, the window placed in it, parallelism, progress; and the paths the
    checkers verified."""

    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Reads in flight, set by the disk (network storage: deep), not by the cores (`--io-depth`).
    io_depth: int = 32
    window: Window | None = None
    # The audited system's local time zone (its own /etc/localtime); None: not known (UTC is used).
    timezone: tzinfo | None = None
    progress: Progress = field(default_factory=Progress)
    # Paths (bytes, inside the target) that a checker verified against an independent expectation
    # (a package manifest, a RECORD file, a baseline), so `window` can say which at-risk files no
    # checker could verify.
    verified: Set[bytes] = field(default_factory=set)

    def __post_init__(self):
        self.jobs = max(1, int(self.jobs))
        self.io_depth = max(1, int(self.io_depth))


class Checker:
    """Base class of every checker. Subclasses set the class attributes and write `run()`.

    - `name`: the short name used by `--check`, `--set NAME.KEY=...` and the report.
    - The docstring's first line: what the checker is for (shown by `fsaudit checks`).
    - `options`: the `Option`s it accepts.
    - `codes`: every finding code it may yield, each with its meaning (the README lists them all).
    - `requires`: importable modules it needs; when one is missing the check is skipped with
      `pip install fsaudit[<extra>]` as the hint.
    - `self_check`: fits a customer's unprivileged `fsaudit self-check PATH...`; such a checker has
      a `paths` option, which self-check sets to the customer's paths.
    - `order`: checkers run by ascending order, then name; a checker that uses what others found
      (e.g. `window`, which reads `context.verified`) sets a higher one.
    - `covers`: what it checks, in a customer's words ("system files (Debian packages)"); the
      report carries it, so no renderer needs to know checkers by name.
    - `category`: its column in the fleet view: os-files, databases, applications, logs, time-window.
    - `repairer`: `"module:Class"` of the `fsaudit.repair.Repairer` that restores what this checker
      finds (loaded only by `fsaudit repair`), or "" when nothing can be restored automatically.
    - `present()`: whether what it checks is on this system at all, even when it cannot be checked
      here; that tells "nothing of this kind here" (skipped) from "not checked" (unknown).
    - How it reports: `run()` yields Findings (`self.finding`); helper modules return or yield plain
      problems (fsaudit.problems), which `self.report(items)` turns into Findings and stats.
    - `cap`: findings listed per group at most (0: all); the runner counts the rest, and the report
      says how many of each group were not listed (`CheckResult.not_listed`). A group is the
      finding fields named in `cap_by` (code and severity; add "path" for per-file caps, "subject"
      for per-subject ones). A checker whose cap is an option sets `self.cap` from its settings.
    """

    name: str = ""
    options: Tuple[Option, ...] = ()
    codes: Dict[str, str] = {}
    requires: Tuple[str, ...] = ()
    extra: str = ""
    order: int = 50
    self_check: bool = False
    covers: str = ""
    category: str = ""
    repairer: str = ""
    cap: int = 0
    cap_by: Tuple[str, ...] = ("code", "severity")

    def __init__(self, options: Dict[str, Any] | None = None, context: Context | None = None):
        """`options`: the `Settings` the CLI validated, or raw values (then validated here)."""
        if isinstance(options, Settings):
            self.settings = options
        else:
            self.settings = self.validate_options(options or {})
        self.context = context or Context()
        self.stats: Dict[str, Any] = {}
        self.incomplete_reasons: list = []

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def validate_options(cls, raw: Dict[str, Any]) -> Settings:
        """Settings for every option from `raw`: option name -> the raw values given, in order
        (strings from `--set`, typed values from TOML; a lone value counts as a list of one)."""
        known = {option.name: option for option in cls.options}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            choices = ", ".join(sorted(known)) or "none"
            raise OptionError(f"{cls.name}: unknown option {unknown[0]!r} (options: {choices})")
        settings = Settings()
        for name, option in known.items():
            values = raw.get(name)
            if values is None or values == []:
                settings[name] = option.default_value()
                continue
            try:
                settings[name] = option.parse(values if isinstance(values, list) else [values])
            except OptionError as error:
                raise OptionError(f"{cls.name}.{name}: {error}") from None
        return settings

    def applies(self, target) -> bool:
        """Cheap test: does this checker have anything to check on `target`? Raise Skip for a reason."""
        return True

    def present(self, target) -> str:
        """What of this checker's subject is on `target`, in a few words ("a PostgreSQL cluster in
        /var/lib/postgresql/15/main"), or "" when there is none. Asked when the check cannot run
        (a module in `requires` is missing, or `applies()` said no): when the subject is here the
        check is `unknown`, not `skipped`, so that an unchecked database never reads as fine. Must be
        cheap and must work without the modules in `requires`."""
        return ""

    def run(self, target) -> Iterator[Finding]:
        """Check `target`, yielding Findings as they are found."""
        raise NotImplementedError

    def finding(
        self,
        code: str,
        severity: Union[Severity, str],
        message: str,
        path: Union[str, bytes, None] = None,
        subject: str | None = None,
        details: Dict[str, Any] | None = None,
        advice: str = "",
    ) -> Finding:
        """A Finding of this checker; `code` must be one it declares in `codes`."""
        if code not in self.codes:
            raise ValueError(f"checker {self.name} yielded undeclared finding code {code!r}")
        # Finding converts the severity and copies a dict of details (cleaning makes a new one).
        if type(details) is not dict:
            details = dict(details or {})
        return Finding(self.name, code, severity, message, path, subject, details, advice)

    def report(self, items: Iterable[Any]) -> Iterator[Finding]:
        """The Findings of what a helper found: its Problems become Findings of this checker, its
        Counts, Stats and Incompletes go to the check's stats and reasons (fsaudit.problems)."""
        for item in items:
            if isinstance(item, Problem):
                yield self.finding(
                    item.code,
                    item.severity,
                    item.message,
                    path=item.path,
                    subject=item.subject,
                    details=item.details,
                    advice=item.advice or "",
                )
            elif isinstance(item, Count):
                self.count(item.key, item.amount)
            elif isinstance(item, Stat):
                self.stats[item.key] = item.value
            elif isinstance(item, Incomplete):
                self.incomplete(item.reason)
            else:
                raise TypeError(f"{self.name}: a helper reported {type(item).__name__}, not a problem")

    def count(self, key: str, amount: int = 1) -> None:
        """Add to one of the counters reported in the check's `stats`."""
        self.stats[key] = self.stats.get(key, 0) + amount

    def incomplete(self, reason: str) -> None:
        """Say the check could not verify everything; the check's status becomes unknown
        (critical still wins) and the reason is reported."""
        if reason not in self.incomplete_reasons:
            self.incomplete_reasons.append(reason)
