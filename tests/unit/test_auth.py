"""The gate on its own: tokens read from where the YAML says, compared with
every token (rotation), a token file read again when it changes, exempt paths,
what a caller without a token reads of a load error, and a literal secret in
the YAML refused without being echoed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from deployments.config import AppArgs, AuthArgs
from deployments.errors import Unauthenticated
from deployments.ingress.auth import Gate, load_error, redact

OLD, NEW = "old-token-0123456789abcdef", "new-token-fedcba9876543210"
ENV = {"RAY_TF_SERVE_TOKENS": f"{OLD}, {NEW}"}
MODELS = [{"name": "m", "path": "x"}]


@dataclass
class Context:
    """Serve's ``RayServegRPCContext`` as the gate reads it."""

    metadata: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return list(self.metadata)


def admitted(gate: Gate, method: str = "ModelInfer", **metadata: str) -> bool:
    """Whether a gRPC call with ``metadata`` is let through (and reads load errors in full)."""
    with gate.rpc(method, Context(tuple(metadata.items()))):
        return load_error("/secret/path") == "/secret/path"


def test_every_listed_token_passes_and_nothing_else():
    gate = Gate(AuthArgs(tokens_env="RAY_TF_SERVE_TOKENS"), ENV)
    assert admitted(gate, authorization=f"Bearer {OLD}")
    assert admitted(gate, authorization=f"bearer  {NEW} ")  # the scheme in any case
    for shown in (f"Bearer {OLD[:-1]}", f"Bearer {OLD}x", f"Basic {OLD}", OLD, f"Bearer {OLD},"):
        with pytest.raises(Unauthenticated) as refused:
            admitted(gate, authorization=shown)
        assert OLD not in refused.value.message
    with pytest.raises(Unauthenticated, match=r"send Authorization: Bearer <token>$"):
        admitted(gate)
    with pytest.raises(Unauthenticated):  # X-API-Key only when asked for
        admitted(gate, **{"x-api-key": OLD})


def test_an_api_key_header_when_configured():
    gate = Gate(AuthArgs(tokens_env="RAY_TF_SERVE_TOKENS", api_key_header=True), ENV)
    assert admitted(gate, **{"x-api-key": NEW})
    with pytest.raises(Unauthenticated, match="or X-API-Key: <token>"):
        admitted(gate)


def test_health_probes_are_exempt_and_configurable():
    args = AuthArgs(tokens_env="RAY_TF_SERVE_TOKENS")
    assert [p for p in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready",
                        "/healthz/x", "/v2/healthy", "/predict", "/ui/") if args.exempts(p)] \
        == ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"]
    gate = Gate(args, ENV)
    assert not admitted(gate, "ServerLive") and not admitted(gate, "ServerReady")
    with pytest.raises(Unauthenticated):
        admitted(gate, "ModelReady")
    strict = Gate(args.model_copy(update={"exempt": ("/healthz",)}), ENV)
    with pytest.raises(Unauthenticated):  # gRPC probes follow their HTTP twins
        admitted(strict, "ServerReady")


def test_load_errors_in_full_only_for_callers_with_a_token_or_when_configured():
    error = ("OSError: SavedModel file does not exist at: /mnt/nodes/7/m/2/{saved_model.pb}; "
             "fetching s3://team-bucket/models/m/2/variables failed (int64/float32 N/A)")
    assert redact(error) == ("OSError: SavedModel file does not exist at: <path>; fetching "
                             "<url> failed (int64/float32 N/A)")
    assert load_error(error) == redact(error)  # outside any request: redacted
    off = Gate(AuthArgs())
    assert not admitted(off)  # auth off: everyone passes, nobody is "authenticated"
    assert admitted(Gate(AuthArgs(status_detail="full")))
    assert admitted(Gate(AuthArgs(tokens_env="RAY_TF_SERVE_TOKENS"), ENV),
                    authorization=f"Bearer {NEW}")
    assert load_error(error) == redact(error)  # reset once the call is over


def test_tokens_that_cannot_be_read_fail_the_start_naming_where(tmp_path):
    with pytest.raises(ValueError, match="environment variable RAY_TF_SERVE_TOKENS holds no"):
        Gate(AuthArgs(tokens_env="RAY_TF_SERVE_TOKENS"), {})
    with pytest.raises(ValueError, match="token 2 in environment variable T is not 16") as weak:
        Gate(AuthArgs(tokens_env="T"), {"T": f"{OLD} short-secret"})
    assert "short-secret" not in str(weak.value)
    with pytest.raises(FileNotFoundError):
        Gate(AuthArgs(tokens_file=str(tmp_path / "missing")))


def test_a_token_file_is_read_again_when_it_changes(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{OLD}\n")
    gate = Gate(AuthArgs(tokens_file=str(path)), recheck_s=0)
    assert admitted(gate, authorization=f"Bearer {OLD}")
    path.write_text(f"{NEW}\n")
    os.utime(path, ns=(0, 10**18))  # a change even within the clock's resolution
    assert admitted(gate, authorization=f"Bearer {NEW}")
    with pytest.raises(Unauthenticated):
        admitted(gate, authorization=f"Bearer {OLD}")
    path.write_text("")  # unreadable new content: the tokens in hand stay
    assert admitted(gate, authorization=f"Bearer {NEW}")
    path.unlink()
    assert admitted(gate, authorization=f"Bearer {NEW}")


SECRET = "s3cr3t-0123456789abcdefABCDEF"


@pytest.mark.parametrize(("auth", "field"), [
    ({"token": SECRET}, "auth.token"),
    ({"api_key": SECRET, "tokens_env": "T"}, "auth.api_key"),
    ({"tokens_env": SECRET}, "auth.tokens_env"),
    ({"tokens_env": "abcdef0123456789"}, "auth.tokens_env"),
    ({"tokens_file": SECRET}, "auth.tokens_file"),
    ({"tokenz": SECRET}, "auth.tokenz"),
    ({"exempt": ["healthz"]}, "auth.exempt"),
])
def test_a_literal_secret_is_refused_naming_the_field_not_echoing_it(auth, field):
    with pytest.raises(ValidationError) as refused:
        AppArgs.model_validate({"models": MODELS, "auth": auth})
    assert field in str(refused.value) and SECRET not in str(refused.value)


def test_cors_origins_are_origins():
    assert AppArgs.model_validate({"models": MODELS, "cors": {
        "allow_origins": ["https://app.example.com:8443", "*"]}}).cors.allow_origins
    with pytest.raises(ValidationError, match="is not \\* or an origin"):
        AppArgs.model_validate({"models": MODELS,
                                "cors": {"allow_origins": ["https://app.example.com/"]}})
