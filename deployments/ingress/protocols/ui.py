"""The demo page: ``/ui/`` serves ``deployments/ingress/ui/`` (one HTML, one JS and
one CSS file, no build step), which calls the native API from the browser.

Static files, not an API: the OpenAPI document leaves them out.
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "ui"


def routes() -> list[Mount]:
    """``/ui/`` and its files (Starlette redirects ``/ui`` to ``/ui/``)."""
    return [Mount("/ui", StaticFiles(directory=STATIC, html=True))]
