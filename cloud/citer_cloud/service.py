"""The gRPC servicer: translates protobuf to engine requests and RequestError to status codes.

All model work runs on the engine's thread (see engine.py), which batches the
requests of concurrent streams; the asyncio loop only awaits their futures.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import grpc

from citer_cloud import __version__
from citer_cloud.engine import Engine
from citer_cloud.generation_engine import GenerationEngine
from citer_cloud.metrics import ServiceMetrics
from citer_cloud.sessions import DecodeCall, DecodeResult, ErrorKind, RequestError
from citer_cloud.tenants import Tenant, TenantDirectory
from citer_protocol import REASON_KEY, SERVER_LEN_KEY, SamplingSettings, pb, pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


def sampling_from_proto(message: pb.SamplingParams) -> SamplingSettings:
    try:
        return SamplingSettings(temperature=message.temperature, top_p=message.top_p or 1.0, seed=message.seed)
    except ValueError as error:
        raise RequestError(ErrorKind.INVALID_ARGUMENT, str(error)) from None


class LlmServicer(pb_grpc.LlmServiceServicer):
    def __init__(
        self,
        engine: Engine | GenerationEngine,
        metrics: ServiceMetrics | None = None,
        tenants: TenantDirectory | None = None,
    ) -> None:
        self._engine = engine
        self._sessions = engine.sessions  # read-only facts (info, limits); all calls go through the engine
        self._metrics = metrics
        self._tenants = tenants

    def _tenant(self, context: grpc.aio.ServicerContext) -> Tenant | None:
        """Who is calling (the auth interceptor already refused unknown tokens); None without tenants."""
        if self._tenants is None:
            return None
        metadata = dict(context.invocation_metadata() or ())
        return self._tenants.tenant_for(str(metadata.get("authorization", "")))

    def _admit(self, tenant: Tenant | None) -> None:
        if tenant is not None and not self._tenants.admit_request(tenant):
            raise RequestError(
                ErrorKind.RESOURCE_EXHAUSTED,
                f"tenant {tenant.name!r} is over its limit of {tenant.max_requests_per_s:g} requests per second",
            )

    def _observe(self, rpc: str, started: float, error: RequestError | None = None) -> None:
        if self._metrics is not None:
            self._metrics.observe(rpc, error.kind.value if error else "OK", time.perf_counter() - started)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._engine.call(fn))

    async def _decode(
        self,
        tenant: Tenant | None,
        session_id: str,
        known_len: int,
        append: Sequence[int],
        max_tokens: int,
        sampling: SamplingSettings,
        admit: bool = True,
        verify_from: int = 0,
        span_below: float = 0.0,
    ) -> DecodeResult:
        if admit:
            self._admit(tenant)
        limits = tenant.limits if tenant else None
        call = DecodeCall(
            session_id, known_len, append, max_tokens, sampling, _namespace(tenant), limits, verify_from, span_below
        )
        ticket = self._engine.decode(call)
        try:
            return await asyncio.shield(asyncio.wrap_future(ticket.future))
        except asyncio.CancelledError:
            ticket.cancel()  # the client went away: its work stops at the engine's next step
            raise

    async def GetInfo(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        self._observe("GetInfo", time.perf_counter())
        info = self._sessions.backend.info
        return pb.InfoResponse(
            model_name=info.model_name,
            tokenizer_fingerprint=info.tokenizer_fingerprint,
            vocab_size=info.vocab_size,
            max_context=info.max_context,
            server_version=__version__,
            backend=info.backend,
            max_request_tokens=self._sessions.max_request_tokens,
            max_sessions=info.n_slots,
            features=list(self._sessions.features),
        )

    async def Decode(
        self, request_iterator: AsyncIterator[pb.DecodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DecodeResponse]:
        tenant = self._tenant(context)
        async for request in request_iterator:
            started = time.perf_counter()
            try:
                sampling = sampling_from_proto(request.sampling)
                result = await self._decode(
                    tenant,
                    request.session_id,
                    request.known_len,
                    list(request.append),
                    request.max_tokens,
                    sampling,
                    verify_from=request.verify_from,
                    span_below=request.span_below,
                )
            except RequestError as error:
                self._observe("Decode", started, error)
                await _abort(context, error)
                return
            self._observe("Decode", started)
            yield pb.DecodeResponse(
                tokens=result.tokens,
                logprobs=result.logprobs,
                new_len=result.new_len,
                finished=result.finished,
                accepted=result.accepted,
                verified=result.verified,
            )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        """A whole LLM-only completion (the cloud-only baseline): one engine request per token, temporary session."""
        session_id = f"_generate-{uuid.uuid4().hex}"
        known_len, append = 0, list(request.prompt)
        started = time.perf_counter()
        tenant = self._tenant(context)
        namespace = _namespace(tenant)
        try:
            sampling = sampling_from_proto(request.sampling)
            if not append:
                raise RequestError(ErrorKind.INVALID_ARGUMENT, "prompt is empty")
            for step in range(max(1, request.max_tokens)):
                result = await self._decode(  # one Generate is one request for the tenant's rate limit
                    tenant, session_id, known_len, append, min(1, request.max_tokens), sampling, admit=step == 0
                )
                for token, logprob in zip(result.tokens, result.logprobs, strict=True):
                    yield pb.GenerateResponse(token=token, logprob=logprob, finished=result.finished)
                if result.finished:
                    break
                known_len, append = result.new_len, []
        except RequestError as error:
            self._observe("Generate", started, error)
            await _abort(context, error)
        else:
            self._observe("Generate", started)
        finally:
            self._engine.call(lambda: self._sessions.close(session_id, namespace))  # even if the client went away

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        started = time.perf_counter()
        namespace = _namespace(self._tenant(context))
        existed = await self._call(lambda: self._sessions.close(request.session_id, namespace))
        self._observe("CloseSession", started)
        return pb.CloseSessionResponse(existed=existed)

    async def GetStats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        started = time.perf_counter()
        stats = await self._call(self._sessions.stats)
        self._observe("GetStats", started)
        return pb.StatsResponse(**vars(stats))

    def shutdown(self) -> None:
        self._engine.shutdown()


def _namespace(tenant: Tenant | None) -> str:
    """Where the caller's sessions live: its tenant's name, or the one shared namespace without tenants."""
    return tenant.name if tenant else ""


async def _abort(context: grpc.aio.ServicerContext, error: RequestError) -> None:
    metadata: tuple[tuple[str, str], ...] = ()
    if error.reason:
        metadata = ((REASON_KEY, error.reason), (SERVER_LEN_KEY, str(error.server_len)))
    log.info("rejected request: %s %s", error.kind.value, error.reason)  # the message may name a session id
    log.debug("rejected request: %s", error)
    await context.abort(getattr(grpc.StatusCode, error.kind.value), str(error), trailing_metadata=metadata)
