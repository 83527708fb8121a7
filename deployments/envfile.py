"""The ``KEY=VALUE`` environment files the project keeps (``configs/server.env``)."""

from __future__ import annotations

from pathlib import Path


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines, as a shell sources them (a value may be quoted);
    blank lines and ``#`` comments are skipped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value.strip('"') for key, value in pairs}
