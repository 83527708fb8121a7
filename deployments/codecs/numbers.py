"""Counts written as text by clients (versions, lengths), read safely: Python
refuses to convert integers of over 4,300 digits, and none of these needs
more than 18 (which any int64 holds), except a version number, which is any
int64 from 0 up (19 digits)."""

from __future__ import annotations

_MAX_DIGITS = 18

# The highest version TF Serving reads (an int64).
MAX_VERSION = 2**63 - 1


def decimal_count(text: str) -> int | None:
    """``text`` as a non-negative integer, or ``None`` when it is not ASCII
    digits or too long to be a count."""
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_DIGITS:
        return None
    return int(text)


def version_number(text: str) -> int | None:
    """``text`` as a model version, as TF Serving reads one (a directory
    name, a version in a request): ASCII digits, leading zeros allowed
    (``"00000123"`` is 123), from 0 to ``MAX_VERSION``; else ``None``
    (signs, spaces, other scripts' digits, more than an int64 holds)."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(MAX_VERSION)):
        return None
    number = int(digits)
    return number if number <= MAX_VERSION else None
