"""Who may call the API, and what a caller without a token reads.

``auth:`` in the YAML (:class:`deployments.config.AuthArgs`) says where the
tokens are; the ingress's :class:`Gate` reads them as it starts and checks
every HTTP request (``Authorization: Bearer <token>``, optionally
``X-API-Key``) and every gRPC call (the same keys in its metadata) against
them in constant time, but for the exempt health probes. A version's load
error in a status route is shown in full only to a caller with a token (or to
all with ``status_detail: full``); others read it without paths and URLs
(:func:`load_error`). Tokens are kept as digests and never logged. No Ray here.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Protocol

from starlette._utils import get_route_path
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.config import AuthArgs
from deployments.errors import Unauthenticated
from deployments.ingress.protocols.http import render_error

logger = logging.getLogger("ray.serve")

MIN_TOKEN_CHARS = 16

# How often a token file is looked at for changes (a Kubernetes Secret mounted
# as a volume is updated in place).
RECHECK_S = 5.0

# The gRPC health methods: exempt while their HTTP twins are.
_RPC_PATHS = {"ServerLive": "/v2/health/live", "ServerReady": "/v2/health/ready",
              "Check": "/healthz", "Watch": "/healthz"}

# Whether the current request's caller reads load errors in full (set by the gate).
_full_detail: ContextVar[bool] = ContextVar("full_detail", default=False)

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
_PATH = re.compile(r"(?<![\w.~-])~?/[^\s'\"():;,]+")


def redact(text: str) -> str:
    """``text`` with every URL (``s3://bucket/key``) and absolute path replaced."""
    return _PATH.sub("<path>", _URL.sub("<url>", text))


def load_error(text: str) -> str:
    """A version's load error as the current request's caller may read it."""
    return text if _full_detail.get() else redact(text)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "backslashreplace")).digest()


def _digests(text: str, where: str) -> frozenset[bytes]:
    """The tokens in ``text`` (separated by commas or whitespace) as digests;
    a ValueError naming ``where`` (never a token) for none or a weak one."""
    tokens = [t for t in re.split(r"[\s,]+", text) if t]
    if not tokens:
        raise ValueError(f"auth: {where} holds no token")
    for i, token in enumerate(tokens, 1):
        if len(token) < MIN_TOKEN_CHARS or not (token.isascii() and token.isprintable()):
            raise ValueError(f"auth: token {i} in {where} is not {MIN_TOKEN_CHARS} or more "
                             "printable ASCII characters")
    return frozenset(map(_digest, tokens))


class _TokenFile:
    """A file's tokens: read at start (a failure fails the start), read again
    when the file changes (looked at every ``recheck_s``); a new content that
    cannot be read keeps the tokens in hand."""

    def __init__(self, path: str, recheck_s: float) -> None:
        self._path = path
        self._recheck_s = recheck_s
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self.digests = _digests(Path(path).read_text(), path)

    def _stat(self) -> tuple[int, int, int]:
        stat = os.stat(self._path)
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def current(self) -> frozenset[bytes]:
        if time.monotonic() - self._checked >= self._recheck_s:
            self._checked = time.monotonic()
            try:
                stamp = self._stat()
                if stamp != self._stamp:
                    self._stamp = stamp
                    self.digests = _digests(Path(self._path).read_text(), self._path)
                    logger.info("auth: read the tokens in %s again", self._path)
            except (OSError, ValueError) as exc:
                logger.warning("auth: %s changed and cannot be read (%s): keeping its "
                               "previous tokens", self._path, exc)
        return self.digests


class _Metadata(Protocol):
    """What the gate reads of Serve's ``RayServegRPCContext``."""

    def invocation_metadata(self) -> Sequence[tuple[str, str]]: ...


class Gate:
    """Every request shows a valid token, but on exempt paths (everything
    passes while ``args`` names no tokens)."""

    def __init__(self, args: AuthArgs, environ: Mapping[str, str] = os.environ,
                 recheck_s: float = RECHECK_S) -> None:
        """The tokens read now: a ValueError or OSError (naming the variable
        or file, never a token) if they cannot be."""
        self.args = args
        self._env = frozenset[bytes]()
        if args.tokens_env:
            self._env = _digests(environ.get(args.tokens_env, ""),
                                 f"environment variable {args.tokens_env}")
        self._file = _TokenFile(args.tokens_file, recheck_s) if args.tokens_file else None

    def _valid(self, token: str) -> bool:
        """Whether ``token`` is one of the tokens: compared with each of them
        in constant time (digests: the length stays hidden too)."""
        digest = _digest(token)
        tokens = self._env | (self._file.current() if self._file else frozenset())
        return sum(hmac.compare_digest(digest, t) for t in tokens) > 0

    def _admit(self, header: Callable[[str], str | None], exempt: bool) -> bool:
        """Whether the caller showed a valid token (``header``: its value by
        lower-case name); a 401 unless it did or ``exempt`` (auth on)."""
        scheme, _, bearer = (header("authorization") or "").strip().partition(" ")
        shown = [bearer.strip() if scheme.lower() == "bearer" else "",
                 (header("x-api-key") or "").strip() if self.args.api_key_header else ""]
        if sum(self._valid(t) for t in shown if t) > 0:
            return True
        if exempt:
            return False
        if any(shown):
            raise Unauthenticated("the token is not valid")
        raise Unauthenticated("a token is required: send Authorization: Bearer <token>"
                              + (" or X-API-Key: <token>" if self.args.api_key_header else ""))

    @contextmanager
    def _showing(self, authenticated: bool) -> Iterator[None]:
        """Load errors shown in full, within, to a caller with a token (or to all)."""
        reset = _full_detail.set(authenticated or self.args.status_detail == "full")
        try:
            yield
        finally:
            _full_detail.reset(reset)

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind the gate (Starlette middleware): a 401 before the
        body is read for a request without a valid token to a path not exempt
        (the path as Starlette's router matches it)."""

        async def gated(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            try:
                authenticated = self.args.enabled and self._admit(
                    Headers(scope=scope).get, self.args.exempts(get_route_path(scope)))
            except Unauthenticated as exc:
                await render_error(Request(scope), exc)(scope, receive, send)
                return
            with self._showing(authenticated):
                await app(scope, receive, send)

        return gated

    @contextmanager
    def rpc(self, method: str, context: _Metadata) -> Iterator[None]:
        """A gRPC call to ``method`` through the gate, by its metadata: a 401
        (UNAUTHENTICATED) unless it shows a valid token or is a health probe
        whose HTTP route is exempt."""
        path = _RPC_PATHS.get(method)
        authenticated = self.args.enabled and self._admit(
            dict(context.invocation_metadata()).get,
            path is not None and self.args.exempts(path))
        with self._showing(authenticated):
            yield
