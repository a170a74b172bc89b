"""The hybrid loop at its two ends reproduces each model's own greedy output exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from citer_cloud.server import CloudServer
from citer_edge import CloudPolicy, CloudSession, HybridGenerator, LocalModel, LocalPolicy
from tests.conftest import CHAT_PROMPT
from tests.reference import llama_greedy

N_TOKENS = 48


def test_local_policy_reproduces_slm_greedy(smol_slm: LocalModel, smol_path: Path) -> None:
    prompt = smol_slm.tokenize(CHAT_PROMPT)
    result = HybridGenerator(smol_slm, LocalPolicy()).generate(prompt, max_tokens=N_TOKENS)
    assert result.token_ids == llama_greedy(smol_path, prompt, N_TOKENS, split_last=True)
    assert set(result.sources) == {"slm"}
    assert result.summary.cloud_calls == 0


def test_cloud_policy_reproduces_llm_greedy(smol_slm: LocalModel, smol_server: CloudServer, smol_path: Path) -> None:
    prompt = smol_slm.tokenize(CHAT_PROMPT)
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint)
    result = HybridGenerator(smol_slm, CloudPolicy(), cloud).generate(prompt, max_tokens=N_TOKENS)
    assert result.token_ids == llama_greedy(smol_path, prompt, N_TOKENS)
    assert set(result.sources) == {"llm"}
    assert result.summary.cloud_calls == len(result.token_ids)


@pytest.mark.qwen
def test_cloud_policy_reproduces_llm_greedy_on_qwen_pair(
    start_server, qwen_slm_path: Path, qwen_llm_path: Path
) -> None:
    server = start_server(qwen_llm_path, kv_tokens=4096, max_sessions=2)
    with LocalModel(qwen_slm_path, n_ctx=1024) as slm:
        prompt = slm.tokenize(CHAT_PROMPT)
        cloud = CloudSession(server.address, slm.fingerprint)
        result = HybridGenerator(slm, CloudPolicy(), cloud, tokens_per_call=4).generate(prompt, max_tokens=24)
    assert result.token_ids == llama_greedy(qwen_llm_path, prompt, 24)
    assert result.summary.cloud_calls == 6


def test_policy_scores_each_position_once(smol_slm: LocalModel, smol_server: CloudServer) -> None:
    """A trained router costs an ONNX run per call: the loop asks once per decision, local or cloud.

    The policy routes every third decision to the cloud, which answers with two tokens per call, so the
    count must equal SLM tokens plus cloud calls, not the number of tokens produced.
    """
    from citer_edge.routing.features import TokenFeatures
    from citer_edge.routing.policies import RoutingPolicy

    class CountingPolicy(RoutingPolicy):  # our own interface, implemented to count, not a mock of a real part
        name = "counting"
        calls = 0

        def critical_probability(self, features: TokenFeatures) -> float:
            self.calls += 1
            return 1.0 if self.calls % 3 == 0 else 0.0

    policy = CountingPolicy()
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint)
    generator = HybridGenerator(smol_slm, policy, cloud, tokens_per_call=2)
    result = generator.generate(smol_slm.tokenize(CHAT_PROMPT), max_tokens=20)
    summary = result.summary
    assert summary.cloud_calls > 0 and summary.cloud_tokens > summary.cloud_calls, "the cloud path ran"
    assert policy.calls == (summary.tokens - summary.cloud_tokens) + summary.cloud_calls
