"""Prompts for training, calibrating and timing; none is HumanEval, which is reserved for measuring quality.

The training corpus is every documented public function of this Python's
standard library, turned into a HumanEval-style "implement this" prompt:
reproducible offline, and code the models were asked to write.
"""

from __future__ import annotations

import ast
import random
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

#: Coding prompts for speed measurements (deliberately not HumanEval, which is reserved for quality).
SPEED_PROMPTS: tuple[str, ...] = (
    "Write a Python function that returns the n-th prime number.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write a Python class for a stack with push, pop and peek methods.",
    "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
    "Write a Python function that counts the words in a text file.",
    "Write a Python function that flattens a nested list of arbitrary depth.",
)


@dataclass(frozen=True)
class CodePrompt:
    """A HumanEval-style raw-completion prompt: a signature and docstring to implement."""

    prompt_id: str
    prompt: str


_SKIPPED_STDLIB = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
                   "dist-packages", "__pycache__", "venv", "pydoc_data"}  # fmt: skip


def stdlib_function_prompts(min_doc_chars: int = 40) -> list[CodePrompt]:
    """Every public top-level function with a docstring in this Python's standard library, as a prompt.

    Deterministic for a given Python version; no HumanEval text can appear in it.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    prompts: dict[str, CodePrompt] = {}
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_STDLIB & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < min_doc_chars or '"""' in doc:
                continue
            body = textwrap.indent(doc, "    ")
            text = f'def {node.name}({ast.unparse(node.args)}):\n    """\n{body}\n    """\n'
            prompt_id = f"{module}.{node.name}"
            prompts.setdefault(prompt_id, CodePrompt(prompt_id, text))
    return list(prompts.values())


def sample_prompts(prompts: list[CodePrompt], n: int, seed: int = 0) -> list[CodePrompt]:
    """A reproducible random subset (the stdlib's order clusters similar modules together)."""
    rng = random.Random(seed)
    chosen = rng.sample(prompts, min(n, len(prompts)))
    return sorted(chosen, key=lambda p: p.prompt_id)


def shuffled_prompts(prompts: list[CodePrompt], seed: int) -> list[CodePrompt]:
    """The corpus in a fixed random order, so any slice of it spans many modules (collection rounds take slices)."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    return order
