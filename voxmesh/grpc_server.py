"""What every Voxmesh gRPC server has: health, reflection, and one interceptor that turns
`ApiError` into gRPC statuses and can refuse callers before the servicer runs.

Servicers follow grpc's asyncio examples: `async def` for unary RPCs and async generators
(`yield`) for streaming ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from voxmesh.errors import ApiError, InvalidArgument
from voxmesh.observability import RPC_REQUESTS, RPC_SECONDS, continue_trace, current_trace

log = logging.getLogger(__name__)


class Lease(Protocol):
    """What a guard may hand back for an admitted call: a stream runs until `ended()` returns
    (the caller's sign-in was revoked or expired), then ends with the error it returns."""

    async def ended(self) -> ApiError: ...


Guard = Callable[[str, grpc.aio.ServicerContext], Awaitable[Lease | None]]
"""Runs before an RPC of a guarded service (method name, context); raises ApiError to refuse."""


async def _abort(context: grpc.aio.ServicerContext, err: ApiError) -> None:
    await context.abort(err.code, err.message, trailing_metadata=err.trailing_metadata())


Classify = Callable[[BaseException], ApiError | None]
"""Says which exceptions are outages of a dependency (e.g. UNAVAILABLE), not bugs."""


async def _translate(
    context: grpc.aio.ServicerContext, method: str, exc: Exception, classify: Classify | None
) -> None:
    """End the call with the status `exc` stands for (aborts re-raise untouched)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, ApiError):
        await _abort(context, exc)
    outage = classify(exc) if classify is not None else None
    if outage is not None:
        log.warning("%s: %s (%s: %s)", method, outage.message, exc.__class__.__name__, exc)
        await _abort(context, outage)
    await _abort_internal(context, method, exc)


async def _abort_internal(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    ref = uuid.uuid4().hex[:12]
    log.exception("unexpected error in %s (ref %s)", method, ref, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error (reference {ref}); the server log has details"
    )


class _Undecodable:
    """Stands in for a request message whose bytes could not be parsed, so the call can end
    with INVALID_ARGUMENT instead of grpc's UNKNOWN naming a Python exception."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name

    def error(self) -> ApiError:
        return InvalidArgument(
            f"the request is not a valid {self.message_name} message (corrupt bytes, or a "
            "string field that is not UTF-8); check the client's generated code and encoding"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    message_name = getattr(getattr(deserializer, "__self__", None), "__name__", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _Undecodable(message_name)

    return parse


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error()
        yield request


def _check(request: Any) -> Any:
    """A unary request, or for client streams an iterator that refuses undecodable items."""
    if isinstance(request, _Undecodable):
        raise request.error()
    if hasattr(request, "__aiter__"):
        return _checked(request)
    return request


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handlers of every RPC whose full method name starts with `prefix`.

    Before the call it runs `guard` (authentication and access rules live there); during the
    call it maps `ApiError` to its status and code, an outage `classify` recognises to its
    status (UNAVAILABLE), and any other exception to INTERNAL with a reference id that is also
    logged, so no Python traceback ever reaches a client. Every call
    runs in a span of the caller's W3C trace (`traceparent` metadata) or of a new one, and is
    counted by method and status code.
    """

    def __init__(
        self,
        guard: Guard | None = None,
        prefix: str = "/voxmesh.",
        classify: Classify | None = None,
    ) -> None:
        self._guard = guard
        self._prefix = prefix
        self._classify = classify

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not method.startswith(self._prefix):
            return handler
        return self._wrap(handler, method)

    def _wrap(self, handler: Any, method: str) -> grpc.RpcMethodHandler:
        guard, classify = self._guard, self._classify

        def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = current_trace.set(continue_trace(_traceparent(context)))
                started = time.perf_counter()
                try:
                    if guard is not None:
                        await guard(method, context)
                    request = _check(request)
                    return await behavior(request, context)
                except Exception as exc:
                    await _translate(context, method, exc, classify)
                finally:
                    RPC_SECONDS.labels(method).observe(time.perf_counter() - started)
                    _count(method, context)
                    current_trace.reset(token)

            return call

        def streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                current_trace.set(continue_trace(_traceparent(context)))  # this call's own task
                try:
                    lease = await guard(method, context) if guard is not None else None
                    request = _check(request)
                    async for response in _until_ended(behavior(request, context), lease):
                        yield response
                except Exception as exc:
                    await _translate(context, method, exc, classify)
                finally:
                    _count(method, context)

            return call

        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kwargs)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kwargs)
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)


async def _until_ended(responses: AsyncIterator[Any], lease: Lease | None) -> AsyncIterator[Any]:
    """The stream's responses until it ends by itself or its lease ends (then its error).

    No task per response (a stream may carry thousands a second): one callback waits for the
    lease's end and, if the stream is waiting for its next response then, cancels that wait;
    if a response is being written, the end is raised before the next one is asked for."""
    if lease is None:
        async for response in responses:
            yield response
        return
    task = asyncio.current_task()
    assert task is not None
    waiting = False
    reason: list[BaseException] = []

    def on_end(ended: asyncio.Future[ApiError]) -> None:
        if ended.cancelled():
            return
        reason.append(ended.result())
        if waiting:
            task.cancel()

    ended = asyncio.ensure_future(lease.ended())
    ended.add_done_callback(on_end)
    try:
        while not reason:
            waiting = True
            try:
                response = await anext(responses)  # type: ignore[call-overload]
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not reason:
                    raise
                task.uncancel()  # the cancel was ours: the stream ends with the lease's error
                break
            finally:
                waiting = False
            yield response
        raise reason[0]
    finally:
        if not ended.done():
            ended.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ended
        aclose = getattr(responses, "aclose", None)
        if aclose is not None:
            await aclose()


def _traceparent(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _count(method: str, context: grpc.aio.ServicerContext) -> None:
    code = context.code()
    name = (
        code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
    )
    RPC_REQUESTS.labels(method, name).inc()


def add_operator_services(server: grpc.aio.Server, service_names: Iterable[str]) -> Any:
    """Register grpc.health.v1 (overall and per service) and server reflection, so operators can
    `grpcurl -plaintext HOST:PORT list` and load balancers can probe health."""
    names = list(service_names)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return health_servicer


async def set_serving(health_servicer: Any, service_names: Iterable[str], serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *service_names]:
        await health_servicer.set(name, status)
