"""citer-edge: hybrid edge/cloud decoding with token-level routing.

The SLM runs here through llama.cpp; per token a routing policy decides whether
the cloud LLM (a citer-cloud gRPC service) should produce it instead::

    from citer_edge import CloudSession, ConfidencePolicy, HybridGenerator, LocalModel

    slm = LocalModel(resolve_model("qwen2.5-coder-0.5b"))
    cloud = CloudSession("127.0.0.1:50051", slm.fingerprint)
    generator = HybridGenerator(slm, ConfidencePolicy(0.6), cloud)
    for token in generator.stream(slm.tokenize(prompt), max_tokens=200):
        print(token.text, end="")
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from citer_edge.cloud.session import CloudSession
    from citer_edge.decode import GeneratedToken, GenerationResult, GenerationSummary, HybridGenerator
    from citer_edge.errors import CiterEdgeError, CloudAuthError, ModelNotFoundError, TokenizerMismatchError
    from citer_edge.models import pull_model, resolve_model
    from citer_edge.routing.policies import CloudPolicy, ConfidencePolicy, LocalPolicy, RandomPolicy, RoutingPolicy
    from citer_edge.slm import LocalModel
    from citer_protocol import SamplingSettings

# Imported on first use, so that `citer-edge doctor` still starts (and can say so) when a native
# dependency such as llama-cpp-python or onnxruntime is broken.
_LAZY = {
    "CloudSession": "citer_edge.cloud.session",
    "GeneratedToken": "citer_edge.decode",
    "GenerationResult": "citer_edge.decode",
    "GenerationSummary": "citer_edge.decode",
    "HybridGenerator": "citer_edge.decode",
    "CiterEdgeError": "citer_edge.errors",
    "CloudAuthError": "citer_edge.errors",
    "ModelNotFoundError": "citer_edge.errors",
    "TokenizerMismatchError": "citer_edge.errors",
    "pull_model": "citer_edge.models",
    "resolve_model": "citer_edge.models",
    "CloudPolicy": "citer_edge.routing.policies",
    "ConfidencePolicy": "citer_edge.routing.policies",
    "LocalPolicy": "citer_edge.routing.policies",
    "RandomPolicy": "citer_edge.routing.policies",
    "RoutingPolicy": "citer_edge.routing.policies",
    "LocalModel": "citer_edge.slm",
    "SamplingSettings": "citer_protocol",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'citer_edge' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)


__version__ = "0.1.0"

__all__ = [
    "CiterEdgeError",
    "CloudAuthError",
    "CloudPolicy",
    "CloudSession",
    "ConfidencePolicy",
    "GeneratedToken",
    "GenerationResult",
    "GenerationSummary",
    "HybridGenerator",
    "LocalModel",
    "LocalPolicy",
    "ModelNotFoundError",
    "RandomPolicy",
    "RoutingPolicy",
    "SamplingSettings",
    "TokenizerMismatchError",
    "__version__",
    "pull_model",
    "resolve_model",
]
