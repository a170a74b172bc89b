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
