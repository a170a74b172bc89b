"""The edge refuses an LLM whose tokenizer differs from the SLM's: token ids would mean other things."""

from __future__ import annotations

import pytest

from citer_edge import CloudPolicy, CloudSession, HybridGenerator, LocalModel, TokenizerMismatchError


@pytest.mark.qwen  # the other vocabulary comes from the default Qwen SLM (pulled once, 491 MB)
def test_mismatched_tokenizers_are_refused_with_a_clear_error(
    start_server, smol_slm: LocalModel, qwen_slm_path
) -> None:
    server = start_server(qwen_slm_path, kv_tokens=1024, max_sessions=1)
    cloud = CloudSession(server.address, smol_slm.fingerprint)
    with pytest.raises(TokenizerMismatchError, match="different tokenizer"):
        HybridGenerator(smol_slm, CloudPolicy(), cloud)


def test_matching_pair_is_accepted(smol_server, smol_slm: LocalModel) -> None:
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint)
    assert cloud.connect()
    assert cloud.info is not None and cloud.info.tokenizer_fingerprint == smol_slm.fingerprint


@pytest.mark.qwen
def test_default_qwen_pair_shares_a_tokenizer(qwen_slm_path, qwen_llm_path) -> None:
    with LocalModel(qwen_slm_path, n_ctx=256) as small, LocalModel(qwen_llm_path, n_ctx=256) as large:
        assert small.n_vocab == large.n_vocab == 151936
        assert small.fingerprint == large.fingerprint
