"""What the server interceptors share: rewrapping a method handler, reading a stream's results.

Both the error interceptor and the tracing interceptor wrap the behaviour of every handler
kind (unary or streaming request and response) and must accept whatever a response-streaming
behaviour returns.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

__all__ = ["responses", "rewrap"]

Behavior = Callable[..., Any]


def rewrap(
    handler: grpc.RpcMethodHandler,
    *,
    unary: Callable[[Behavior], Behavior],
    stream: Callable[[Behavior], Behavior],
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped.

    Args:
        handler: The handler to wrap.
        unary: Wraps a behaviour with one response (unary or streaming request).
        stream: Wraps a behaviour with a response stream (unary or streaming request);
            the wrapper is an async generator function.
    """
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **options)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **options)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **options)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **options)


async def responses(result: Any) -> AsyncIterator[Any]:
    """The responses of what a response-streaming behaviour returned, in any of its forms.

    An awaitable (the handler writes with ``context.write()`` and returns nothing) gives
    none; an async iterator is closed when it ends or is abandoned; an iterable is read.
    """
    if inspect.isawaitable(result):
        await result
    elif hasattr(result, "__aiter__"):
        async with contextlib.aclosing(result):
            async for response in result:
                yield response
    elif result is not None:
        for response in result:
            yield response
