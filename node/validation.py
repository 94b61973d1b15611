"""Small field validators shared by genesis, key files and transaction payloads.

Each returns ``None`` when the value is acceptable, else a short phrase saying what is
wrong; the caller adds which file or payload and which field.
"""

from __future__ import annotations

import re

from node.limits import ID_CHARS_MAX, TEXT_CHARS_MAX

_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

ROLES = ("member", "supplier", "carrier", "auditor", "operator")


def check_id(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if not 1 <= len(value) <= ID_CHARS_MAX:
        return f"must be 1..{ID_CHARS_MAX} characters"
    if not _ID_PATTERN.fullmatch(value) or value in {".", ".."}:
        return "may contain only letters, digits and . _ : - (and is not . or ..)"
    return None


def check_text(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if not 1 <= len(value) <= TEXT_CHARS_MAX:
        return f"must be 1..{TEXT_CHARS_MAX} characters"
    if _CONTROL.search(value):
        return "must not contain control characters"
    return None


def check_int(value: object, low: int, high: int) -> str | None:
    # bool is an int in Python; JSON true is not a number.
    if not isinstance(value, int) or isinstance(value, bool):
        return "must be an integer"
    if not low <= value <= high:
        return f"must be between {low} and {high}"
    return None
