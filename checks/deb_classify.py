"""What kind of damage a changed package file shows: compare its bytes with the packaged ones.

Lost writes leave typical traces: a file cut short (its size was written, its data not), 4 KiB blocks
of zeros (allocated but never written), or the whole content of the previous version (an update that
never reached the disk). Naming the trace helps the owner judge the incident.
"""

from __future__ import annotations

from typing import IO, Dict

BLOCK = 4096
_CHUNK = 256 * BLOCK
_ZERO = bytes(BLOCK)


def _read_full(handle: IO[bytes], size: int) -> bytes:
    parts = []
    while size > 0:
        chunk = handle.read(size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def compare(
    actual: IO[bytes], packaged: IO[bytes], actual_size: int, packaged_size: int
) -> Dict[str, object]:
    """Compare a damaged file with the packaged member, 4 KiB block by block.

    classification: `truncated` (the file is a proper prefix of the packaged one), `zero-filled`
    (every differing block of the file is zeros), `random` (anything else); plus counts.
    """
    differing = zero = 0
    first: int | None = None
    offset = 0
    while True:
        mine = _read_full(actual, _CHUNK)
        theirs = _read_full(packaged, _CHUNK)
        if not mine and not theirs:
            break
        for start in range(0, max(len(mine), len(theirs)), BLOCK):
            a = mine[start : start + BLOCK]
            b = theirs[start : start + BLOCK]
            if a == b or not a or (len(a) < len(b) and b.startswith(a)):
                # Equal, or beyond the end of a shorter file: not a differing block of the file.
                continue
            differing += 1
            zero += a.count(0) == len(a)
            first = offset + start if first is None else first
        offset += max(len(mine), len(theirs))
        if len(mine) < _CHUNK and len(theirs) < _CHUNK:
            break
    if actual_size < packaged_size and differing == 0:
        classification = "truncated"
    elif differing and zero == differing and actual_size == packaged_size:
        classification = "zero-filled"
    else:
        classification = "random"
    result: Dict[str, object] = {"classification": classification, "differing_blocks": differing}
    if zero:
        result["zero_blocks"] = zero
    if first is not None:
        result["first_difference"] = first
    return result


def evidence(actual: IO[bytes], size: int) -> Dict[str, object]:
    """What the file alone shows when no packaged copy is at hand: empty, or aligned zero blocks."""
    if size == 0:
        return {"classification": "empty"}
    zero = 0
    while True:
        chunk = _read_full(actual, _CHUNK)
        if not chunk:
            break
        for start in range(0, len(chunk) - BLOCK + 1, BLOCK):
            if chunk[start : start + BLOCK] == _ZERO:
                zero += 1
        if len(chunk) < _CHUNK:
            break
    result: Dict[str, object] = {"classification": "unknown"}
    if zero:
        result["zero_blocks"] = zero
    return result
