"""A GGUF model as a Hugging Face folder, for the vLLM backend where only the GGUF is at hand.

vLLM serves Hugging Face folders; this machine's models come as GGUF files.
transformers reads a GGUF (dequantising its weights to the chosen dtype) and
rebuilds the tokenizer from the GGUF's own vocabulary, so the folder's
tokenizer fingerprint equals the GGUF's and citer-edge clients pair with it.
The weights are the quantised model's, dequantised: the same model the
llama.cpp backend serves, not the original checkpoint.

    citer-export hf-folder qwen2.5-coder-1.5b --out ~/models/qwen2.5-coder-1.5b-hf
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def gguf_to_hf_folder(gguf: Path, out: Path, dtype: str = "bfloat16") -> Path:
    """Write config, weights, tokenizer and generation config of ``gguf`` into ``out``; returns ``out``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise SystemExit(f"citer-export: error: hf-folder needs torch, transformers and gguf ({error})") from None
    log.info("reading %s (dequantising to %s)", gguf.name, dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    # transformers marks a model read from a GGUF as "GGUF-quantised" and refuses save_pretrained, although its
    # tensors are plain dequantised ones: write config and weights directly (tied embeddings stored once).
    from safetensors.torch import save_model

    model.config.__dict__.pop("quantization_config", None)
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"))
    tokenizer.save_pretrained(out)
    log.info("wrote %s", out)
    return out
