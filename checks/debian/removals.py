"""Whether a packaged path that is gone was removed by something on the system, or lost by the disk.

A lost directory update makes entries vanish while the directory's inode keeps the time of its last
change that reached the disk: no later than the installations that filled it. A tool that removes
files itself (npm upgrading itself inside the nodejs package, say) changes the directory at a time
no package installation explains. So a path that is gone is a local change when its nearest
directory still there was changed after its package was installed, outside the suspect window, and
not while a package with entries in that directory was being installed (`EXPLAINED_BEFORE` seconds
before the package's `.list` was written, when dpkg unpacks, to `EXPLAINED_AFTER` after).
"""

from __future__ import annotations

import os
import stat
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

from fsaudit import outcomes
from fsaudit.target import Target
from fsaudit.window import Window

EXPLAINED_BEFORE = 300.0
EXPLAINED_AFTER = 5.0


class Removals:
    """The install times of the packages with entries in each directory, and the paths found gone,
    judged once every package was seen (a later package may explain a directory's change)."""

    def __init__(self, target: Target, window: Optional[Window]):
        self.target = target
        self.window = window
        self.installed: Dict[bytes, Set[float]] = {}
        self.gone: List[Tuple[object, bytes, Optional[float]]] = []
        self._last: Tuple[bytes, Optional[float]] = (b"", None)

    def note(self, location: bytes, install_time: Optional[float]) -> None:
        """A packaged path, installed at `install_time` (its package's `.list` time)."""
        if install_time is not None:
            self._note_directory(location[: location.rfind(b"/") + 1], install_time)

    def note_all(self, locations: Iterable[bytes], install_time: Optional[float]) -> None:
        """Packaged paths of one package (a batch of its files): each of their directories once."""
        if install_time is not None:
            for head in {location[: location.rfind(b"/") + 1] for location in locations}:
                self._note_directory(head, install_time)

    def _note_directory(self, head: bytes, install_time: float) -> None:
        # `head`: a path up to its last slash. The common case (the same directory and package as
        # the one before) costs os.path.dirname's own steps and a comparison.
        directory = head
        if directory and directory != b"/" * len(directory):
            directory = directory.rstrip(b"/")
        if (directory, install_time) != self._last:
            self._last = (directory, install_time)
            self.installed.setdefault(directory, set()).add(install_time)

    def hold(self, problem, location: bytes, install_time: Optional[float]) -> None:
        """A problem saying the packaged path `location` is gone, to be judged at the end."""
        self.gone.append((problem, location, install_time))

    def judged(self) -> Iterator[Tuple[object, Optional[Tuple[bytes, float]]]]:
        """(problem, None) for a path lost by the disk as far as can be told, (problem, (directory,
        when it changed)) for one removed on the system."""
        for problem, location, installed in self.gone:
            yield problem, self._removed(location, installed)
        self.gone = []

    def _removed(self, location: bytes, installed: Optional[float]) -> Optional[Tuple[bytes, float]]:
        directory, changed = self._nearest_directory(location)
        if directory is None or not outcomes.local_change(changed, installed, self.window):
            return None
        if self._explained(directory, changed):
            return None
        return directory, changed

    def _nearest_directory(self, location: bytes) -> Tuple[Optional[bytes], float]:
        parent = os.path.dirname(location)
        while parent and parent != b"/":
            try:
                st = self.target.lstat(parent)
            except OSError:
                parent = os.path.dirname(parent)
                continue
            if stat.S_ISDIR(st.st_mode):
                return parent, st.st_mtime
            return None, 0.0
        return None, 0.0

    def _explained(self, directory: bytes, changed: float) -> bool:
        return any(
            when - EXPLAINED_BEFORE <= changed <= when + EXPLAINED_AFTER
            for when in self.installed.get(directory, ())
        )
