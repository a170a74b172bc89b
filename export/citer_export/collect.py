"""Label collection: run the SLM and the LLM in lockstep over training prompts and label each position.

At each position the SLM's features are recorded, both models' greedy tokens
compared (the shortcut) and, where they differ, both tokens are rolled out by
the LLM to decide (labels.py). The trajectory follows the SLM (round 1) or, for
CITER's later rounds, the current router: where it routes, the LLM's token is
taken, so labels come from the states the deployed router actually visits.
Output goes to chunk files that a rerun skips, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from citer_edge.features import extract_features
from citer_edge.models import DEFAULT_LLM, DEFAULT_SLM, resolve_model
from citer_edge.router import RouterPolicy
from citer_edge.slm import LocalModel
from citer_export.corpus import CodePrompt, stdlib_function_prompts
from citer_export.dataset import RouterDataset
from citer_export.labels import code_outcome, is_critical

log = logging.getLogger(__name__)

STOPS: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass
class PromptLabels:
    features: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    rollouts: int = 0
    shortcuts: int = 0


def _greedy_text(model: LocalModel, max_tokens: int) -> str:
    """Continue ``model`` greedily from its current state until a stop sequence or ``max_tokens``."""
    pieces = []
    for _ in range(max_tokens):
        token = int(np.argmax(model.logits))
        if model.is_end(token):
            break
        pieces.append(model.token_bytes(token).decode("utf-8", errors="replace"))
        text = "".join(pieces)
        if any(stop in text for stop in STOPS):
            return text[: min(text.find(s) for s in STOPS if s in text)]
        model.eval([token])
    return "".join(pieces)


def _rollout(llm: LocalModel, prefix: list[int], first: int, prompt_text: str, completion: str, tokens: int):
    llm.sync([*prefix, first])
    text = completion + llm.token_bytes(first).decode("utf-8", errors="replace") + _greedy_text(llm, tokens)
    return code_outcome(prompt_text, text)


def label_prompt(
    slm: LocalModel,
    llm: LocalModel,
    prompt: CodePrompt,
    max_tokens: int,
    rollout_tokens: int,
    router: RouterPolicy | None = None,
) -> PromptLabels:
    result = PromptLabels()
    context = slm.tokenize(prompt.prompt)
    slm.reset()
    llm.reset()
    slm.sync(context)
    llm.sync(context)
    completion = ""
    for _ in range(max_tokens):
        features = extract_features(slm.logits, slm.hidden)
        slm_token, llm_token = int(np.argmax(slm.logits)), int(np.argmax(llm.logits))
        if slm_token == llm_token:
            critical = False
            result.shortcuts += 1
        else:
            slm_branch = _rollout(llm, context, slm_token, prompt.prompt, completion, rollout_tokens)
            llm_branch = _rollout(llm, context, llm_token, prompt.prompt, completion, rollout_tokens)
            critical = is_critical(slm_token, llm_token, slm_branch, llm_branch)
            result.rollouts += 1
        result.features.append(features.router_input())
        result.labels.append(int(critical))
        chosen = llm_token if router is not None and router.wants_cloud(features) else slm_token
        if slm.is_end(chosen):
            break
        completion += slm.token_bytes(chosen).decode("utf-8", errors="replace")
        if any(stop in completion for stop in STOPS):
            break
        context.append(chosen)
        slm.eval([chosen])
        llm.sync(context)  # after a rollout this re-reads only the changed tail
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slm", default=DEFAULT_SLM)
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--out", type=Path, required=True, help="folder for chunk-NNNNN.npz files")
    parser.add_argument("--prompts", type=int, default=1000, help="how many stdlib prompts (in corpus order)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many prompts first")
    parser.add_argument("--chunk", type=int, default=20, help="prompts per output file (the unit of resume)")
    parser.add_argument("--max-tokens", type=int, default=128, help="trajectory length per prompt")
    parser.add_argument("--rollout-tokens", type=int, default=48, help="LLM tokens per rollout branch")
    parser.add_argument("--router", type=Path, help="router.onnx whose trajectories to label (CITER round ≥ 2)")
    parser.add_argument("--cloud-share", type=float, default=0.2, help="the router's target share on trajectories")


def run(args: argparse.Namespace) -> int:
    slm_path, llm_path = resolve_model(args.slm), resolve_model(args.llm)
    corpus = stdlib_function_prompts()[args.offset : args.offset + args.prompts]
    args.out.mkdir(parents=True, exist_ok=True)
    with LocalModel(slm_path, n_ctx=2048) as slm, LocalModel(llm_path, n_ctx=2048) as llm:
        if slm.fingerprint != llm.fingerprint:
            raise SystemExit("citer-export: error: the SLM and the LLM do not share a tokenizer")
        router = RouterPolicy.load(args.router, slm.hidden_size, cloud_share=args.cloud_share) if args.router else None
        for start in tqdm(range(0, len(corpus), args.chunk), desc="chunks"):
            path = args.out / f"chunk-{args.offset + start:05d}.npz"
            if path.exists():
                continue
            rows, labels, groups, positions, rollouts, shortcuts = [], [], [], [], 0, 0
            for index, prompt in enumerate(tqdm(corpus[start : start + args.chunk], desc=path.stem, leave=False)):
                done = label_prompt(slm, llm, prompt, args.max_tokens, args.rollout_tokens, router)
                rows += done.features
                labels += done.labels
                groups += [args.offset + start + index] * len(done.labels)
                positions += list(range(len(done.labels)))
                rollouts += done.rollouts
                shortcuts += done.shortcuts
            meta = {"slm": slm_path.name, "llm": llm_path.name, "slm_fingerprint": slm.fingerprint,
                    "prompts": [p.prompt_id for p in corpus[start : start + args.chunk]],
                    "rollouts": rollouts, "shortcuts": shortcuts, "rollout_tokens": args.rollout_tokens,
                    "max_tokens": args.max_tokens, "router": str(args.router) if args.router else None}  # fmt: skip
            dataset = RouterDataset(
                np.array(rows, dtype=np.float32),
                np.array(labels, dtype=np.uint8),
                np.array(groups, dtype=np.int32),
                np.array(positions, dtype=np.int32),
                meta,
            )
            dataset.save(path)
            log.info("%s: %d positions, %d by shortcut, %d by rollout, %d critical",
                     path.name, len(labels), shortcuts, rollouts, int(sum(labels)))  # fmt: skip
    return 0
