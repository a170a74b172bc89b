"""citer-cloud: the gRPC service that hosts the large model for citer-edge clients.

Layers, each testable alone: a ``Backend`` computes (llama.cpp here) and can
extend many sessions in one forward pass, the ``SessionManager`` decides what
each session holds (delta sync, LRU eviction, validation, sampling), the
``Engine`` batches the steps of concurrent requests on one thread, and the
servicer only translates protobuf and status codes.
"""

from citer_cloud.backend import Backend, BackendInfo, KvCacheFull, SlotChunk
from citer_cloud.engine import Engine
from citer_cloud.sessions import DecodeCall, DecodeResult, RequestError, SessionManager

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendInfo",
    "DecodeCall",
    "DecodeResult",
    "Engine",
    "KvCacheFull",
    "RequestError",
    "SessionManager",
    "SlotChunk",
    "__version__",
]
