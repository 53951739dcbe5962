"""Server interceptors: typed core errors to status codes, and bearer-token auth.

Servicers do not catch exceptions: the core raises `doppel.errors` types and
`ErrorInterceptor` maps each class to one status code, keeping the message as the
details (clipped to fit in a status). Anything else is logged with its traceback and
answered INTERNAL without it. A request that is not a valid message (`decoding`) is
INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from doppel import errors
from doppel.auth import token_matches
from doppel.rpc.decoding import InvalidRequest, lenient
from doppel.rpc.handlers import Behaviour, response, responses, rewrap

log = logging.getLogger(__name__)

# Most specific first: the first matching class wins.
STATUS_OF: list[tuple[type[Exception], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.OutOfMemory, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Internal, grpc.StatusCode.INTERNAL),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.DoppelError, grpc.StatusCode.UNKNOWN),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
]
RETRY_AFTER_KEY = "retry-after-ms"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code an exception maps to; INTERNAL for anything unexpected."""
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    code = status_of(exc)
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, errors.Internal):  # logged with its traceback where it was caught
        details = str(exc)
    elif code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
        details = f"internal error in {method} ({type(exc).__name__}); the server log has the details"
    elif code is grpc.StatusCode.UNIMPLEMENTED:
        details = f"{method} is not implemented in this version of Doppel"
    else:
        details = str(exc) or type(exc).__name__
        if isinstance(exc, errors.Overloaded):
            trailing = ((RETRY_AFTER_KEY, str(int(exc.retry_after * 1000))),)
    await context.abort(code, errors.clip(details), trailing_metadata=trailing)


def _decoded(request: Any, method: str) -> Any:
    """`request`, unless it is not a valid message (`decoding`): then InvalidArgument saying why."""
    if isinstance(request, InvalidRequest):
        raise errors.InvalidArgument(f"the request to {method} is not a valid message: {request.reason}")
    return request


async def _decoded_stream(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request, method)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping a servicer to status codes with readable messages."""

    async def intercept_service(self, continuation, handler_call_details) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def decoded(request: Any) -> Any:
            return _decoded_stream(request, method) if handler.request_streaming else _decoded(request, method)

        def unary(behaviour: Behaviour):
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await response(behaviour, decoded(request), context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - this is the one place that maps them
                    await _abort(context, method, exc)

            return call

        def stream(behaviour: Behaviour):
            async def call(request: Any, context: grpc.aio.ServicerContext):
                try:
                    async for item in responses(behaviour, decoded(request), context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    await _abort(context, method, exc)

            return call

        return rewrap(handler, unary, stream, request_deserializer=lenient(handler.request_deserializer))


UNAUTHENTICATED_MESSAGE = "missing or wrong API token: send 'authorization: Bearer <DOPPEL_API_TOKEN>'"


async def _deny(_requests: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call but the health check, which
    orchestrators probe without one: reflection too, and methods that do not exist, so a caller
    without the token learns nothing, not even which methods there are."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}"

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        if details.method.startswith(HEALTH_PREFIX):
            return True
        given = next((value for key, value in details.invocation_metadata or () if key == "authorization"), None)
        return token_matches(given, self._expected)  # constant time, for a missing token too

    async def intercept_service(self, continuation, handler_call_details) -> grpc.RpcMethodHandler | None:
        if self._allowed(handler_call_details):
            return await continuation(handler_call_details)
        # One handler answers every kind of call, before reading: the request is never even parsed.
        return grpc.stream_stream_rpc_method_handler(_deny)
