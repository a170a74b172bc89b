"""`citer-bench share`'s own arithmetic: realised shares, the committed fixed runs it reuses, and the
pass@1 comparison at equal realised share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citer_bench.share import (
    FIXED_RUNS,
    fixed_curve_at,
    fixed_humaneval_from_disk,
    humaneval_comparison,
    markdown,
    runs_on_disk,
    summarise,
)


def test_summary_counts_tokens_not_prompts() -> None:
    records = [
        {"tokens": 100, "cloud_tokens": 10, "cloud_fallbacks": 0, "passed": True},
        {"tokens": 300, "cloud_tokens": 90, "cloud_fallbacks": 1, "passed": False},
    ]
    summary = summarise(records, 0.2)
    assert summary["realised_share"] == pytest.approx(0.25)  # 100 of 400 tokens, not the mean of 10 % and 30 %
    assert summary["realised_share_second_half"] == pytest.approx(0.3)
    assert summary["pass_at_1"] == 0.5 and summary["fallbacks"] == 1


def test_committed_fixed_runs_are_read_on_exactly_the_requested_problems() -> None:
    tasks = [f"HumanEval/{i}" for i in range(40)]
    runs = {run["run"]: run for run in fixed_humaneval_from_disk(tasks, FIXED_RUNS)}
    assert {"slm-0.00", "llm-1.00", "router-0.20", "router-0.30"} <= set(runs)
    rows = [json.loads(line) for line in (FIXED_RUNS / "router-0.20.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["task_id"] in tasks]
    expected = sum(r["cloud_tokens"] for r in rows) / sum(r["tokens"] for r in rows)
    assert runs["router-0.20"]["problems"] == 40
    assert runs["router-0.20"]["realised_share"] == pytest.approx(expected)


def test_comparison_reads_the_fixed_curve_at_the_adaptive_share() -> None:
    committed = [
        {"run": "slm-0.00", "target_share": 0.0, "realised_share": 0.0, "pass_at_1": 0.40},
        {"run": "llm-1.00", "target_share": 1.0, "realised_share": 1.0, "pass_at_1": 0.60},
        {"run": "router-0.20", "target_share": 0.2, "realised_share": 0.10, "pass_at_1": 0.50},
    ]
    runs = [{"set": "humaneval", "control": "adaptive", "target_share": 0.2, "realised_share": 0.55,
             "realised_share_second_half": 0.5, "pass_at_1": 0.58, "prompts": 4}]  # fmt: skip
    comparison = humaneval_comparison(runs, committed)
    assert comparison is not None
    (row,) = comparison["rows"]
    assert row["fixed_pass_at_1_at_share"] == pytest.approx(0.55)  # halfway between (0.1, 0.5) and (1.0, 0.6)
    assert row["difference"] == pytest.approx(0.03)
    assert fixed_curve_at([(0.0, 0.4), (1.0, 0.6)], 0.25) == pytest.approx(0.45)
    report = {"machine": {"cpu": "x", "cores": 2, "memory_gib": 1, "date_utc": "d", "git_commit": "c"},
              "settings": {"slm": "s", "llm": "l"}, "runs": runs, "humaneval_comparison": comparison}  # fmt: skip
    table = markdown(report)
    assert "| humaneval (4) | 20% | – | 55.0% (50.0%) | – | – | 58.0% |" in table
    assert "| 20% | 55.0% | 58.0% | 55.0% | +3.0% |" in table


def test_fixed_runs_with_missing_problems_are_not_used(tmp_path: Path) -> None:
    (tmp_path / "router-0.20.jsonl").write_text(
        json.dumps({"task_id": "HumanEval/0", "target_share": 0.2, "tokens": 10, "cloud_tokens": 1, "passed": True})
        + "\n"
    )
    assert fixed_humaneval_from_disk(["HumanEval/0", "HumanEval/1"], tmp_path) == []


def test_the_report_covers_every_run_on_disk_and_fills_in_committed_fixed_runs(tmp_path: Path) -> None:
    tasks = [f"HumanEval/{i}" for i in range(40)]

    def run_file(name: str, control: str, target: float, prompts: list[str]) -> None:
        summary = {"set": name, "control": control, "target_share": target, "realised_share": 0.1,
                   "realised_share_second_half": 0.1, "prompts": len(prompts), "pass_at_1": 0.5}  # fmt: skip
        data = {"summary": summary, "settings": {"prompts": prompts, "max_tokens": 8}, "records": []}
        (tmp_path / f"{name}-{control}-{target:.2f}.json").write_text(json.dumps(data))

    run_file("humaneval", "adaptive", 0.2, tasks)
    run_file("humaneval", "fixed", 0.3, tasks)  # measured here: the committed router-0.30 must not be added
    run_file("chat", "warm", 0.2, ["chat/0"])
    runs, committed = runs_on_disk(tmp_path, reuse_fixed=True)
    keys = sorted((r["set"], r["control"], r.get("run", "")) for r in runs)
    assert ("chat", "warm", "") in keys and ("humaneval", "adaptive", "") in keys
    reused = [r["run"] for r in runs if r.get("source")]
    assert "router-0.20" in reused and "router-0.30" not in reused
    assert {r["run"] for r in committed} >= {"slm-0.00", "llm-1.00"}
