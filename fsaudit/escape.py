"""Making text from an audited system inert before it reaches a terminal or a line-based format."""

from __future__ import annotations

import re

# C0 controls (newline and tab included: one finding is one line), DEL, C1 controls, and the Unicode
# line and paragraph separators and bidirectional overrides that can forge or hide text on a screen.
_BEYOND_C0 = "\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
# In JSON text the encoders already escape C0 controls inside strings, and the newlines left are
# the text's own (between values, when indented).
_UNSAFE_IN_JSON = re.compile(f"[{_BEYOND_C0}]")


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(text: str) -> str:
    """`text` with every control character shown escaped (`\\x1b`, `\\n`, `\\u202e`), so a string from
    an audited system can neither drive a terminal nor start a line of its own. A backslash is left
    alone: escaped output is for reading, `details.path_b64` and the JSON keep the exact bytes."""
    return _UNSAFE.sub(_escaped, text)


def json_inert(text: str) -> str:
    """JSON text with the other characters `inert` escapes written as JSON escapes (`\\u009b`): the
    same values when parsed (they occur only inside strings), and nothing raw for a terminal the
    JSON is printed to. The encoders leave them raw when they write non-ASCII text as it is."""
    if text.isascii() and "\x7f" not in text:
        return text  # the usual report: nothing to look for (a str knows it is ASCII)
    return _UNSAFE_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
