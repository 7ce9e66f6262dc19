"""`fsaudit.bounded`, the readers every package file from an audited system goes through (cached
.deb, .rpm, pacman, apk and Portage packages): the zstd program runs with a fixed command line and a
clean environment whatever the bytes are, a damaged or hostile stream is the caller's error and
leaves no process behind, and a decompression bomb or a stream cut short ends at its bound."""

from __future__ import annotations

import io
import subprocess

import pytest

from fsaudit import bounded
from tests.conftest import require_program


class Refused(Exception):
    """The error type a caller hands to the readers."""


def _zstd(data: bytes) -> bytes:
    return subprocess.run(
        [require_program("zstd", "zstd"), "-q", "-c"], input=data, capture_output=True, check=True
    ).stdout


@pytest.fixture
def launched(monkeypatch):
    """Every program the readers start: (argv, env, the process)."""
    started = []
    real = subprocess.Popen

    def recording(args, **options):
        process = real(args, **options)
        started.append((list(args), options.get("env"), process))
        return process

    monkeypatch.setattr(bounded.subprocess, "Popen", recording)
    return started


def _read_all(raw: bytes) -> bytes:
    with bounded.zstd_stream(io.BytesIO(raw), Refused, "a zstd payload") as stream:
        return stream.read()


@pytest.mark.parametrize(
    "hostile",
    [
        b"--rm --force -o /etc/passwd\n",  # option-like bytes: input, never arguments
        b"\x28\xb5\x2f\xfd" + b"\xff" * 4096,  # a zstd magic followed by garbage
        b"",
    ],
    ids=["options", "garbage-after-magic", "empty"],
)
def test_hostile_bytes_are_an_error_of_the_caller_with_a_fixed_command_line(launched, monkeypatch, hostile):
    monkeypatch.setenv("ZSTD_NBTHREADS", "64")
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/hostile.so")
    if hostile:
        with pytest.raises(Refused, match="damaged or cut short"):
            _read_all(hostile)
    else:
        # zstd reads an empty input as no frame at all: nothing, or its refusal; never a hang.
        try:
            assert _read_all(hostile) == b""
        except Refused:
            pass
    ((argv, env, process),) = launched
    assert argv[1:] == ["-dcq"], "nothing from the stream becomes an argument"
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}, (
        "the audit's environment is not passed"
    )
    assert process.poll() is not None, "the zstd process is reaped when the reader is left"


def test_a_zstd_stream_cut_short_is_an_error_not_an_early_end(launched):
    packed = _zstd(bytes(range(256)) * 8192)
    with pytest.raises(Refused):
        _read_all(packed[: len(packed) // 2])
    assert _read_all(packed) == bytes(range(256)) * 8192
    assert all(process.poll() is not None for _, _, process in launched)


def test_a_zstd_bomb_ends_at_the_cap_without_decompressing_it_all(launched, monkeypatch):
    monkeypatch.setattr(bounded, "MIN_DECOMPRESSED", 1 << 20)
    packed = _zstd(bytes(256 << 20))  # 256 MiB of zeros in a few KiB
    limit = bounded.decompressed_limit(len(packed))
    assert limit < 64 << 20
    read = 0
    refused = pytest.raises(Refused, match="decompression bomb")
    with refused, bounded.zstd_stream(io.BytesIO(packed), Refused, "it") as stream:
        capped = bounded.Capped(stream, limit, Refused, "the payload")
        while capped.read(1 << 20):
            read += 1 << 20
    assert read <= limit
    assert all(process.poll() is not None for _, _, process in launched), "the zstd process is killed"


def test_a_window_never_reads_past_its_length_and_a_short_stream_is_refused():
    stream = io.BytesIO(b"a" * 10 + b"NEXT MEMBER")
    window = bounded.Window(stream, 10, lambda: Refused("cut short"))
    assert window.read() == b"a" * 10
    assert stream.read() == b"NEXT MEMBER"
    short = bounded.Window(io.BytesIO(b"abc"), 10, lambda: Refused("cut short"))
    with pytest.raises(Refused, match="cut short"):
        short.read()
