"""A short, deterministic fuzz run of every parser of untrusted bytes (issue 13, "Tests and proof"):
random bytes and real artefacts with bytes flipped, cut, repeated or inserted. Each parser returns
or raises only the error its callers handle, and never hangs. `benchmarks/fuzz.py` runs the same
targets for longer, with random seeds, in a memory-capped process."""

from __future__ import annotations

import signal

import pytest
from hypothesis import HealthCheck, given, settings

from tests.security.fuzz_targets import TARGETS

# A few seconds per target here; the long run explores further.
EXAMPLES = {"zodb-storage": 500, "rpm-bdb": 500, "log-decompression": 500, "content-formats": 500}
SECONDS_PER_EXAMPLE = 10


class Hang(Exception):
    """One input kept a parser busy far longer than any input of this size should."""


def _alarm(signum, frame):
    raise Hang(f"a parser ran longer than {SECONDS_PER_EXAMPLE} s on one input")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parser_never_raises_what_its_callers_do_not_handle(name):
    target = TARGETS[name]

    @settings(
        max_examples=EXAMPLES.get(name, 1000),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(target.inputs())
    def fuzz(data: bytes) -> None:
        signal.alarm(SECONDS_PER_EXAMPLE)
        try:
            target.run(data)
        finally:
            signal.alarm(0)

    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        fuzz()
    finally:
        signal.signal(signal.SIGALRM, previous)
