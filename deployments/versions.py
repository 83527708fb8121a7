"""The lifecycle of a model's versions, as TF Serving reports it: each
version's state and, for one that failed to load, why."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

State = Literal["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]


@dataclass(frozen=True)
class VersionStatus:
    """One version's state; ``error`` says why a version that failed to load
    ended (TF Serving reports it as state ``END`` with the error)."""

    version: int
    state: State
    error: str = ""


@dataclass(frozen=True)
class Routing:
    """Names for a model's versions and how requests that name none are split.

    ``labels``: label → version. ``traffic``: label → weight; when set, a
    request that names no version goes to a label's version with probability
    weight / total (a canary), else to the highest version.
    """

    labels: Mapping[str, int] = field(default_factory=dict)
    traffic: Mapping[str, int] = field(default_factory=dict)

    def split(self) -> int | None:
        """The version the traffic split sends the next request to, if any."""
        if not self.traffic:
            return None
        (label,) = random.choices(list(self.traffic), weights=list(self.traffic.values()))
        return self.labels[label]
