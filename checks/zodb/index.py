"""Data.fs.index against the walk of Data.fs: which entries disagree, which objects it lacks."""

from __future__ import annotations

from typing import Dict, List

from fsaudit_checks.zodb.walk import Walk

# Oids named in one finding's details.
MAX_LISTED = 20


def compare_index(walk: Walk, size: int, covered: int, buckets) -> dict:
    """Counts (and a few oids) of index entries that disagree with the walk."""
    dense, sparse = walk.current.dense, walk.current.sparse
    dense_len = len(dense)
    seen = bytearray()
    entries = exact = 0
    counts = {"wrong": 0, "beyond": 0}
    examples: Dict[str, List[str]] = {"wrong_oids": [], "beyond_oids": [], "unindexed_oids": []}
    for high, keys, positions in buckets:
        entries += len(keys)
        last = (high | keys[-1]) >> 3 if keys else 0
        if last < (1 << 27) and last >= len(seen):
            seen.extend(bytes(last + 1 - len(seen) + len(seen) // 2))
        for number, low in enumerate(keys):
            oid = high | low
            position = (positions[2 * number] << 32) | positions[2 * number + 1]
            if oid >> 3 < len(seen):
                seen[oid >> 3] |= 1 << (oid & 7)
            value = dense[oid] if oid < dense_len else sparse.get(oid, 0)
            found = (value >> 1) - 1
            if found == position:
                exact += 1
                continue
            if position >= size:
                kind = "beyond"
            elif found > position and found >= covered:
                continue
            else:
                kind = "wrong"
            counts[kind] += 1
            if len(examples[kind + "_oids"]) < MAX_LISTED:
                examples[kind + "_oids"].append(hex(oid))
    # Every object whose current record lies before `covered` must be in the index with it.
    if covered >= walk.end_pos:
        before = walk.current.count
    else:
        before = sum(1 for _oid, position, _deleted in walk.current.items() if position < covered)
    unindexed = max(before - exact, 0)
    if unindexed:
        for oid, position, _deleted in walk.current.items():
            if position >= covered or (oid >> 3 < len(seen) and seen[oid >> 3] & (1 << (oid & 7))):
                continue
            examples["unindexed_oids"].append(hex(oid))
            if len(examples["unindexed_oids"]) >= MAX_LISTED:
                break
    return {"entries": entries, **counts, "unindexed": unindexed, **examples}
