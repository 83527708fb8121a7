"""The lifecycle of a model's versions, as TF Serving reports it (each
version's state and, for one that failed to load, why), and the names that
route requests to versions (labels, a canary split)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    model_validator,
)

State = Literal["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]


@dataclass(frozen=True)
class VersionStatus:
    """One version's state; ``error`` says why a version that failed to load
    ended (TF Serving reports it as state ``END`` with the error)."""

    version: int
    state: State
    error: str = ""


def _not_a_number(label: str) -> str:
    if label.isdecimal():
        raise ValueError(f"label {label!r} is a number: it would read as a version")
    return label


Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$"), AfterValidator(_not_a_number)]


class Routing(BaseModel):
    """Names for a model's versions and how requests that name none are split
    (the Preprocessor's ``user_config``, so both change live).

    ``labels``: label → version. ``traffic``: label → weight; when set, a
    request that names no version goes to a label's version with probability
    weight / total (a canary), else to the highest version.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: dict[Label, PositiveInt] = Field(default_factory=dict)
    traffic: dict[str, PositiveInt] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_labels(self) -> Routing:
        if unknown := sorted(set(self.traffic) - set(self.labels)):
            raise ValueError(f"traffic names labels that are not defined: {unknown}")
        return self

    def split(self) -> int | None:
        """The version the traffic split sends the next request to, if any."""
        if not self.traffic:
            return None
        (label,) = random.choices(list(self.traffic), weights=list(self.traffic.values()))
        return self.labels[label]
