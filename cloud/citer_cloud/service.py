"""The gRPC servicer: translates protobuf to SessionManager calls and RequestError to status codes.

All model work runs on one worker thread (the backend is not thread-safe), so
the asyncio loop stays free to accept streams while a step computes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc

from citer_cloud import __version__
from citer_cloud.sessions import ErrorKind, RequestError, SessionManager
from citer_protocol import REASON_KEY, SERVER_LEN_KEY, SamplingSettings, pb, pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


def sampling_from_proto(message: pb.SamplingParams) -> SamplingSettings:
    try:
        return SamplingSettings(temperature=message.temperature, top_p=message.top_p or 1.0, seed=message.seed)
    except ValueError as error:
        raise RequestError(ErrorKind.INVALID_ARGUMENT, str(error)) from None


class LlmServicer(pb_grpc.LlmServiceServicer):
    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="citer-backend")

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    async def GetInfo(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
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
        )

    async def Decode(
        self, request_iterator: AsyncIterator[pb.DecodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DecodeResponse]:
        async for request in request_iterator:
            try:
                sampling = sampling_from_proto(request.sampling)
                result = await self._run(
                    lambda request=request, sampling=sampling: self._sessions.decode(
                        request.session_id, request.known_len, list(request.append), request.max_tokens, sampling
                    )
                )
            except RequestError as error:
                await _abort(context, error)
                return
            yield pb.DecodeResponse(
                tokens=result.tokens, logprobs=result.logprobs, new_len=result.new_len, finished=result.finished
            )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            sampling = sampling_from_proto(request.sampling)
        except RequestError as error:
            await _abort(context, error)
            return
        steps = self._sessions.generate(list(request.prompt), request.max_tokens, sampling)
        try:
            while (result := await self._run(lambda: next(steps, None))) is not None:
                for token, logprob in zip(result.tokens, result.logprobs, strict=True):
                    yield pb.GenerateResponse(token=token, logprob=logprob, finished=result.finished)
        except RequestError as error:
            await _abort(context, error)
        finally:
            self._worker.submit(steps.close)  # frees the session even when the client went away

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        existed = await self._run(lambda: self._sessions.close(request.session_id))
        return pb.CloseSessionResponse(existed=existed)

    async def GetStats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        return pb.StatsResponse(**vars(await self._run(self._sessions.stats)))

    def shutdown(self) -> None:
        self._worker.shutdown(wait=True)


async def _abort(context: grpc.aio.ServicerContext, error: RequestError) -> None:
    metadata: tuple[tuple[str, str], ...] = ()
    if error.reason:
        metadata = ((REASON_KEY, error.reason), (SERVER_LEN_KEY, str(error.server_len)))
    log.info("rejected request: %s %s", error.kind.value, error)
    await context.abort(getattr(grpc.StatusCode, error.kind.value), str(error), trailing_metadata=metadata)
