"""Progress on stderr for long checks, shown only when stderr is a terminal.

Labels often name things from the audited system (a storage file, a repository): they are shown as
plain text, control characters escaped (`fsaudit.escape.inert`) and no rich markup interpreted, so
a name like `[blink]x[/bad]` is shown as it is, never drives the terminal, and never breaks the
audit. A failure of the display itself turns the display off; the audit goes on.
"""

from __future__ import annotations

import logging
import sys
import time

from fsaudit.escape import inert

LOG = logging.getLogger(__name__)


class Progress:
    """A progress display a checker drives with `start`, `advance` and `stop`; the reading engine
    adds the bytes it reads (`add_bytes`), shown as bytes per second.

    Silent unless enabled (the CLI enables it when stderr is a terminal), so checkers call it
    unconditionally and tests see no output.
    """

    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self._bar = None
        self._task = None
        self.bytes = 0
        self._started = 0.0

    @classmethod
    def for_terminal(cls) -> Progress:
        return cls(enabled=sys.stderr.isatty())

    def start(self, label: str, total: float | None = None) -> None:
        if not self.enabled:
            return
        self.stop()
        self.bytes = 0
        self._started = time.monotonic()
        self._guarded(self._start, label, total)

    def _start(self, label: str, total: float | None) -> None:
        from rich.console import Console
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(*_columns(self), console=Console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task(inert(str(label)), total=total)

    def update(self, total: float | None = None, description: str | None = None) -> None:
        if self._bar is not None:
            text = None if description is None else inert(str(description))
            self._guarded(self._bar.update, self._task, total=total, description=text)

    def advance(self, amount: float = 1) -> None:
        if self._bar is not None:
            self._guarded(self._bar.advance, self._task, amount)

    def add_bytes(self, amount: int) -> None:
        """Bytes read (counted even when nothing is shown: cheap, called once per file)."""
        self.bytes += amount

    def bytes_per_second(self) -> float:
        elapsed = time.monotonic() - self._started
        return self.bytes / elapsed if elapsed > 0 else 0.0

    def stop(self) -> None:
        bar, self._bar, self._task = self._bar, None, None
        if bar is not None:
            try:
                bar.stop()
            except Exception:  # a terminal that went away: nothing left to show
                LOG.debug("progress display failed to stop", exc_info=True)

    def _guarded(self, call, *args, **kwargs) -> None:
        try:
            call(*args, **kwargs)
        except Exception:
            LOG.debug("progress display failed; it is turned off", exc_info=True)
            self.enabled = False
            self.stop()


def _columns(progress: Progress) -> tuple:
    """The display's columns (rich is imported only when a display is shown: start-up stays quick)."""
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Speed(ProgressColumn):
        """Bytes per second the engine read since the task started (blank when it read none)."""

        def render(self, task):
            rate = progress.bytes_per_second()
            return Text(f"{_size(rate)}/s" if progress.bytes else "", style="progress.data.speed")

    class Remaining(ProgressColumn):
        """The time left at the pace so far, when the task knows its total."""

        def render(self, task):
            if task.total is None or not task.completed or task.finished:
                return Text("")
            left = (task.elapsed or 0.0) * (task.total - task.completed) / task.completed
            minutes, seconds = divmod(int(left), 60)
            hours, minutes = divmod(minutes, 60)
            text = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
            return Text(f"ETA {text}", style="progress.remaining")

    # The description is shown as plain text: no markup from a path is ever interpreted.
    return (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        Speed(),
        TimeElapsedColumn(),
        Remaining(),
    )


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
