"""Rewrapping a gRPC method handler, whatever its cardinality.

The error interceptor replaces the behaviour of a handler while keeping its serialiser
and its kind (unary or streaming on either side), and its deserialiser unless given a
lenient one; this module holds that piece of mechanics so the interceptor only says
what to do.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# A behaviour is (request_or_iterator, context) -> awaitable response, or an async iterator of responses.
Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]
Deserializer = Callable[[bytes], Any]
_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def rewrap(
    handler: grpc.RpcMethodHandler,
    unary_response: Callable[[Behaviour], Callable[..., Awaitable[Any]]],
    stream_response: Callable[[Behaviour], Callable[..., AsyncIterator[Any]]],
    *,
    request_deserializer: Deserializer | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour is `unary_response(b)` or `stream_response(b)`,
    with the handler's request deserialiser or `request_deserializer`."""
    attr, make = _KINDS[(handler.request_streaming, handler.response_streaming)]
    behaviour = getattr(handler, attr)
    wrap = stream_response if handler.response_streaming else unary_response
    return make(
        wrap(behaviour),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def responses(behaviour: Behaviour, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    """Iterate a response-streaming behaviour written either as an async generator or with `context.write`."""
    result = behaviour(request, context)
    if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result
    else:  # a sync generator
        for item in result:
            yield item


async def response(behaviour: Behaviour, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """Await a unary-response behaviour, sync or async."""
    result = behaviour(request, context)
    return await result if inspect.isawaitable(result) else result
