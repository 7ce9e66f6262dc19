"""Writing fsaudit's own output files: atomically when it is a file, as is when it is a device."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from typing import IO, Iterator


@contextmanager
def output_file(path: str, mode: str = "w") -> Iterator[IO]:
    """Open `path` for writing. A regular file (or a new one) is written beside and renamed into
    place, so a reader never sees half a report; an existing device or FIFO (`/dev/null`,
    `/dev/stdout`, a pipe) is written directly, never replaced."""
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    encoding = None if "b" in mode else "utf-8"
    if special:
        with open(path, mode, encoding=encoding) as handle:
            yield handle
        return
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, mode, encoding=encoding) as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
