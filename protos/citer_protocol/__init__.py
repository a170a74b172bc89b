"""The edge/cloud contract: generated gRPC stubs plus the few definitions both sides must agree on.

This is the only package that both ``citer_edge`` and ``citer_cloud`` import.
"""

from citer_protocol.fingerprint import tokenizer_fingerprint
from citer_protocol.sampling import SamplingSettings, log_softmax, sample_token
from citer_protocol.v1 import citer_pb2 as pb
from citer_protocol.v1 import citer_pb2_grpc as pb_grpc

PROTOCOL_VERSION = "citer.v1"

#: Trailing-metadata keys that carry a machine-readable reason with FAILED_PRECONDITION.
REASON_KEY = "citer-reason"
SERVER_LEN_KEY = "citer-server-len"

#: Request-metadata key naming the session on every Decode stream and CloseSession: a load balancer
#: (Envoy's ring hash) keys on it so that all of a conversation's calls reach the replica holding its state.
SESSION_KEY = "citer-session"

#: The line ``citer-cloud serve`` prints on stdout once bound, followed by the port: how a parent process
#: (``citer-edge --local-cloud``) learns that the server is ready and where.
READY_LINE = "citer-cloud ready on port"

__all__ = [
    "PROTOCOL_VERSION",
    "READY_LINE",
    "REASON_KEY",
    "SERVER_LEN_KEY",
    "SESSION_KEY",
    "SamplingSettings",
    "log_softmax",
    "pb",
    "pb_grpc",
    "sample_token",
    "tokenizer_fingerprint",
]
