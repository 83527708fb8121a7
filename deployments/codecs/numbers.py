"""Counts written as text by clients (versions, lengths), read safely: Python
refuses to convert integers of over 4,300 digits, and none of these needs
more than 18 (which any int64 holds)."""

from __future__ import annotations

_MAX_DIGITS = 18


def decimal_count(text: str) -> int | None:
    """``text`` as a non-negative integer, or ``None`` when it is not ASCII
    digits or too long to be a count."""
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_DIGITS:
        return None
    return int(text)
