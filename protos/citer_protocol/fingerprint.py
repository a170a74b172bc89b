"""How a tokenizer is fingerprinted, so the edge can refuse an SLM/LLM pair that would disagree on token ids.

Both sides hash the same thing: the vocabulary size and every token's raw bytes
in id order. Any backend that can list its vocabulary computes the same value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def tokenizer_fingerprint(token_pieces: Iterable[bytes]) -> str:
    """Return ``sha256:<hex>`` over the length-prefixed token pieces, in id order."""
    digest = hashlib.sha256()
    count = 0
    for piece in token_pieces:
        digest.update(len(piece).to_bytes(4, "little"))
        digest.update(piece)
        count += 1
    digest.update(count.to_bytes(8, "little"))
    return f"sha256:{digest.hexdigest()}"


def hf_tokenizer_fingerprint(tokenizer, vocab_size: int) -> str:
    """The fingerprint of a Hugging Face tokenizer, equal to that of the GGUF made from the same model.

    llama.cpp's converter stores each token's vocabulary string (byte-level
    BPE keeps its ``Ġ`` form, SentencePiece its ``▁``) and pads ids the
    tokenizer does not name, up to the model's embedding size, with
    ``[PAD<id>]``; hashing the same strings makes a vLLM server and a GGUF
    client agree that they share token ids.
    """
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    return tokenizer_fingerprint(
        (piece if piece is not None else f"[PAD{token_id}]").encode("utf-8") for token_id, piece in enumerate(pieces)
    )
