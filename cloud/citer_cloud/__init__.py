"""citer-cloud: the gRPC service that hosts the large model for citer-edge clients.

Layers, each testable alone: a backend computes — llama.cpp (a
``BatchingBackend``: logits for many sessions in one forward pass) or vLLM (a
``GeneratingBackend``: it batches and samples inside its own engine) — the
``SessionManager`` decides what each session holds (delta sync, LRU eviction,
validation, limits, sampling for llama.cpp), an engine runs the requests
(``Engine`` batches llama.cpp steps on one thread, ``GenerationEngine`` hands
them to vLLM on the event loop), and the servicer only translates protobuf and
status codes.
"""

from citer_cloud.backend import (
    Backend,
    BackendInfo,
    BatchingBackend,
    GeneratingBackend,
    Generation,
    KvCacheFull,
    SlotChunk,
)
from citer_cloud.engine import Engine
from citer_cloud.generation_engine import GenerationEngine
from citer_cloud.sessions import DecodeCall, DecodeResult, RequestError, SessionManager

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendInfo",
    "BatchingBackend",
    "DecodeCall",
    "DecodeResult",
    "Engine",
    "GeneratingBackend",
    "Generation",
    "GenerationEngine",
    "KvCacheFull",
    "RequestError",
    "SessionManager",
    "SlotChunk",
    "__version__",
]
