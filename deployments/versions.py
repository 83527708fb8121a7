"""The lifecycle of a model's versions, as TF Serving reports it: each
version's state and, for one that failed to load, why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]


@dataclass(frozen=True)
class VersionStatus:
    """One version's state; ``error`` says why a version that failed to load
    ended (TF Serving reports it as state ``END`` with the error)."""

    version: int
    state: State
    error: str = ""
