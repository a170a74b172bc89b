"""A scripted cloud for fault injection: a real gRPC server whose Decode replies the test decides.

Only for faults a real citer-cloud cannot produce on demand (lying, never
answering, refusing on cue); everything else is tested against the real service.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import NamedTuple

import grpc

from citer_protocol import pb, pb_grpc


class Refuse(NamedTuple):
    """A scripted reply that ends the call with this status."""

    code: grpc.StatusCode
    details: str


#: Given a request and the vocabulary size, the reply to send; None means "never answer".
Reply = Callable[[pb.DecodeRequest, int], "pb.DecodeResponse | Refuse | None"]


def length_after(request: pb.DecodeRequest) -> int:
    return request.known_len + len(request.append)


class ScriptedServicer(pb_grpc.LlmServiceServicer):
    """Pairs with the SLM like a real server, then answers Decode as scripted; counts what it received."""

    def __init__(self, fingerprint: str, vocab: int, reply: Reply) -> None:
        self.fingerprint, self.vocab, self.reply = fingerprint, vocab, reply
        self.decode_requests = 0

    def GetInfo(self, request, context) -> pb.InfoResponse:
        return pb.InfoResponse(
            model_name="scripted", tokenizer_fingerprint=self.fingerprint, vocab_size=self.vocab,
            max_context=2048, max_request_tokens=4096, backend="fake",
        )  # fmt: skip

    def Decode(self, request_iterator, context) -> Iterator[pb.DecodeResponse]:
        for request in request_iterator:
            self.decode_requests += 1
            reply = self.reply(request, self.vocab)
            if reply is None:  # silent: hold the stream open and never answer
                while context.is_active():
                    time.sleep(0.02)
                return
            if isinstance(reply, Refuse):
                context.abort(reply.code, reply.details)
            yield reply


def start_scripted(fingerprint: str, vocab: int, reply: Reply) -> tuple[grpc.Server, ScriptedServicer, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = ScriptedServicer(fingerprint, vocab, reply)
    pb_grpc.add_LlmServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, servicer, f"127.0.0.1:{port}"
