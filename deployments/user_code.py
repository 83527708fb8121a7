"""A model's own pre- and postprocessing code, named by import path in the YAML.

``preprocess: my_pkg.pre:normalize`` runs on a request's inputs (by name,
numpy arrays) after its protocol decoded them and before they are checked
against the signature; ``postprocess`` on that request's outputs before its
protocol encodes them. Both run in the ingress (``DataPlane.infer``, the
one path every protocol takes); a pipeline step's ``transform`` runs in its
model's replica (``deployments.replica.pipeline_step``). Sync functions run on
a few threads of their own, so CPU work does not stall the event loop and code
that hangs holds none of the threads requests are parsed on; async ones on the
loop.

The code is imported when the ingress starts: a path that does not import
fails the deploy, naming the model and the path. At request time a
:class:`ServeError` the code raises is the client's answer (a ``BadRequest``
is a 400 with its message); anything else is a 500 naming the callable and
the exception's type, logged with its traceback (once a minute per type).
Sync code that hangs is found by the replica's health check (:class:`Watchdog`).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
import pkgutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from deployments.errors import ServeError
from deployments.metrics import UserCodeMetrics

if TYPE_CHECKING:
    from deployments.config import ModelArgs, PipelineArgs

logger = logging.getLogger("ray.serve")

Arrays = dict[str, np.ndarray]


class UserCodeFailed(ServeError):
    """A model's own pre- or postprocessing code raised or answered nonsense:
    a fault of the server, reported without the code's internals."""

    status = 500


class CodePaths(NamedTuple):
    """A model's ``preprocess`` and ``postprocess`` import paths, as configured."""

    preprocess: str | None = None
    postprocess: str | None = None


def import_callable(path: str) -> Callable[..., Any]:
    """The object ``module.path:attribute`` names (the attribute may be
    dotted); ``ImportError`` saying what is missing, or why it failed."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = pkgutil.resolve_name(path)
    except Exception as exc:
        if module_name not in sys.modules:  # missing, or it raised as it was imported
            raise ImportError(f"cannot import module {module_name!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
        if isinstance(exc, AttributeError):
            raise ImportError(f"module {module_name!r} has no attribute {attribute!r}") from None
        raise
    if not callable(target):
        raise ImportError(f"{attribute!r} is not callable (of type {type(target).__name__})")
    return target


# Threads per sync callable: its own pool, so code that hangs holds these,
# not the threads the ingress parses and decodes on.
_THREADS = 4
# A callable's failures are logged with their traceback once a minute per
# exception type (each one still answers its request).
_LOG_EVERY_S = 60.0
# A sync call is stuck once it has run this many times the request timeout:
# its caller gave up long before, and slow code has had time to finish.
STUCK_AFTER = 2


class Running:
    """The calls of one sync callable on its threads, by when each started.
    A call its caller gave up on (a timeout cancels the wait, not the
    thread) counts until it returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._started: dict[int, float] = {}

    def call(self, fn: Callable[[Arrays], Any], arrays: Arrays) -> Any:
        """``fn(arrays)``, counted while it runs (on one of the callable's threads)."""
        with self._lock:
            key = next(self._ids)
            self._started[key] = time.monotonic()
        try:
            return fn(arrays)
        finally:
            with self._lock:
                del self._started[key]

    def longer_than(self, seconds: float) -> int:
        """How many calls have run longer than ``seconds``."""
        now = time.monotonic()
        with self._lock:
            return sum(now - started > seconds for started in self._started.values())


@dataclass(frozen=True)
class Processor:
    """One configured callable: ``dict[str, ndarray]`` in, the same out."""

    stage: str  # "preprocess", "postprocess" or "transform" (a pipeline step's)
    path: str
    run: Callable[[Arrays], Awaitable[Any]]
    threads: int = 0  # of its own, for sync code (async code runs on the event loop)
    _running: Running = field(default_factory=Running, compare=False)
    _logged: dict[str, float] = field(default_factory=dict, compare=False)

    @classmethod
    def load(cls, model: str, stage: str, path: str) -> Processor:
        """``path`` imported now; a ``RuntimeError`` naming the model and path if not."""
        try:
            fn = import_callable(path)
        except ImportError as exc:
            raise RuntimeError(f"model {model!r}: {stage} {path!r} cannot be loaded: "
                               f"{exc}") from None
        # Async code runs on the event loop; sync code on a thread, decided once
        # here (an async ``__call__`` counts; a decorator may still hide a
        # coroutine function, so a result that can be awaited is).
        call = vars(type(fn)).get("__call__")  # an instance's own (class-level) __call__
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
        if is_async:
            return cls(stage, path, fn)
        threads, running = ThreadPoolExecutor(_THREADS, thread_name_prefix=stage), Running()
        return cls(stage, path, lambda arrays: asyncio.get_running_loop().run_in_executor(
            threads, running.call, fn, arrays), _THREADS, running)

    def running(self) -> int:
        """Calls of sync code on its threads now (async code's are not counted)."""
        return self._running.longer_than(-math.inf)

    def stuck(self, deadline_s: float) -> int:
        """Calls of sync code that have run ``STUCK_AFTER`` times ``deadline_s``."""
        return self._running.longer_than(STUCK_AFTER * deadline_s)

    async def __call__(self, arrays: Arrays) -> Arrays:
        """The callable's answer for ``arrays``, checked to be arrays by name."""
        try:
            result = await self.run(arrays)
            if inspect.isawaitable(result):
                result = await result
        except ServeError:
            raise
        except Exception as exc:
            self._log(exc)
            raise UserCodeFailed(f"{self.stage} {self.path} raised "
                                 f"{type(exc).__name__}") from None
        if (wrong := _not_arrays(result)) is not None:
            raise UserCodeFailed(f"{self.stage} {self.path} returned {wrong}, not a dict of "
                                 "numpy arrays by name")
        return result

    def _log(self, exc: Exception) -> None:
        """The traceback, unless one of this type was logged within a minute."""
        kind, now = type(exc).__name__, time.monotonic()
        if now - self._logged.get(kind, -math.inf) >= _LOG_EVERY_S:
            self._logged[kind] = now
            logger.error("%s %s raised (each %s logged once a minute)", self.stage, self.path,
                         kind, exc_info=exc)


class Watchdog:
    """A replica's health verdict on its sync callables, asked by its
    ``check_health``: it fails once every thread of one callable holds a call
    that has run ``STUCK_AFTER`` times ``deadline_s`` (the request timeout).

    Python cannot stop a thread, so a hung call cannot be abandoned: it holds
    its thread until the process ends. Running the code in a process of its
    own would make it killable, at the cost of copying every array both ways
    and of the code's state (a loaded model, a cache) per process. Instead,
    while a callable has a thread left it still serves, and so does the
    replica, whose other requests (every model's, on the ingress) a restart
    would cost; once none is left, every request that needs it waits out its
    timeout, and only a new process helps: the failed check makes Serve
    replace the replica. Async code is not watched: it runs on the event loop,
    where a caller's timeout cancels it (code that blocks the loop blocks the
    health check too, which Serve's own timeout fails). Each check sets the
    stuck calls' gauge by callable, so the metrics say which one hung.
    """

    def __init__(self, processors: Iterable[Processor], deadline_s: float,
                 metrics: UserCodeMetrics | None = None) -> None:
        self._processors = [p for p in processors if p.threads]
        self._deadline_s = deadline_s
        self._metrics = metrics or UserCodeMetrics()

    def check(self) -> None:
        """``RuntimeError`` naming each callable whose threads are all stuck."""
        hung = []
        for processor in self._processors:
            stuck = processor.stuck(self._deadline_s)
            self._metrics.stuck_calls(processor.stage, processor.path, stuck)
            if stuck >= processor.threads:
                hung.append(f"{processor.stage} {processor.path}: all {processor.threads} of "
                            f"its threads have run one call for over "
                            f"{STUCK_AFTER * self._deadline_s:g} s ({STUCK_AFTER} × the "
                            "request timeout)")
        if hung:
            raise RuntimeError(f"{'; '.join(hung)}; restart to free them")


def _not_arrays(value: object) -> str | None:
    """What is wrong with ``value`` as arrays by name (None: nothing)."""
    if not isinstance(value, dict):
        return f"a {type(value).__name__}"
    for key, array in value.items():
        if not isinstance(key, str):
            return f"a dict keyed by {type(key).__name__}"
        if not isinstance(array, np.ndarray):
            return f"a {type(array).__name__} for {key!r}"
    return None


@dataclass(frozen=True)
class Processors:
    """A model's configured callables (either may be absent)."""

    pre: Processor | None = None
    post: Processor | None = None

    @classmethod
    def load(cls, model: str, paths: CodePaths) -> Processors:
        return cls(*(Processor.load(model, stage, path) if path else None
                     for stage, path in zip(CodePaths._fields, paths, strict=True)))

    def loaded(self) -> tuple[Processor, ...]:
        return tuple(p for p in (self.pre, self.post) if p is not None)


def code_paths(models: Iterable[ModelArgs | PipelineArgs]) -> dict[str, CodePaths]:
    """The import paths of the models (and pipelines) that name any code."""
    return {m.name: CodePaths(m.preprocess, m.postprocess) for m in models
            if m.preprocess or m.postprocess}


def load_transforms(model: str, paths: Iterable[str]) -> dict[str, Processor]:
    """The pipeline transforms a model's replicas run, by import path,
    imported now (a failure names the model and the path)."""
    return {path: Processor.load(model, "transform", path) for path in paths}


def load_processors(paths: Mapping[str, CodePaths]) -> dict[str, Processors]:
    """Every model's code imported, or the first failure naming model and path."""
    return {name: Processors.load(name, p) for name, p in paths.items()}
