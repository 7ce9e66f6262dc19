"""Reading a repository's `config` file ourselves, so that git never reads it.

A repository's config can make git run programs (`core.fsmonitor`, `core.sshCommand` through a lazy
fetch, hooks), read files outside the repository (`fsck.skipList`, `include.path`) and reach the
network. fsaudit runs git over a scratch repository with its own config instead (sandbox.py), and
takes the few settings it needs from the tenant's file with this parser: the object format, whether
the repository is a partial clone, and how checkout converts line endings. Includes are not followed.

The syntax is git's (git-config(1) "Syntax"): `[section]`, `[section "subsection"]`, the old
`[section.subsection]`, `name = value` or a bare `name` (true), `#`/`;` comments, double quotes,
`\\n \\t \\b \\" \\\\` escapes and a backslash before the end of a line to continue it.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

MAX_CONFIG = 1 << 20
MAX_ENTRIES = 100_000
_ESCAPES = {"n": "\n", "t": "\t", "b": "\b", '"': '"', "\\": "\\"}


class ConfigDamaged(ValueError):
    """The file is not a git config git would accept: a bad section header, name or escape."""


def parse_config(data: bytes) -> List[Tuple[str, Optional[str]]]:
    """(key, value) for every variable of a git config file in file order. Keys read
    `section.subsection.name` with section and name lowercased; a bare name has the value None.
    Raises ConfigDamaged where git would refuse the file."""
    text = data[:MAX_CONFIG].decode("utf-8", "surrogateescape")
    parser = _Parser(text)
    return parser.entries()


def last_value(entries: List[Tuple[str, Optional[str]]], key: str) -> Optional[str]:
    """The value git uses for a single-valued `key` (the last one wins); a bare name reads "true"."""
    found = None
    for name, value in entries:
        if name == key:
            found = "true" if value is None else value
    return found


def is_true(value: Optional[str]) -> bool:
    return value is not None and value.strip().lower() in ("true", "yes", "on", "1")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.section = ""

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _blank(self) -> bool:
        # Not `in " \t"` alone: the empty string of the end of the text is in every string.
        char = self._peek()
        return char != "" and char in " \t"

    def entries(self) -> List[Tuple[str, Optional[str]]]:
        found: List[Tuple[str, Optional[str]]] = []
        while self.pos < len(self.text):
            char = self._peek()
            if char in " \t\r\n":
                self.pos += 1
            elif char in "#;":
                self._skip_line()
            elif char == "[":
                self.pos += 1
                self.section = self._section_header()
            elif char.isalpha():
                if not self.section:
                    raise ConfigDamaged(f"a variable before any section at offset {self.pos}")
                name = self._name()
                found.append((f"{self.section}.{name}", self._value()))
                if len(found) > MAX_ENTRIES:
                    raise ConfigDamaged(f"more than {MAX_ENTRIES:,} variables")
            else:
                raise ConfigDamaged(f"unexpected {char!r} at offset {self.pos}")
        return found

    def _skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def _section_header(self) -> str:
        start = self.pos
        while self._peek() and (self._peek().isalnum() or self._peek() in "-."):
            self.pos += 1
        name = self.text[start : self.pos].lower()
        if not name:
            raise ConfigDamaged(f"an empty section name at offset {start}")
        if self._peek() == "]":
            self.pos += 1
            return name
        if not self._blank() or "." in name:
            raise ConfigDamaged(f"a malformed section header at offset {start}")
        while self._blank():
            self.pos += 1
        if self._peek() != '"':
            raise ConfigDamaged(f"a malformed section header at offset {start}")
        self.pos += 1
        subsection = []
        while True:
            char = self._peek()
            if char in ("", "\n"):
                raise ConfigDamaged(f"an unterminated subsection at offset {start}")
            self.pos += 1
            if char == '"':
                break
            if char == "\\":
                char = self._peek()
                if char in ("", "\n"):
                    raise ConfigDamaged(f"an unterminated subsection at offset {start}")
                self.pos += 1
            subsection.append(char)
        if self._peek() != "]":
            raise ConfigDamaged(f"a malformed section header at offset {start}")
        self.pos += 1
        return f"{name}.{''.join(subsection)}"

    def _name(self) -> str:
        start = self.pos
        while self._peek() and (self._peek().isalnum() or self._peek() == "-"):
            self.pos += 1
        return self.text[start : self.pos].lower()

    def _value(self) -> Optional[str]:
        while self._blank():
            self.pos += 1
        char = self._peek()
        if char in ("", "\n", "\r", "#", ";"):
            if char in "\r\n#;" and char:
                self._skip_line()
            return None
        if char != "=":
            raise ConfigDamaged(f"a malformed variable line at offset {self.pos}")
        self.pos += 1
        value: List[str] = []
        # Whitespace outside quotes is kept only between words: trailing blanks are dropped.
        pending_space = ""
        length = 0
        quoted = False
        while True:
            char = self._peek()
            if char == "":
                break
            self.pos += 1
            if char == "\n":
                if quoted:
                    raise ConfigDamaged("a quoted value runs to the end of the line")
                break
            if not quoted and char in "#;":
                self._skip_line()
                break
            if not quoted and char in " \t\r":
                if length:
                    pending_space += " " if char != "\r" else ""
                continue
            if length and pending_space:
                value.append(pending_space)
                length += len(pending_space)
            pending_space = ""
            if char == '"':
                quoted = not quoted
                continue
            if char == "\\":
                escaped = self._peek()
                self.pos += 1
                if escaped == "\n":
                    continue
                if escaped == "\r" and self._peek() == "\n":
                    self.pos += 1
                    continue
                if escaped not in _ESCAPES:
                    raise ConfigDamaged(f"a bad escape in a value at offset {self.pos - 2}")
                value.append(_ESCAPES[escaped])
                length += 1
                continue
            value.append(char)
            length += 1
        if quoted:
            raise ConfigDamaged("a quoted value is not closed")
        return "".join(value)
