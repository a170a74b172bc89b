"""The benchmark harness's own logic: calibration, scoring, stop sequences, resume and curve metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from citer_bench.curves import apgr, cpt
from citer_bench.humaneval import Problem, check_completion, load_problems, truncate_at_stop
from citer_bench.quality import pending, query_level, read_jsonl
from citer_edge.routing.calibration import share_below, threshold_for_share
from citer_export.corpus import stdlib_function_prompts


@pytest.fixture(scope="module")
def first_problem() -> Problem:
    return load_problems(limit=1)[0]  # HumanEval/0: has_close_elements


GOOD = """    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False
"""


def test_known_good_completion_passes(first_problem: Problem) -> None:
    assert check_completion(first_problem, GOOD).passed


@pytest.mark.parametrize(
    "completion",
    [
        "    return False\n",  # wrong answer
        "    return (\n",  # syntax error
        "    import sys\n    sys.exit(0)\n",  # exits 0 before any test runs
    ],
)
def test_known_bad_completions_fail(first_problem: Problem, completion: str) -> None:
    outcome = check_completion(first_problem, completion)
    assert not outcome.passed and outcome.reason.startswith("failed")


def test_endless_completion_times_out(first_problem: Problem) -> None:
    outcome = check_completion(first_problem, "    while True:\n        pass\n", timeout_s=1.0)
    assert outcome == outcome.__class__(False, "timeout")


def test_all_164_problems_load_in_order() -> None:
    problems = load_problems()
    assert len(problems) == 164
    assert [p.task_id for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_truncate_at_the_earliest_stop_sequence() -> None:
    assert truncate_at_stop("    return x\n\ndef other():\n") == ("    return x\n", True)
    assert truncate_at_stop("    return x\nprint(1)\n#c") == ("    return x", True)
    assert truncate_at_stop("    return x") == ("    return x", False)


def test_threshold_hits_the_target_share_exactly_on_distinct_scores() -> None:
    scores = np.linspace(0.0, 1.0, 1001)[1:]  # 1000 distinct confidences
    for share in (0.1, 0.2, 0.3, 0.5):
        assert share_below(scores, threshold_for_share(scores, share)) == pytest.approx(share)
    assert share_below(scores, threshold_for_share(scores, 0.0)) == 0.0
    assert share_below(scores, threshold_for_share(scores, 1.0)) == 1.0


def test_threshold_is_monotonic_in_share() -> None:
    scores = np.random.default_rng(0).beta(5, 1, size=500)
    cuts = [threshold_for_share(scores, s) for s in np.linspace(0, 1, 21)]
    assert all(a <= b for a, b in zip(cuts, cuts[1:], strict=False))
    with pytest.raises(ValueError):
        threshold_for_share(scores, 1.5)


def test_resume_skips_done_problems_and_ignores_a_torn_line(tmp_path: Path, first_problem: Problem) -> None:
    second = Problem("HumanEval/1", "p", "t", "f")
    log = tmp_path / "run.jsonl"
    log.write_text(json.dumps({"task_id": "HumanEval/0", "passed": True}) + "\n" + '{"task_id": "HumanEval/1", "pa')
    assert [r["task_id"] for r in read_jsonl(log)] == ["HumanEval/0"]
    assert pending([first_problem, second], log) == [second]


def test_curve_metrics_on_known_curves() -> None:
    # Quality rises linearly with share from 40 % to 60 %: APGR 0.5, CPT(50 %) at 50 % share.
    linear = [(s, 0.4 + 0.2 * s) for s in (0.1, 0.2, 0.5)]
    assert apgr(linear, 0.4, 0.6) == pytest.approx(0.5)
    assert cpt(linear, 0.4, 0.6, 0.5) == pytest.approx(0.5)
    # Recovers the whole gap at 20 % share: CPT(80 %) = 16 %, APGR = 0.9.
    early = [(0.2, 0.6)]
    assert cpt(early, 0.4, 0.6, 0.8) == pytest.approx(0.16)
    assert apgr(early, 0.4, 0.6) == pytest.approx(0.9)


def test_query_level_takes_whole_answers_by_probe_confidence() -> None:
    def record(task: str, passed: bool, tokens: int, probe: float, cloud: int) -> dict:
        return {"task_id": task, "passed": passed, "tokens": tokens, "cloud_tokens": cloud, "cloud_calls": 0,
                "tokens_sent": 0, "tokens_received": 0, "probe_top1_mean": probe}  # fmt: skip

    slm = [record("a", False, 10, 0.5, 0), record("b", True, 30, 0.9, 0)]
    llm = [record("a", True, 20, 0.5, 20), record("b", True, 40, 0.9, 40)]
    summary = query_level(slm, llm, cut=0.7, target=0.5)
    assert summary["pass_at_1"] == 1.0  # "a" went to the LLM and passed, "b" stayed local and passed
    assert summary["cloud_share"] == pytest.approx(20 / 50)


def test_stdlib_corpus_is_large_and_not_humaneval() -> None:
    prompts = stdlib_function_prompts()
    assert len(prompts) >= 1000
    humaneval_prompts = {p.prompt for p in load_problems()}
    assert not humaneval_prompts & {p.prompt for p in prompts}


def test_report_from_disk_separates_finished_and_unfinished_runs(tmp_path: Path) -> None:
    from citer_bench.quality import summaries_from_disk

    problems = [Problem(f"HumanEval/{i}", "p", "t", "f") for i in range(4)]

    def write(name: str, policy: str, share: float, passed: list[bool], cloud: int) -> None:
        rows = [{"task_id": f"HumanEval/{i}", "policy": policy, "target_share": share, "threshold": 0.5,
                 "passed": ok, "tokens": 10, "cloud_tokens": cloud, "cloud_calls": cloud, "tokens_sent": 0,
                 "tokens_received": cloud, "probe_top1_mean": 0.2 * i}
                for i, ok in enumerate(passed)]  # fmt: skip
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("slm-0.00", "slm", 0.0, [True, False, False, False], 0)
    write("llm-1.00", "llm", 1.0, [True, True, True, False], 10)
    write("confidence-0.20", "confidence", 0.2, [True, True, False, False], 2)
    write("random-0.20", "random", 0.2, [True, False], 2)  # interrupted after two problems
    calibration = {"probe_means": [0.1, 0.3, 0.5, 0.7, 0.9]}
    finished, unfinished = summaries_from_disk(tmp_path, problems, calibration, [0.2])
    by_run = {s["run"]: s for s in finished}
    assert set(by_run) == {"slm-0.00", "llm-1.00", "confidence-0.20", "query-0.20"}
    assert by_run["confidence-0.20"]["pass_at_1"] == 0.5 and by_run["confidence-0.20"]["cloud_share"] == 0.2
    [random_row] = unfinished
    assert random_row["problems"] == 2 and random_row["pass_at_1"] == 0.5
    assert random_row["slm_pass_at_1_same_problems"] == 0.5 and random_row["llm_pass_at_1_same_problems"] == 1.0
