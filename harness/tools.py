"""scikit-learn and matplotlib (the digits, the model builds, the benchmark's
plot) are installed beside the venv, not in it (the Makefile's TOOLS): Keras
imports both in every process that imports TensorFlow whenever they can be
found, 1.5 s of CPU per model replica here. Only the processes that use them
look there, so a cluster's workers import what a user's install has."""

from __future__ import annotations

import os
import sys
from pathlib import Path

TOOLS = Path(sys.prefix) / "tools"


def use_tools() -> None:
    """Put the tools on this process's path; its children do not inherit it."""
    if str(TOOLS) not in sys.path:
        sys.path.append(str(TOOLS))


def tools_env() -> dict[str, str]:
    """The environment of a child process that uses the tools (a model build)."""
    path = [str(TOOLS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
