"""The typed arguments of the application: the ``args:`` block of the YAML.

This is the one place where configuration meets code; everything downstream
receives plain, validated values. Declarations only (as Ray Serve's
``serve/schema.py``): validating a YAML touches no file system and imports no
Ray, fsspec or TensorFlow. What the arguments name on disk or in object
storage is found, and checked, by ``deployments.model_files`` when the app
is built and in the replicas.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from deployments.bounds import STRICT, Bytes, Count, Dim, Seconds, Version
from deployments.preprocessing import ImagePreprocessing
from deployments.types import DEFAULT_SIGNATURE

# The URL schemes of object storage, each through its fsspec filesystem (s3fs, gcsfs).
SCHEMES = ("s3", "gs")


def is_url(path: str | Path) -> bool:
    """``s3://...``, ``gs://...``: a path with a scheme, not a local one."""
    return "://" in str(path)


class _Strict(BaseModel):
    model_config = STRICT


class InputLimits(_Strict):
    """Bounds on what one request may carry (beyond them a 413) and on what an
    ingress replica takes on at once (past them a 503)."""

    max_body_bytes: Bytes = 16 * 2**20
    max_image_pixels: Count = 4096 * 4096
    max_rows: Count = Field(256, description="images or instances per request")
    max_elements: Count = Field(2**26, description="numbers per request once decoded")
    max_decoded_bytes: Bytes = Field(
        512 * 2**20, description="what one request's images may allocate while they "
                                       "decode, counted from their headers before any is")
    max_inflight_bytes: Bytes = Field(
        2**30, description="what one ingress replica holds for all requests in flight "
                                 "(bodies, parsed JSON, decoded batches); beyond: a 503")
    request_timeout_s: Seconds = Field(
        30.0, gt=0, description="how long a request may wait for its model before a 503; "
                                "a client's x-request-timeout-seconds header may shorten it")
    decode_threads: int = Field(
        2, gt=0, le=64, description="images decoded at once by one ingress replica: bounds "
                                    "the memory decoding takes, whatever the concurrency")


# How TensorFlow takes GPU memory in a model replica (``deployments.replica.device``).
GpuMemoryMode = Literal["growth", "limit"]


class DeviceArgs(_Strict):
    """How a model replica uses its hardware (see ``deployments.replica.device``)."""

    gpu_memory: GpuMemoryMode = "growth"
    gpu_total_memory_mb: int | None = Field(None, gt=0, le=2**20)

    @model_validator(mode="after")
    def _limit_needs_total(self) -> DeviceArgs:
        if self.gpu_memory == "limit" and self.gpu_total_memory_mb is None:
            raise ValueError('gpu_memory: "limit" needs gpu_total_memory_mb')
        return self


InputKind = Literal["image", "tensor"]

# Deployment names in the app besides one per model.
RESERVED_NAMES = frozenset({"Preprocessor"})


class StorageArgs(_Strict):
    """How a model in object storage is cached on each node."""

    cache_max_bytes: Bytes = Field(
        20 * 2**30, description="the node's cache of downloaded versions; least recently "
                                "used copies go first")
    verify_md5: bool = Field(True, description="check files against the MD5 the store "
                                               "reports (off for SSE-KMS/SSE-C buckets)")


class Latest(_Strict):
    """Serve the ``latest`` highest versions present (TF Serving's default: 1)."""

    latest: Count = 1

    def select(self, present: Iterable[int]) -> set[int]:
        return set(sorted(present)[-self.latest:])


class Specific(_Strict):
    """Serve exactly these versions, as they appear."""

    specific: tuple[Version, ...] = Field(min_length=1)

    def select(self, present: Iterable[int]) -> set[int]:
        return set(present) & set(self.specific)


class All(_Strict):
    """Serve every version present."""

    all: dict[str, Any] = Field(default_factory=dict, max_length=0)

    def select(self, present: Iterable[int]) -> set[int]:
        return set(present)


VersionPolicy = Latest | Specific | All


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# A local path (a ``Path`` is taken too) or a URL.
PathOrUrl = Annotated[str, BeforeValidator(_fspath)]


_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _import_path(value: str) -> str:
    if not _IMPORT_PATH.fullmatch(value):
        raise ValueError(f"{value!r} is not an import path of the form 'module.path:attribute'")
    return value


# A callable by import path, ``my_pkg.pre:normalize`` (imported when the ingress starts).
ImportPath = Annotated[str, AfterValidator(_import_path)]


def _policy(value: Any) -> Any:
    return {"all": {}} if value == "all" else value  # ``version_policy: all`` in YAML


class ModelArgs(_Strict):
    """One model to serve, in TF Serving's layout: ``path`` holds numbered
    version directories (``path/1``, ``path/2``), each a SavedModel, on this
    machine's disk or in object storage (``s3://bucket/prefix``,
    ``gs://bucket/prefix``); a local SavedModel directory itself is served as
    version 1. Replicas poll ``path`` and follow ``version_policy`` live."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: PathOrUrl = Field(min_length=1, description="model base path: a directory (relative to "
                                                "where serve runs) or an s3:// or gs:// URL")
    version_policy: Annotated[VersionPolicy, BeforeValidator(_policy)] = Field(
        default_factory=Latest,
        description="{latest: N} (default 1), {specific: [versions]} or all")
    versions: tuple[Version, ...] | None = Field(
        None, min_length=1, description="shorthand for version_policy: {specific: versions}")
    poll_interval_s: Seconds = Field(
        1.0, description="how often replicas look for new versions; 0: only at start")
    input: InputKind = Field(
        "tensor", description="image: encoded images are decoded to the image input"
    )
    image_input: str | None = Field(
        None, description="the input images go into; default: the one shaped like images")
    preprocessing: ImagePreprocessing = Field(
        default_factory=ImagePreprocessing,
        description="how images become the input's values: range, mean/std, channel order, "
                    "resize, interpolation, alpha, EXIF (input: image)")
    labels_path: PathOrUrl | None = Field(None, description="one class label per line")
    signature_name: str = Field(
        DEFAULT_SIGNATURE, description="the signature requests naming none get (a SavedModel "
        "without serving_default is served to requests that name one, as by TF Serving)")
    scores_output: str | None = Field(
        None, description="output holding class scores; default: the only or first output"
    )
    preprocess: ImportPath | None = Field(
        None, description="your code on each request's inputs before they are checked: "
                          "module.path:function, dict[str, ndarray] -> dict[str, ndarray]")
    postprocess: ImportPath | None = Field(
        None, description="your code on each request's outputs before they are encoded: "
                          "module.path:function, dict[str, ndarray] -> dict[str, ndarray]")
    jit_compile: bool = Field(False, description="compile with XLA (batches padded to buckets)")
    warmup: bool = Field(
        True, description="replay a version's assets.extra/tf_serving_warmup_requests before "
                          "it serves, as TF Serving's --enable_model_warmup (on by default)")
    storage: StorageArgs = StorageArgs()
    ship: bool = Field(
        False, description="pack the served versions and labels into the object store; "
                           "replicas load a copy on their own node"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelArgs:
        if self.versions is not None:
            if "version_policy" in self.model_fields_set:
                raise ValueError("give versions or version_policy, not both")
            self.__dict__["version_policy"] = Specific(specific=self.versions)
        for url in filter(is_url, (self.path, self.labels_path or "")):
            if url.partition("://")[0] not in SCHEMES:
                raise ValueError(f"{url}: object storage paths are s3://bucket/prefix or "
                                 "gs://bucket/prefix")
        if self.ship and (is_url(self.path) or is_url(self.labels_path or "")):
            raise ValueError("ship: true packs local files; replicas read s3:// and gs:// "
                             "paths from the store themselves")
        if self.preprocessing != ImagePreprocessing() and self.input != "image":
            raise ValueError("preprocessing applies to encoded images: set input: image")
        if 0 < self.poll_interval_s < 0.1:
            raise ValueError("poll_interval_s: 0 (never) or at least 0.1 s")
        return self


# Where a pipeline's tensors come from: ``request.<input>`` or ``<step>.<output>``.
REQUEST = "request"
_TENSOR_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.\S+")


def _tensor_ref(value: str) -> str:
    if not _TENSOR_REF.fullmatch(value):
        raise ValueError(f"{value!r} is not a tensor reference: request.<input> or "
                         "<step>.<output>")
    return value


TensorRef = Annotated[str, AfterValidator(_tensor_ref)]


def split_ref(ref: str) -> tuple[str, str]:
    """``"locate.boxes"`` → ``("locate", "boxes")`` (step names hold no dots)."""
    source, _, tensor = ref.partition(".")
    return source, tensor


class StepArgs(_Strict):
    """One model run within a pipeline, fed from the request or earlier steps."""

    model: str = Field(description="a model of this app, by name")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
                             description="default: the model's name")
    inputs: dict[str, TensorRef] | None = Field(
        None, min_length=1,
        description="the model's inputs (or the transform's arguments) by name, each "
                    "request.<input> or <step>.<output>; default (first step only): the "
                    "request's inputs as the model's")
    transform: ImportPath | None = Field(
        None, description="your code in the model's replica turning ``inputs`` into the "
                          "model's inputs: dict[str, ndarray] -> dict[str, ndarray]")
    version: Version | None = Field(None, description="the model's version this step "
                                                          "runs; default: its highest")

    @model_validator(mode="after")
    def _referable(self) -> StepArgs:
        if self.name is None and "." in self.model:
            raise ValueError(f"model {self.model!r} has a dot in its name, which step "
                             "references cannot hold: give the step a name")
        return self

    @property
    def step_name(self) -> str:
        return self.name or self.model


TensorDtype = Literal["float16", "float32", "float64", "int8", "int16", "int32", "int64",
                      "uint8", "uint16", "uint32", "uint64", "bool", "string"]


class TensorArgs(_Strict):
    """A request input's type, for one that only a transform reads."""

    dtype: TensorDtype
    shape: tuple[Dim | None, ...] = Field(
        min_length=1, description="with the batch dimension first: [-1, 64]; -1 (or null) "
                                  "for any size")

    @model_validator(mode="after")
    def _batched(self) -> TensorArgs:
        if self.shape[0] not in (None, -1):
            raise ValueError(f"shape {list(self.shape)}: the first dimension is the batch's, "
                             "-1")
        if any(d is not None and d < -1 for d in self.shape):
            raise ValueError(f"shape {list(self.shape)}: sizes are -1 or positive")
        return self

    @property
    def dims(self) -> tuple[int | None, ...]:
        return tuple(None if d in (None, -1) else d for d in self.shape)


class PipelineArgs(_Strict):
    """Models composed into one: a step's inputs may be earlier steps'
    outputs. Served under its own name on every protocol; the intermediate
    arrays go from one model replica to the next through the object store."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    steps: tuple[StepArgs, ...] = Field(min_length=1)
    inputs: dict[str, TensorArgs] = Field(
        default_factory=dict, description="types of request inputs only transforms read "
                                          "(text for a tokenizer, say); the others are "
                                          "typed by the model input they feed")
    outputs: dict[str, TensorRef] | None = Field(
        None, min_length=1, description="the pipeline's outputs by name, each "
                                        "<step>.<output>; default: the last step's outputs")
    scores_output: str | None = Field(
        None, description="the output holding class scores; default: the one fed by a "
                          "model's scores, else the first")
    preprocess: ImportPath | None = Field(
        None, description="your code on each request's inputs in the ingress, as a model's")
    postprocess: ImportPath | None = Field(
        None, description="your code on each request's outputs in the ingress, as a model's")

    @model_validator(mode="after")
    def _wired(self) -> PipelineArgs:
        seen: list[str] = []
        for i, step in enumerate(self.steps):
            if step.step_name in (*seen, REQUEST):
                raise ValueError(f"pipeline {self.name!r}: step names must be unique and not "
                                 f"{REQUEST!r}: {step.step_name!r}")
            if step.inputs is None and (i > 0 or step.transform):
                raise ValueError(f"pipeline {self.name!r} step {step.step_name!r}: name its "
                                 "inputs (only a first step without a transform takes the "
                                 "request's as they are)")
            self._check_refs(f"step {step.step_name!r}", (step.inputs or {}).values(),
                             [REQUEST, *seen])
            seen.append(step.step_name)
        self._check_refs("outputs", (self.outputs or {}).values(), seen)
        refs = [split_ref(r) for r in (*(self.outputs or {}).values(), *(
            r for step in self.steps for r in (step.inputs or {}).values()))]
        if idle := [s for s in seen[:-1] if s not in {source for source, _ in refs}]:
            raise ValueError(f"pipeline {self.name!r}: steps {idle} feed no later step and "
                             "no output")
        if unread := sorted(set(self.inputs) - {t for s, t in refs if s == REQUEST}):
            raise ValueError(f"pipeline {self.name!r}: inputs {unread} are declared but no "
                             "step reads them (as request.<input>)")
        if self.scores_output is not None and self.outputs is not None \
                and self.scores_output not in self.outputs:
            raise ValueError(f"pipeline {self.name!r}: scores_output {self.scores_output!r} "
                             f"is not one of its outputs ({', '.join(self.outputs)})")
        return self

    def _check_refs(self, where: str, refs: Iterable[str], known: list[str]) -> None:
        for ref in refs:
            if split_ref(ref)[0] not in known:
                raise ValueError(f"pipeline {self.name!r} {where}: {ref!r} names no earlier "
                                 f"step (it may name: {', '.join(known)})")


# Where a secret's value goes by mistake: the YAML only says where secrets are.
_SECRET_FIELDS = frozenset({"token", "tokens", "api_key", "api_keys", "key", "secret",
                            "password", "bearer"})


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):
        raise ValueError("auth.tokens_env names an environment variable (upper-case letters, "
                         "digits, _: RAY_TF_SERVE_TOKENS), never a token itself")
    return value


def _secret_file(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("auth.tokens_file is the absolute path of a file holding the "
                         "tokens, never a token itself")
    return value


def _exempt_path(value: str) -> str:
    if not re.fullmatch(r"/[^*\s]*\*?", value):
        raise ValueError(f"auth.exempt: {value!r} is not a path (/healthz) or a path prefix "
                         "ending in * (/v2/health/*)")
    return value


class AuthArgs(_Strict):
    """Tokens every HTTP and gRPC call must show (``Authorization: Bearer``),
    but health probes: on once ``tokens_env`` or ``tokens_file`` says where
    they are (both: either's tokens). The YAML never holds a token."""

    tokens_env: Annotated[str, AfterValidator(_env_name)] | None = Field(
        None, description="the ingress replicas' environment variable holding the tokens "
                          "(several: separated by commas or whitespace), read at start")
    tokens_file: Annotated[str, AfterValidator(_secret_file)] | None = Field(
        None, description="a file on the ingress replicas' nodes holding the tokens, read "
                          "at start and again when it changes")
    api_key_header: bool = Field(
        False, description="also take a token as X-API-Key (HTTP header, gRPC metadata)")
    exempt: tuple[Annotated[str, AfterValidator(_exempt_path)], ...] = Field(
        ("/healthz", "/readyz", "/v2/health/*"),
        description="HTTP paths open without a token (a trailing * takes a prefix); gRPC "
                    "ServerLive and ServerReady are open while /v2/health/live and ready are")
    status_detail: Literal["redacted", "full"] = Field(
        "redacted", description="a version's load error as callers without a token read it "
                                "in status routes: paths and URLs removed, or in full")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict) and (literal := sorted(_SECRET_FIELDS & set(data))):
            raise ValueError(f"auth.{literal[0]}: the YAML never holds a token: put the "
                             "tokens in an environment variable or a file and name it in "
                             "tokens_env or tokens_file")
        return data

    @property
    def enabled(self) -> bool:
        return bool(self.tokens_env or self.tokens_file)

    def exempts(self, path: str) -> bool:
        """Whether ``path`` (a request's, or a route's template) is open without a token."""
        return any(path == p or (p.endswith("*") and path.startswith(p[:-1]))
                   for p in self.exempt)


def _origin(value: str) -> str:
    if not re.fullmatch(r"\*|https?://[^/\s]+", value):
        raise ValueError(f"cors.allow_origins: {value!r} is not * or an origin "
                         "(https://host[:port])")
    return value


class CorsArgs(_Strict):
    """Browsers' cross-origin calls (Starlette's CORSMiddleware): off unless
    ``allow_origins`` lists some. Preflight requests are answered without a
    token."""

    allow_origins: tuple[Annotated[str, AfterValidator(_origin)], ...] = Field(
        (), description="origins whose pages may call the API (https://app.example.com), or *")
    allow_methods: tuple[str, ...] = ("GET", "POST")
    allow_headers: tuple[str, ...] = Field(
        ("Authorization", "X-API-Key", "Content-Encoding", "Inference-Header-Content-Length",
         "X-Request-Timeout-Seconds"),
        description="request headers pages may send besides the CORS-safelisted ones")
    expose_headers: tuple[str, ...] = Field(
        ("Inference-Header-Content-Length", "Retry-After"),
        description="response headers pages may read")
    max_age: int = Field(600, ge=0, le=86400,
                         description="seconds browsers may keep a preflight's answer")


# The HTTP API's paths and prefixes (``deployments/ingress``): the monitoring
# page may not shadow them.
API_PATHS = ("/healthz", "/readyz", "/openapi.json", "/predict", "/models", "/v1", "/v2", "/ui")


def _monitoring_path(path: str) -> str:
    if taken := [p for p in API_PATHS if path == p or path.startswith(f"{p}/")]:
        raise ValueError(f"monitoring.prometheus.path {path!r} is under the API's "
                         f"{taken[0]!r}: choose a path outside {', '.join(API_PATHS)}")
    return path


class PrometheusArgs(_Strict):
    """TF Serving's ``prometheus_config``: the whole server's metrics, under TF
    Serving's names beside ours, as Prometheus text on the HTTP port."""

    enable: bool = False
    path: Annotated[str, AfterValidator(_monitoring_path)] = Field(
        "/monitoring/prometheus/metrics", pattern=r"^/[A-Za-z0-9_./-]*$", max_length=256)


class MonitoringArgs(_Strict):
    """TF Serving's ``MonitoringConfig`` (``--monitoring_config_file``)."""

    prometheus: PrometheusArgs = PrometheusArgs()


# ``ray-tf-serve`` (the CLI) runs each model in a Serve application of its own,
# beside its ingress application; the ingress reaches a model there by this name.
CLI_APP = "ray-tf-serve"


def model_app(name: str) -> str:
    """The Serve application a model of ``ray-tf-serve`` runs in (its
    deployment is named after the model)."""
    return f"{CLI_APP}.{name}"


# What a payload log record keeps of a tensor (``deployments.codecs.payload``).
TensorKeep = Literal["full", "shape", "none"]
PAYLOAD_SCHEMES = (*SCHEMES, "http", "https")


def _sink_url(value: str) -> str:
    if is_url(value):
        if value.partition("://")[0] not in PAYLOAD_SCHEMES:
            raise ValueError(f"{value}: a payload log goes to an absolute directory, "
                             "s3://bucket/prefix, gs://bucket/prefix or an http(s):// collector")
    elif not value.startswith("/"):
        raise ValueError(f"{value}: a payload log directory is an absolute path (on the "
                         "ingress replicas' nodes)")
    return value


class PayloadSinkArgs(_Strict):
    """Where a model's payload log records go, and how."""

    url: Annotated[PathOrUrl, AfterValidator(_sink_url)] = Field(
        description="an absolute directory, s3://bucket/prefix, gs://bucket/prefix, or an "
                    "http(s):// collector (CloudEvents as KServe's logger posts them)")
    format: Literal["jsonl", "prediction_log"] = Field(
        "jsonl", description="files: JSON lines of CloudEvents, or TFRecord files of TF "
                             "Serving's PredictionLog (an HTTP collector always gets "
                             "CloudEvents)")
    rotate_bytes: Bytes = Field(64 * 2**20, description="a file is closed (an object "
                                                        "uploaded) once this large")
    rotate_s: Seconds = Field(300.0, gt=0, description="... or once this old")
    namespace: str = Field("", max_length=253, description="KServe's Ce-Namespace")


class PayloadLogArgs(_Strict):
    """One model's payload logging (the Preprocessor's ``user_config``:
    ``payload_logging: {model: ...}``, retuned live)."""

    sample_rate: float = Field(0.0, ge=0.0, le=1.0,
                               description="share of requests logged, at random")
    force_header: bool = Field(True, description="a request with x-log-payload: 1 (HTTP "
                                                 "header, gRPC metadata) is logged anyway")
    default: TensorKeep = Field("shape", description="what is kept of a tensor not named "
                                                     "below: shape (default), full, none")
    inputs: dict[str, TensorKeep] = Field(default_factory=dict,
                                          description="per input name: full, shape, none")
    outputs: dict[str, TensorKeep] = Field(default_factory=dict,
                                           description="per output name: full, shape, none")
    max_record_bytes: Bytes = Field(2**20, description="tensor values one record may carry; "
                                                       "beyond, tensors are summarised")
    sink: PayloadSinkArgs | None = Field(None, description="none: nothing is logged")
    queue_records: int = Field(1024, gt=0, le=2**20, description="records waiting for the "
                                                                 "sink; beyond, dropped")
    batch_records: int = Field(256, gt=0, le=2**16, description="records per write")


class AppArgs(_Strict):
    # Errors never echo what was given: a token put where it does not belong stays unshown.
    model_config = STRICT | ConfigDict(hide_input_in_errors=True)

    models: tuple[ModelArgs, ...] = ()
    model_config_file: PathOrUrl | None = Field(
        None, description="instead of models: TF Serving's text ModelServerConfig "
                          "(--model_config_file), read when the app is built")
    pipelines: tuple[PipelineArgs, ...] = ()
    top_k: Count = Field(5, description="default number of classes per prediction")
    limits: InputLimits = InputLimits()
    device: DeviceArgs = DeviceArgs()
    auth: AuthArgs = AuthArgs()
    cors: CorsArgs = CorsArgs()
    monitoring: MonitoringArgs = MonitoringArgs()

    @model_validator(mode="after")
    def _unique_names(self) -> AppArgs:
        if (not self.models) == (self.model_config_file is None):
            raise ValueError("give models or model_config_file (one of them)")
        if self.model_config_file is not None and self.pipelines:
            raise ValueError("pipelines run models listed under models, not model_config_file")
        named: tuple[ModelArgs | PipelineArgs, ...] = (*self.models, *self.pipelines)
        names = [m.name for m in named]
        taken = sorted({n for n in names if names.count(n) > 1 or n in RESERVED_NAMES})
        if taken:
            raise ValueError(f"model and pipeline names must be unique and not "
                             f"{sorted(RESERVED_NAMES)}: {', '.join(taken)}")
        models = {m.name for m in self.models}
        for pipeline in self.pipelines:
            if unknown := sorted({s.model for s in pipeline.steps} - models):
                raise ValueError(f"pipeline {pipeline.name!r} runs models this app does not "
                                 f"serve: {', '.join(unknown)}")
        return self

    def transforms(self) -> dict[str, tuple[str, ...]]:
        """Per model, the pipeline transforms its replicas run (imported as they start)."""
        paths: dict[str, set[str]] = {}
        for step in (s for p in self.pipelines for s in p.steps if s.transform):
            paths.setdefault(step.model, set()).add(cast(str, step.transform))
        return {model: tuple(sorted(p)) for model, p in paths.items()}
