"""citer-cloud: the gRPC service that hosts the large model for citer-edge clients.

Layers, each testable alone: a ``Backend`` computes (llama.cpp here), the
``SessionManager`` decides what each session holds (delta sync, LRU eviction,
validation), and the servicer only translates protobuf and status codes.
"""

from citer_cloud.backend import Backend, BackendInfo, KvCacheFull
from citer_cloud.sessions import DecodeResult, RequestError, SessionManager

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendInfo",
    "DecodeResult",
    "KvCacheFull",
    "RequestError",
    "SessionManager",
    "__version__",
]
