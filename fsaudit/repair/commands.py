"""Running this machine's package manager for a repair, and stopping cleanly when asked to.

The package manager runs in its own session, so that a Ctrl-C in the terminal reaches only fsaudit,
which lets the transaction under way finish: a package is never left half-reinstalled. It gets a
clean environment (the operator's proxy settings aside, which downloads need) and a time limit.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

from fsaudit.repair import Stop

LOG = logging.getLogger(__name__)

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_PROXIES = ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy")
# A reinstall that takes longer than this is hung (on a slow mirror, dozens of packages take minutes).
TRANSACTION_TIMEOUT = 4 * 3600
QUERY_TIMEOUT = 600
# What the operator is told before a reinstall and before its second run (`transact`'s `saying`).
REINSTALLING = (
    "reinstalling {count} package(s) in one transaction: {command}",
    "reinstalling {count} package(s) once more, in one transaction: {command}",
)


def environment(**extra: str) -> Dict[str, str]:
    """A clean environment for a package manager: a fixed PATH, the C locale, the proxy settings."""
    env = {"PATH": SAFE_PATH, "LC_ALL": "C"}
    for name in _PROXIES:
        for variant in (name, name.upper()):
            if variant in os.environ:
                env[variant] = os.environ[variant]
    env.update(extra)
    return env


def run(command: List[str], env: Dict[str, str], timeout: float = TRANSACTION_TIMEOUT) -> Tuple[int, str]:
    """Run `command` to its end: (exit status, negative for a signal; its output). 127: it could not
    start; 124: it ran out of time and was killed."""
    LOG.debug("running %s", shlex.join(command))
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
        )
    except OSError as error:
        return 127, f"cannot run {command[0]}: {error.strerror}"
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return 124, f"{command[0]} did not finish within {timeout:.0f} s and was killed\n{output}"
    LOG.debug("%s exited with %s:\n%s", command[0], process.returncode, output)
    return process.returncode, output


def transact(
    command: Callable[[List[Any]], List[str]],
    steps: Sequence[Any],
    still_to_do: Callable[[Any], bool],
    env: Dict[str, str],
    say: Callable[[str], None],
    stop: Stop,
    saying: Tuple[str, str] = REINSTALLING,
) -> Tuple[List[Any], int, str, List[str]]:
    """Run the transaction `command(steps)`, then once more over the steps `still_to_do` after it
    (what failed may succeed once the rest is whole), unless the operator asked to stop meanwhile.
    `saying` is what the operator is told before each run ({count} steps, the {command}).
    (the steps still to do, the last exit status, its output, its command)."""
    pending = list(steps)
    status, output, ran = 0, "", []
    for words in saying:
        ran = command(pending)
        say(words.format(count=len(pending), command=shlex.join(ran)))
        status, output = run(ran, env)
        pending = [step for step in pending if still_to_do(step)]
        if not pending or stop.requested:
            break
    return pending, status, output, ran


def tail(output: str, lines: int = 3) -> str:
    """The last lines of a program's output, on one line."""
    return " ".join(line.strip() for line in output.strip().splitlines()[-lines:])


@contextmanager
def interruptible(stop: Stop) -> Iterator[Stop]:
    """Turn SIGINT and SIGTERM into `stop.requested` for the duration (the package manager, in its
    own session, never sees them)."""
    previous = {}

    def handle(signum, frame):
        stop.requested = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handle)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
