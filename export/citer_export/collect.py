"""Label collection: the SLM writes a trajectory, the LLM scores every position of it in one teacher-forced pass.

Per position the SLM's router features are recorded, and the LLM's view of the
same prefix: its greedy token and how much less likely it finds the SLM's
token (``llm_gap`` = log p(LLM top) - log p(SLM token), 0 where they agree).
Labels follow CITER: where the greedy tokens agree the position is
non-critical without further work (the shortcut). Where they differ:

- ``--rollout-tokens N`` (N > 0): both tokens are continued greedily by the
  LLM for N tokens and the position is critical only when the SLM's road leads
  to different or broken code (labels.py), CITER's rule with a short horizon;
- otherwise the cheap rule: critical when ``llm_gap`` exceeds ``--gap``, i.e.
  the LLM clearly prefers its own token (near-ties, where the LLM itself is
  unsure, are not worth a round trip).

Why teacher forcing: the lockstep alternative decodes the 1.5B LLM one token
at a time next to the SLM (~0.1 s per position here); scoring the finished
trajectory in one batch costs a prefill. Round 1 follows the SLM alone; later
rounds (``--router``) follow the current router, taking the LLM's token where
it routes, so labels describe the states the deployed router visits. The LLM
is then advanced lazily, only up to each routed position, so no position is
evaluated twice. Output is one ``.npz`` per chunk of prompts; a rerun skips
chunks already written, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from citer_edge.models import DEFAULT_LLM, DEFAULT_SLM, resolve_model
from citer_edge.routing.features import extract_features
from citer_edge.routing.policies import RoutingPolicy
from citer_edge.routing.router import RouterPolicy
from citer_edge.slm import LocalModel
from citer_export.corpus import CodePrompt, shuffled_prompts, stdlib_function_prompts
from citer_export.dataset import RouterDataset
from citer_export.labels import code_outcome, gap_labels, is_critical
from citer_protocol.llama_loader import add_extra_buffers_argument

log = logging.getLogger(__name__)

STOPS: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
DEFAULT_GAP = 1.0  # nats: the LLM finds the SLM's token at most e^-1 ≈ 0.37 times as likely as its own


@dataclass
class TrajectoryLabels:
    """One prompt's positions: features, what each model chose, and the label."""

    features: list[np.ndarray] = field(default_factory=list)
    slm_tokens: list[int] = field(default_factory=list)
    llm_tokens: list[int] = field(default_factory=list)
    llm_gaps: list[float] = field(default_factory=list)
    routed: list[bool] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    rolled_out: list[bool] = field(default_factory=list)

    @property
    def shortcuts(self) -> int:
        return sum(s == t for s, t in zip(self.slm_tokens, self.llm_tokens, strict=True))


class TeacherForcedLlm:
    """The LLM's greedy token and log-prob gap at each position of a growing trajectory.

    Position ``i`` means "after the prompt and ``trajectory[:i]``". Rows are
    computed on demand by feeding the LLM the trajectory tokens it has not
    seen yet in one batch, so each position costs one prefill slot, once.
    """

    def __init__(self, llm: LocalModel, prompt_tokens: list[int]) -> None:
        self.llm = llm
        llm.sync(prompt_tokens)
        self._pending_logits: list[np.ndarray] = [llm.logits.copy()]  # rows not yet reduced
        self._fed = 0
        self.top: list[int] = []
        self.gap: list[float] = []

    def advance(self, trajectory: list[int], slm_tokens: list[int], position: int) -> None:
        """Make rows ``0..position`` available; ``slm_tokens`` must cover them."""
        if position > self._fed:
            scores = self.llm.eval_all(trajectory[self._fed : position])
            self._pending_logits.extend(scores)
            self._fed = position
        while self._pending_logits and len(self.top) < len(slm_tokens):
            logits = self._pending_logits.pop(0)
            index = len(self.top)
            top = int(np.argmax(logits))
            self.top.append(top)
            self.gap.append(float(logits[top] - logits[slm_tokens[index]]))  # log-softmax gap = logit gap

    def top_at(self, position: int) -> int:
        return self.top[position]


def _greedy_text(model: LocalModel, max_tokens: int) -> str:
    """Continue ``model`` greedily from its current state until a stop sequence or ``max_tokens``."""
    pieces: list[str] = []
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


def _rollout(llm: LocalModel, prompt: CodePrompt, prefix: list[int], completion: list[int], first: int, tokens: int):
    """Where the code goes if ``first`` is taken after ``prefix + completion``, continued greedily by the LLM."""
    llm.sync([*prefix, *completion, first])
    text = llm.detokenize([*completion, first]) + _greedy_text(llm, tokens)
    return code_outcome(prompt.prompt, text)


def _stopped(text: str) -> bool:
    return any(stop in text for stop in STOPS)


def label_prompt(
    slm: LocalModel,
    llm: LocalModel,
    prompt: CodePrompt,
    max_tokens: int,
    gap: float = DEFAULT_GAP,
    rollout_tokens: int = 0,
    router: RoutingPolicy | None = None,
) -> TrajectoryLabels:
    """Walk one trajectory and label each of its positions (see the module docstring for the rule)."""
    result = TrajectoryLabels()
    prompt_tokens = slm.tokenize(prompt.prompt)
    slm.sync(prompt_tokens)
    teacher = TeacherForcedLlm(llm, prompt_tokens)
    trajectory: list[int] = []
    completion = b""
    for position in range(max_tokens):
        features = extract_features(slm.logits, slm.hidden)
        slm_token = int(np.argmax(slm.logits))
        result.features.append(features.router_input())
        result.slm_tokens.append(slm_token)
        routed = router is not None and router.wants_cloud(features)
        if routed:
            teacher.advance(trajectory, result.slm_tokens, position)
        chosen = teacher.top_at(position) if routed else slm_token
        result.routed.append(routed)
        if slm.is_end(chosen):
            break
        trajectory.append(chosen)
        completion += slm.token_bytes(chosen)
        if _stopped(completion.decode("utf-8", errors="replace")):
            break
        slm.eval([chosen])
    teacher.advance(trajectory, result.slm_tokens, len(result.slm_tokens) - 1)
    result.llm_tokens, result.llm_gaps = teacher.top, teacher.gap
    labels = gap_labels(np.array(result.slm_tokens), np.array(result.llm_tokens), np.array(result.llm_gaps), gap)
    result.labels = [int(label) for label in labels]
    result.rolled_out = [False] * len(labels)
    if rollout_tokens > 0:
        for position, (slm_token, llm_token) in enumerate(zip(result.slm_tokens, result.llm_tokens, strict=True)):
            if slm_token != llm_token:
                done = trajectory[:position]
                slm_branch = _rollout(llm, prompt, prompt_tokens, done, slm_token, rollout_tokens)
                llm_branch = _rollout(llm, prompt, prompt_tokens, done, llm_token, rollout_tokens)
                result.labels[position] = int(is_critical(slm_token, llm_token, slm_branch, llm_branch))
                result.rolled_out[position] = True
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slm", default=DEFAULT_SLM)
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--out", type=Path, required=True, help="folder for chunk-NNNNN.npz files")
    parser.add_argument("--prompts", type=int, default=1000, help="how many stdlib prompts")
    parser.add_argument("--offset", type=int, default=0, help="skip this many prompts of the shuffled corpus first")
    parser.add_argument("--shuffle-seed", type=int, default=0, help="the corpus order; rounds take disjoint slices")
    parser.add_argument("--chunk", type=int, default=20, help="prompts per output file (the unit of resume)")
    parser.add_argument("--max-tokens", type=int, default=128, help="trajectory length per prompt")
    parser.add_argument("--gap", type=float, default=DEFAULT_GAP,
                        help="nats: where tokens differ and there is no rollout, critical when the LLM's "
                             "log-prob gap to the SLM's token exceeds this")  # fmt: skip
    parser.add_argument("--rollout-tokens", type=int, default=0,
                        help="LLM tokens per rollout branch where tokens differ (0: use --gap instead)")  # fmt: skip
    parser.add_argument("--router", type=Path, help="router.onnx whose trajectories to label (CITER round ≥ 2)")
    parser.add_argument("--cloud-share", type=float, default=0.2, help="the router's target share on trajectories")
    add_extra_buffers_argument(parser, " for both models")


def run(args: argparse.Namespace) -> int:
    slm_path, llm_path = resolve_model(args.slm), resolve_model(args.llm)
    corpus = shuffled_prompts(stdlib_function_prompts(), args.shuffle_seed)[args.offset : args.offset + args.prompts]
    args.out.mkdir(parents=True, exist_ok=True)
    buffers = args.llama_extra_buffers
    with (
        LocalModel(slm_path, n_ctx=2048, extra_buffers=buffers) as slm,
        LocalModel(llm_path, n_ctx=2048, extra_buffers=buffers) as llm,
    ):
        if slm.fingerprint != llm.fingerprint:
            raise SystemExit("citer-export: error: the SLM and the LLM do not share a tokenizer")
        router = RouterPolicy.load(args.router, slm.hidden_size, cloud_share=args.cloud_share) if args.router else None
        for start in tqdm(range(0, len(corpus), args.chunk), desc="chunks"):
            path = args.out / f"chunk-{args.offset + start:05d}.npz"
            if path.exists():
                continue
            began = time.perf_counter()
            done: list[tuple[int, TrajectoryLabels]] = []
            for index, prompt in enumerate(tqdm(corpus[start : start + args.chunk], desc=path.stem, leave=False)):
                done.append((args.offset + start + index, label_prompt(
                    slm, llm, prompt, args.max_tokens, args.gap, args.rollout_tokens, router)))  # fmt: skip
            dataset = _to_dataset(done)
            dataset.meta = {
                "slm": slm_path.name, "llm": llm_path.name, "slm_fingerprint": slm.fingerprint,
                "prompts": [p.prompt_id for p in corpus[start : start + args.chunk]],
                "positions": len(dataset.labels), "shortcuts": sum(t.shortcuts for _, t in done),
                "rollouts": int(dataset.extras["rolled_out"].sum()), "rollout_tokens": args.rollout_tokens,
                "gap": args.gap, "max_tokens": args.max_tokens, "shuffle_seed": args.shuffle_seed,
                "seconds": round(time.perf_counter() - began, 1),
                "router": str(args.router) if args.router else None,
                "cloud_share": args.cloud_share if args.router else 0.0,
                "routed": int(dataset.extras["routed"].sum()),
            }  # fmt: skip
            dataset.save(path)
            log.info("%s: %d positions, %d by shortcut, %d rolled out, %d critical, %.0f s",
                     path.name, len(dataset.labels), dataset.meta["shortcuts"], dataset.meta["rollouts"],
                     int(dataset.labels.sum()), dataset.meta["seconds"])  # fmt: skip
    return 0


def _to_dataset(done: list[tuple[int, TrajectoryLabels]]) -> RouterDataset:
    def column(name: str, dtype: type) -> np.ndarray:
        return np.array([v for _, t in done for v in getattr(t, name)], dtype=dtype)

    return RouterDataset(
        features=np.array([f for _, t in done for f in t.features], dtype=np.float32),
        labels=column("labels", np.uint8),
        groups=np.array([g for g, t in done for _ in t.labels], dtype=np.int32),
        positions=np.array([p for _, t in done for p in range(len(t.labels))], dtype=np.int32),
        extras={
            "slm_token": column("slm_tokens", np.int32),
            "llm_token": column("llm_tokens", np.int32),
            "llm_gap": column("llm_gaps", np.float32),
            "routed": column("routed", np.bool_),
            "rolled_out": column("rolled_out", np.bool_),
        },
    )
