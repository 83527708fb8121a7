"""Our errors cross processes as Ray pickles them (a model replica's to the
ingress, the ingress's to Serve's gRPC proxy): each comes back the same
class with the same message and attributes, whatever its ``__init__`` takes."""

from __future__ import annotations

import pickle

import grpc
import pytest

from deployments.errors import BadRequest, ServeError, ServiceUnavailable
from deployments.ingress.deadline import DeadlinePassed
from deployments.ingress.protocols.grpc import GrpcFailure


@pytest.mark.parametrize("error", [
    BadRequest("a 'bad' request"),
    ServiceUnavailable("overloaded"),
    DeadlinePassed(1.5, clients=True),
    GrpcFailure(grpc.StatusCode.UNKNOWN, "1 model(s) did not become available: {m}"),
], ids=type)
def test_errors_survive_pickling(error: ServeError):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert (str(back), back.message, back.status) == (str(error), error.message, error.status)
    assert vars(back) == vars(error)

