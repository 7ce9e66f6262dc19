"""Progress on stderr for long checks, shown only when stderr is a terminal."""

from __future__ import annotations

import sys


class Progress:
    """A progress display a checker drives with `start`, `advance` and `stop`.

    Silent unless enabled (the CLI enables it when stderr is a terminal), so checkers call it
    unconditionally and tests see no output.
    """

    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self._bar = None
        self._task = None

    @classmethod
    def for_terminal(cls) -> Progress:
        return cls(enabled=sys.stderr.isatty())

    def start(self, label: str, total: float | None = None) -> None:
        if not self.enabled:
            return
        self.stop()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(label, total=total)

    def update(self, total: float | None = None, description: str | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=total, description=description)

    def advance(self, amount: float = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None
