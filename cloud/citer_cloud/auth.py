"""Optional auth: every RPC must carry ``authorization: Bearer <token>`` with a known tenant's token.

The check runs before any servicer code, so an unauthenticated call costs
nothing; which tenant a known token belongs to is the servicer's business
(see tenants.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from citer_cloud.tenants import TenantDirectory

#: The one service answered without a token: health says only SERVING or NOT_SERVING.
UNGUARDED_PREFIX = "/grpc.health.v1.Health/"


class TenantAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tenants: TenantDirectory) -> None:
        self._tenants = tenants

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method.startswith(UNGUARDED_PREFIX):
            return await continuation(handler_call_details)  # load balancers probe health without credentials
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self._tenants.tenant_for(str(metadata.get("authorization", ""))) is not None:
            return await continuation(handler_call_details)
        return _deny(await continuation(handler_call_details))


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that fails with UNAUTHENTICATED."""

    async def abort(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
