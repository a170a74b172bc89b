"""The contract itself: stubs match the .proto, and the shared definitions behave as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from citer_protocol import SamplingSettings, log_softmax, sample_token, tokenizer_fingerprint
from citer_protocol.generate import PROTO_FILE, PROTO_ROOT, generate_stubs


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    for generated in generate_stubs(tmp_path):
        committed = PROTO_ROOT / PROTO_FILE.parent / generated.name
        assert committed.read_text() == generated.read_text(), (
            f"{committed.name} is stale: run `python protos/citer_protocol/generate.py`"
        )


def test_fingerprint_depends_on_every_piece_and_its_position() -> None:
    base = tokenizer_fingerprint([b"a", b"b", b"c"])
    assert base == tokenizer_fingerprint([b"a", b"b", b"c"])
    assert base != tokenizer_fingerprint([b"a", b"c", b"b"])
    assert base != tokenizer_fingerprint([b"a", b"b"])
    assert tokenizer_fingerprint([b"ab", b""]) != tokenizer_fingerprint([b"a", b"b"])  # length-prefixed
    assert base.startswith("sha256:")


def test_greedy_sampling_is_argmax() -> None:
    logits = np.array([0.1, 2.0, 1.9, -3.0], dtype=np.float32)
    assert sample_token(logits, SamplingSettings(), np.random.default_rng(0)) == 1


def test_seeded_sampling_is_reproducible_and_respects_top_p() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    settings = SamplingSettings(temperature=1.0, top_p=0.8, seed=7)
    draws = [sample_token(logits, settings, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1
    rng = np.random.default_rng(1)
    seen = {sample_token(logits, settings, rng) for _ in range(500)}
    assert seen == {0, 1}  # top-p 0.8 keeps exactly the 0.5 and 0.3 tokens


def test_invalid_sampling_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=-0.1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=1.5)


def test_log_softmax_normalises() -> None:
    values = log_softmax(np.array([1000.0, 1000.0, 0.0]))
    assert np.isclose(np.exp(values).sum(), 1.0)
    assert np.isclose(values[0], np.log(0.5))
