"""The interceptor that applies `controller/core/access.py` to every Cluster call.

An interceptor sees the method and the metadata but not the peer's certificate, so it wraps the
handler: the wrapper reads the auth context, asks the rules, and aborts or goes on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio

from xpuctl.common import tls
from xpuctl.controller import hub
from xpuctl.controller.core import access
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb

log = logging.getLogger("xpu.controller.grpc")

CLUSTER = cpb.DESCRIPTOR.services_by_name["Cluster"].full_name


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Checks every Cluster call against the hub's access policy before its handler runs."""

    def __init__(self, state: hub.Hub) -> None:
        """Check calls against `state.policy`."""
        self.state = state

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The handler, wrapped when the call is a Cluster call and access is enforced."""
        handler = await continuation(details)
        method_path: str = details.method  # type: ignore[attr-defined]
        if handler is None or not self.state.policy.enforced or not method_path.startswith(f"/{CLUSTER}/"):
            return handler
        method = method_path.rsplit("/", 1)[1]
        token = bearer(details.invocation_metadata)  # type: ignore[attr-defined]

        async def check(context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
            """Abort the call (abort raises) when the rules refuse it."""
            denial = access.check_call(self.state.policy, method, tls.peer_identities(context), token)
            if denial is not None:
                self.state.denied[denial.code] = self.state.denied.get(denial.code, 0) + 1
                log.warning("refused %s from %s: %s", method, context.peer(), denial.message)
                await context.abort(getattr(grpc.StatusCode, denial.code), denial.message)

        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def streaming(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:  # type: ignore[type-arg]
                await check(context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                streaming,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner = handler.unary_unary

        async def unary(request: object, context: grpc.aio.ServicerContext) -> object:  # type: ignore[type-arg]
            await check(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


def bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token of an `authorization: Bearer TOKEN` header, if any ("" for another scheme)."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None
