"""The one error type of the request path.

Codecs and deployments raise a subclass of :class:`ServeError`; the ingress
renders every one of them as ``{"error": message}`` with the class's status.
Handle callers get the same exception class back from Ray.
"""

from __future__ import annotations


class ServeError(Exception):
    """An error the client caused or must be told about, with its HTTP status."""

    status: int = 500
    headers: dict[str, str] = {}  # noqa: RUF012  (read-only, per class)

    def __init__(self, message: str) -> None:
        # Messages quote what clients sent; JSON strings may hold lone
        # surrogates, which no response could encode: escape them here.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        # Ray pickles errors between processes (Serve's gRPC proxy unpickles a
        # replica's); a subclass whose __init__ takes other arguments than
        # the message is rebuilt from its attributes, not by calling it.
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type[ServeError], args: tuple[object, ...],
             attributes: dict[str, object]) -> ServeError:
    error = cls.__new__(cls, *args)
    error.__dict__.update(attributes)
    return error


def clip(text: str, limit: int = 40) -> str:
    """A client's text shortened for quoting in a message."""
    return text if len(text) <= limit else f"{text[:limit]}…"


class BadRequest(ServeError):
    status = 400


class Unauthenticated(ServeError):
    """No valid token (gRPC UNAUTHENTICATED); RFC 6750's challenge tells
    HTTP clients the scheme."""

    status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="ray-tf-serve"'}  # noqa: RUF012


class NotFound(ServeError):
    status = 404


class PayloadTooLarge(ServeError):
    status = 413


class UnsupportedMediaType(ServeError):
    status = 415


class ModelFailed(ServeError):
    """The model raised while running a batch: a fault of the server, reported
    to the requests in that batch without internal detail."""

    status = 500


class Unimplemented(ServeError):
    """A method of a protocol this server does not offer (gRPC UNIMPLEMENTED)."""

    status = 501


class ServiceUnavailable(ServeError):
    """Overloaded or no replica up: the client should retry shortly."""

    status = 503
    headers = {"Retry-After": "1"}  # noqa: RUF012
