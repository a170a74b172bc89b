"""CITER's label rule for one position, given the SLM's and the LLM's greedy tokens and rollouts.

A position is non-critical where the SLM's greedy token equals the LLM's (the
shortcut, no rollout needed). Where they differ, both tokens are continued by
the LLM and the results compared: only when the SLM's token leads to worse or
different code is the position critical.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CodeOutcome:
    compiles: bool
    normalized: str  # tokens without comments or layout: formatting-only differences vanish


def code_outcome(prompt: str, completion: str) -> CodeOutcome:
    source = prompt + completion
    try:
        ast.parse(source)
        compiles = True
    except (SyntaxError, ValueError):
        compiles = False
    return CodeOutcome(compiles, _normalize(completion))


def _normalize(code: str) -> str:
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
    pieces = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type not in skipped and token.type != tokenize.ENDMARKER:
                pieces.append(token.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return " ".join(code.split())  # unfinished code: compare whitespace-normalised text
    return " ".join(pieces)


def is_critical(slm_token: int, llm_token: int, slm_branch: CodeOutcome | None, llm_branch: CodeOutcome | None) -> bool:
    """The label: the shortcut when tokens agree, else the rollouts' comparison."""
    if slm_token == llm_token:
        return False
    if slm_branch is None or llm_branch is None:
        raise ValueError("tokens differ: both rollouts are needed")
    if slm_branch.normalized == llm_branch.normalized:
        return False  # both roads lead to the same code
    if slm_branch.compiles and not llm_branch.compiles:
        return False  # the SLM's road is the better one
    return True


def gap_labels(slm_tokens: np.ndarray, llm_tokens: np.ndarray, llm_gap: np.ndarray, gap: float) -> np.ndarray:
    """The cheap rule for positions without rollouts: critical where tokens differ and the LLM's gap exceeds ``gap``.

    ``llm_gap`` is log p_LLM(LLM's token) - log p_LLM(SLM's token) in nats. A
    near-tie means the LLM itself would as soon write the SLM's token, so
    routing there buys little; a large gap is the LLM saying "not that".
    """
    return ((slm_tokens != llm_tokens) & (llm_gap > gap)).astype(np.uint8)
