"""Validation of a JSON report against the JSON Schema that ships with fsaudit, plus the rules a
schema cannot say (the overall status is the worst check status, `path_b64` is base64)."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any, List

from fsaudit.errors import FsauditError
from fsaudit.model import worst

SCHEMA_PATH = Path(__file__).resolve().parent / "report.schema.json"


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return json.load(handle)


def _schema_problems(data: Any) -> List[str]:
    try:
        import jsonschema
    except ImportError:
        raise FsauditError(
            "validating a report needs the Python module jsonschema: pip install 'fsaudit[validate]'"
        ) from None
    schema = load_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        problems.append(f"{where}: {error.message}")
    return problems


def _consistency_problems(data: dict) -> List[str]:
    problems = []
    checks = [c for c in data.get("checks", []) if isinstance(c, dict) and "status" in c]
    try:
        expected = worst(c["status"] for c in checks).value
    except ValueError:
        return problems
    if data.get("status") != expected:
        problems.append(f"status: is {data.get('status')!r} but the checks add up to {expected!r}")
    for i, check in enumerate(checks):
        for j, finding in enumerate(check.get("findings") or []):
            details = finding.get("details") if isinstance(finding, dict) else None
            encoded = details.get("path_b64") if isinstance(details, dict) else None
            if isinstance(encoded, str):
                try:
                    base64.b64decode(encoded, validate=True)
                except (binascii.Error, ValueError):
                    problems.append(f"checks/{i}/findings/{j}/details/path_b64: not base64")
    return problems


def report_problems(data: Any) -> List[str]:
    """Everything wrong with a decoded JSON report; empty when it is valid."""
    problems = _schema_problems(data)
    if not problems and isinstance(data, dict):
        problems = _consistency_problems(data)
    return problems
