"""Making text from an audited system inert before it reaches a terminal or a line-based format."""

from __future__ import annotations

import re

# C0 controls (newline and tab included: one finding is one line), DEL, C1 controls, and the Unicode
# line and paragraph separators and bidirectional overrides that can forge or hide text on a screen.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(text: str) -> str:
    """`text` with every control character shown escaped (`\\x1b`, `\\n`, `\\u202e`), so a string from
    an audited system can neither drive a terminal nor start a line of its own. A backslash is left
    alone: escaped output is for reading, `details.path_b64` and the JSON keep the exact bytes."""
    return _UNSAFE.sub(_escaped, text)
