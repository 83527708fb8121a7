"""What a model's arguments name on disk or in object storage: the I/O
behind the declarations of ``deployments.config``.

:func:`locate` runs when the app is built (``build_app``), after the YAML is
validated: it refuses what only the file system can tell is wrong (as
validation would, a ``ValidationError`` naming the model) and makes local
paths absolute, since replicas may run in other directories. The rest runs
where the files are read: the versions a policy picks (:func:`version_dirs`,
fetched first from object storage), the labels file (:func:`labels_file`),
and what ``ship: true`` packs (:func:`shipped_files`) and where a replica
finds it (:func:`moved_to`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails

from deployments.config import All, AppArgs, ModelArgs
from deployments.storage import Cache, VersionSource, fetch_file, is_url, open_source


def locate(config: AppArgs) -> AppArgs:
    """``config`` with its models checked against the file system (a
    ``ValidationError`` as :class:`AppArgs` raises, each at ``models.<i>``)
    and their local paths made absolute."""
    _refuse(type(config).__name__, [(("models", i), model)
                                    for i, model in enumerate(config.models)], hide_input=True)
    return config.model_copy(update={"models": tuple(resolved(m) for m in config.models)})


def check(model: ModelArgs) -> ModelArgs:
    """One model checked against the file system, as :func:`locate` checks it
    (a ``ValidationError`` as :class:`ModelArgs` raises)."""
    _refuse(type(model).__name__, [((), model)])
    return model


def resolved(model: ModelArgs) -> ModelArgs:
    """Local paths made absolute when the app is built: replicas may run
    in other directories."""
    update = {k: str(Path(v).resolve()) for k, v in
              (("path", model.path), ("labels_path", model.labels_path))
              if v is not None and not is_url(v)}
    return model.model_copy(update=update)


def source(model: ModelArgs) -> VersionSource:
    """Where the versions are listed and read from."""
    return open_source(model.path, _cache(model))


def version_dirs(model: ModelArgs) -> dict[int, Path]:
    """The versions the policy picks among those present now, each a
    local directory (fetched first from object storage)."""
    versions = source(model)
    picked = model.version_policy.select(versions.listing())
    return {v: versions.local_dir(v) for v in sorted(picked)}


def labels_file(model: ModelArgs) -> Path | None:
    """The labels file on this machine (fetched first from object
    storage), if one is configured."""
    if model.labels_path and is_url(model.labels_path):
        return fetch_file(model.labels_path, _cache(model))
    return Path(model.labels_path) if model.labels_path else None


def shipped_files(model: ModelArgs) -> list[Path]:
    """What ``ship: true`` packs: each served version and the labels file."""
    return [*version_dirs(model).values(), *filter(None, [labels_file(model)])]


def moved_to(model: ModelArgs, base: Path) -> ModelArgs:
    """These (resolved) arguments with ``path`` moved to ``base``, as a
    replica sees a shipped model: every version shipped, read once."""
    labels = model.labels_path and str(base / Path(model.labels_path).relative_to(model.path))
    return model.model_copy(update={"path": str(base), "labels_path": labels,
                                    "poll_interval_s": 0.0, "version_policy": All()})


def _cache(model: ModelArgs) -> Cache:
    return Cache(max_bytes=model.storage.cache_max_bytes, verify_md5=model.storage.verify_md5)


def _mistake(model: ModelArgs) -> str | None:
    """What is wrong with ``model`` that only the file system tells."""
    labels = model.labels_path
    if model.ship and labels and not Path(labels).resolve().is_relative_to(
            Path(model.path).resolve()):
        return (f"ship: true packs what lies under path ({model.path}); "
                f"labels_path {labels} lies outside it")
    return None


def _refuse(title: str, models: list[tuple[tuple[Any, ...], ModelArgs]],
            hide_input: bool = False) -> None:
    """A ``ValidationError`` titled ``title`` for the models (each at its
    location) with a mistake, worded as a model validator's ``ValueError``."""
    errors = [InitErrorDetails(type="value_error", loc=loc,
                               input=model.model_dump(exclude_unset=True),
                               ctx={"error": ValueError(why)})
              for loc, model in models if (why := _mistake(model)) is not None]
    if errors:
        raise ValidationError.from_exception_data(title, errors, hide_input=hide_input)
