"""The interceptor that applies `controller/core/access.py` to every Cluster call.

An interceptor sees the method and the metadata but not the peer's certificate, so it wraps the
handler: the wrapper reads the auth context, asks the rules, and aborts or goes on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
import grpc.aio

from xpuctl.common import tls
from xpuctl.controller import errors, hub
from xpuctl.controller.core import access
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb

log = logging.getLogger("xpu.controller.grpc")

CLUSTER = cpb.DESCRIPTOR.services_by_name["Cluster"].full_name
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# On a grpc.aio server the handlers are coroutines; the stubs describe those of the sync server.
AsyncStream: TypeAlias = Callable[[object, Context], AsyncIterator[object]]
AsyncUnary: TypeAlias = Callable[[object, Context], Awaitable[object]]


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in the stubs
    """Checks every Cluster call against the hub's access policy before its handler runs."""

    def __init__(self, state: hub.Hub) -> None:
        """Check calls against `state.policy`."""
        self.state = state

    async def intercept_service(  # type: ignore[override]  # None: an unknown method (the stubs omit it)
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """The handler, wrapped when the call is a Cluster call and access is enforced."""
        handler = await continuation(details)
        method_path: str = details.method
        if handler is None or not self.state.policy.enforced or not method_path.startswith(f"/{CLUSTER}/"):
            return handler
        method = method_path.rsplit("/", 1)[1]
        token = access.bearer(details.invocation_metadata)

        async def check(context: Context) -> None:
            """Abort the call (abort raises) when the rules refuse it."""
            denial = access.check_call(self.state.policy, method, tls.peer_identities(context), token)
            if denial is not None:
                self.state.denied[denial.code] = self.state.denied.get(denial.code, 0) + 1
                log.warning("refused %s from %s: %s", method, context.peer(), denial.message[:200])
                await context.abort(getattr(grpc.StatusCode, denial.code), errors.bounded(denial.message))

        if handler.unary_stream is not None:
            inner_stream = cast("AsyncStream", handler.unary_stream)

            async def streaming(request: object, context: Context) -> AsyncIterator[object]:
                await check(context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                streaming,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner = cast("AsyncUnary", handler.unary_unary)

        async def unary(request: object, context: Context) -> object:
            await check(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
