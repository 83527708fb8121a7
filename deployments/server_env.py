"""``configs/server.env``: the environment of the Ray processes that serve.

``make serve`` passes it to ``serve run``; the tests and the benchmark give it
to the clusters they start, so all three serve the same way.
"""

from __future__ import annotations

from pathlib import Path


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines and ``#`` comments are skipped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
