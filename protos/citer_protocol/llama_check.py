"""A batched llama.cpp decode in a child process: proof that this machine can prefill a prompt.

The failure it looks for (AMX weight buffers on some Intel Xeons) is a
SIGSEGV inside llama.cpp, which no Python code can catch, so it can only be
seen from outside: ``citer-edge doctor`` and the test suite run
``python -m citer_protocol.llama_check MODEL`` and read its exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from citer_protocol.llama_loader import choose_buffer_policy, context_params, decode_in_order, load_llama_model

#: Enough tokens that llama.cpp runs its batched (matrix-matrix) kernels, not the one-token path.
DEFAULT_TOKENS = 64
#: Text to tokenize into test batches: plain code, no special tokens.
FILLER_TEXT = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"


def batched_decode(model_path: str | os.PathLike[str], n_tokens: int = DEFAULT_TOKENS) -> float:
    """Load the model through the project's loader and decode ``n_tokens`` in one batch; return seconds taken."""
    from llama_cpp import _internals as llama_internals

    model = load_llama_model(model_path)
    size = max(n_tokens, 64)
    ctx = llama_internals.LlamaContext(model=model, params=context_params(size, size), verbose=False)
    try:
        text = FILLER_TEXT * (n_tokens // 8 + 1)
        tokens = model.tokenize(text.encode(), True, False)[:n_tokens]
        if len(tokens) < n_tokens:
            raise RuntimeError(f"could not make {n_tokens} tokens of test text")
        start = time.perf_counter()
        decode_in_order(ctx, tokens)
        return time.perf_counter() - start
    finally:
        ctx.close()
        model.close()


@dataclass(frozen=True)
class DecodeCheck:
    """How the child process ended: ``ok``, or the signal or error that ended it."""

    ok: bool
    returncode: int
    detail: str  # "64 tokens in 0.21 s", "killed by SIGSEGV", or the child's last error line
    buffers: str  # the buffer policy the child used, as ``BufferPolicy.describe`` says it


def check_batched_decode(
    model_path: str | os.PathLike[str],
    n_tokens: int = DEFAULT_TOKENS,
    extra_buffers: str | None = None,
    timeout_s: float = 300.0,
) -> DecodeCheck:
    """Run ``batched_decode`` in a child process and report how it ended (a crash does not reach us)."""
    env = dict(os.environ)
    if extra_buffers is not None:
        env["CITER_LLAMA_EXTRA_BUFFERS"] = extra_buffers
    buffers = choose_buffer_policy(extra_buffers).describe()
    command = [sys.executable, "-m", "citer_protocol.llama_check", str(model_path), "--tokens", str(n_tokens)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return DecodeCheck(False, -1, f"no answer within {timeout_s:.0f} s", buffers)
    if result.returncode == 0:
        return DecodeCheck(True, 0, result.stdout.strip(), buffers)
    lines = result.stderr.strip().splitlines()
    detail = lines[-1] if result.returncode > 0 and lines else describe_exit(result.returncode)
    return DecodeCheck(False, result.returncode, detail, buffers)


def describe_exit(returncode: int) -> str:
    """``ok``, ``killed by SIGSEGV`` or ``exit status N``: how a child process ended, in words."""
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return "ok" if returncode == 0 else f"exit status {returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m citer_protocol.llama_check", description="Decode a batch of tokens with llama.cpp."
    )
    parser.add_argument("model", type=Path, help="GGUF file")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="tokens in the batch")
    args = parser.parse_args(argv)
    try:
        seconds = batched_decode(args.model, args.tokens)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"llama_check: error: {error}", file=sys.stderr)
        return 1
    print(f"{args.tokens} tokens in {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
