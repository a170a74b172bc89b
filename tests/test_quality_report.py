"""The quality report's per-problem statistics: mixing categories, paired bootstrap, McNemar, query-row costs,
and a report rebuilt from JSON lines of runs it has never heard of, without any model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from citer_bench import paired
from citer_bench.quality import lossless_comparison, main, query_level, results_from_disk

# -- categories and transitions ---------------------------------------------------------------------------------


def _outcomes(bits: str) -> dict[str, bool]:
    """'1011' -> {"HumanEval/0": True, "HumanEval/1": False, ...}: a run as a string of passes."""
    return {f"HumanEval/{i}": bit == "1" for i, bit in enumerate(bits)}


# Ten problems:   both right 0-2, only LLM right 3-5, only SLM right 6-7, both wrong 8-9.
SLM = _outcomes("1110001100")
LLM = _outcomes("1111110000")
# The hybrid breaks 1 (both right), rescues 3 and 4, loses 6 and 7, gains 9.
HYBRID = _outcomes("1011100001")


def test_end_categories_are_counted_exactly() -> None:
    categories = paired.categorise(SLM, LLM)
    assert paired.category_sizes(categories) == {"both_right": 3, "only_llm_right": 3, "only_slm_right": 2,
                                                 "both_wrong": 2}  # fmt: skip
    assert paired.tasks_by_category(categories)["only_slm_right"] == ["HumanEval/6", "HumanEval/7"]


def test_transitions_count_broken_rescued_lost_and_gained() -> None:
    mixing = paired.transitions(paired.categorise(SLM, LLM), HYBRID)
    assert {k: mixing[k] for k in ("broken", "rescued", "lost_slm_wins", "gained")} == {
        "broken": 1, "rescued": 2, "lost_slm_wins": 2, "gained": 1}  # fmt: skip
    assert mixing["tasks"]["broken"] == ["HumanEval/1"]
    assert mixing["tasks"]["rescued"] == ["HumanEval/3", "HumanEval/4"]


def test_an_end_run_against_itself_breaks_and_gains_nothing() -> None:
    categories = paired.categorise(SLM, LLM)
    as_slm = paired.transitions(categories, SLM)
    as_llm = paired.transitions(categories, LLM)
    assert (as_slm["broken"], as_slm["rescued"], as_slm["lost_slm_wins"], as_slm["gained"]) == (0, 0, 0, 0)
    assert (as_llm["broken"], as_llm["rescued"], as_llm["lost_slm_wins"], as_llm["gained"]) == (0, 3, 2, 0)


def test_an_unfinished_run_is_judged_on_its_own_problems() -> None:
    first_five = {t: HYBRID[t] for t in list(HYBRID)[:5]}
    mixing = paired.transitions(paired.categorise(SLM, LLM), first_five)
    assert (mixing["broken"], mixing["rescued"], mixing["lost_slm_wins"], mixing["gained"]) == (1, 2, 0, 0)


# -- McNemar ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (0, 10, 2 * 0.5**10),
        (10, 0, 2 * 0.5**10),
        (2, 8, 2 * (1 + 10 + 45) / 2**10),
        (5, 5, 1.0),
        (0, 0, 1.0),
        (0, 1, 1.0),
    ],
)
def test_mcnemar_exact_known_values(only_a: int, only_b: int, expected: float) -> None:
    assert paired.mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_equals_the_two_sided_tail_counted_over_every_coin_sequence() -> None:
    # Independent of the formula: enumerate all 2^n outcomes of n fair coins and count those at least as lopsided.
    from itertools import product

    for only_a, only_b in [(1, 9), (3, 8), (4, 4), (0, 7), (6, 2)]:
        n = only_a + only_b
        lopsided = abs(only_a - n / 2)
        extreme = sum(abs(sum(flips) - n / 2) >= lopsided for flips in product((0, 1), repeat=n))
        assert paired.mcnemar_exact(only_a, only_b) == pytest.approx(min(1.0, extreme / 2**n), rel=1e-12)


# -- paired bootstrap -----------------------------------------------------------------------------------------------


def _paired_sample(rng: np.random.Generator, n: int, only_a: float, only_b: float) -> tuple[np.ndarray, np.ndarray]:
    """Two runs on ``n`` problems: a alone right with probability only_a, b alone with only_b, else they agree."""
    u = rng.random(n)
    agree = rng.random(n) < 0.5
    a = np.where(u < only_a, 1, np.where(u < only_a + only_b, 0, agree)).astype(np.int8)
    b = np.where(u < only_a, 0, np.where(u < only_a + only_b, 1, agree)).astype(np.int8)
    return a, b


def test_bootstrap_ci_is_deterministic_with_its_seed() -> None:
    a, b = _paired_sample(np.random.default_rng(1), 164, 0.15, 0.05)
    assert paired.bootstrap_difference_ci(a, b) == paired.bootstrap_difference_ci(a, b)
    # With few resamples the percentiles depend visibly on the seed: the seed, not chance, fixes the interval.
    few = {seed: paired.bootstrap_difference_ci(a, b, resamples=40, seed=seed) for seed in (1, 2, 3)}
    assert len(set(few.values())) > 1


def test_bootstrap_ci_covers_the_true_difference_on_a_constructed_case() -> None:
    # True difference 0.15 - 0.05 = +0.10; on 164 problems the interval must hold it and exclude 0.
    a, b = _paired_sample(np.random.default_rng(1), 164, 0.15, 0.05)
    low, high = paired.bootstrap_difference_ci(a, b)
    assert low < a.mean() - b.mean() < high
    assert 0.0 < low < 0.10 < high


def test_bootstrap_ci_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(100):
        a, b = _paired_sample(rng, 164, 0.12, 0.06)
        low, high = paired.bootstrap_difference_ci(a, b, resamples=1000, seed=trial)
        covered += low <= 0.06 <= high
    assert 88 <= covered <= 100


def test_identical_runs_have_a_zero_width_interval_and_p_one() -> None:
    result = paired.compare("a", HYBRID, "b", HYBRID, "matched_share")
    assert (result.difference, result.ci_low, result.ci_high, result.mcnemar_p) == (0.0, 0.0, 0.0, 1.0)


def test_compare_counts_discordant_problems_on_shared_tasks() -> None:
    result = paired.compare("hybrid", HYBRID, "slm", SLM, "vs_slm")
    # hybrid alone right: 3, 4, 9; SLM alone right: 1, 6, 7.
    assert (result.only_a_right, result.only_b_right, result.problems) == (3, 3, 10)
    assert result.difference == pytest.approx(0.0)


def test_runs_are_matched_at_the_nearest_achieved_share() -> None:
    pairs = paired.nearest_share_pairs(
        {
            "router": [("router-0.20", 0.086), ("router-0.50", 0.277)],
            "random": [("random-0.10", 0.055), ("random-0.30", 0.209), ("random-0.50", 0.412)],
        }
    )
    assert pairs == [("router-0.20", "random-0.10"), ("router-0.50", "random-0.30"), ("router-0.50", "random-0.50")]


# -- query-level rows -----------------------------------------------------------------------------------------------


def _row(task: str, passed: bool, tokens: int, probe: float | None, cloud: bool, prompt: int = 0) -> dict:
    return {"task_id": task, "passed": passed, "tokens": tokens, "cloud_tokens": tokens if cloud else 0,
            "cloud_calls": int(cloud), "tokens_sent": prompt if cloud else 0, "tokens_received": tokens if cloud else 0,
            "probe_top1_mean": probe}  # fmt: skip


def test_query_rows_cost_what_the_llm_paid_for_the_answers_it_wrote() -> None:
    slm = [_row("a", False, 10, 0.5, False), _row("b", True, 30, 0.9, False)]
    llm = [_row("a", True, 20, None, True, prompt=100), _row("b", True, 40, None, True, prompt=120)]
    summary = query_level(slm, llm, cut=0.7, target=0.5)
    # "a" went to the LLM: its 100-token prompt prefilled, its 20 tokens decoded, one call; "b" stayed local.
    assert summary["prefill_per_token"] == pytest.approx(100 / 50)
    assert summary["decode_steps_per_token"] == pytest.approx(20 / 50)
    assert summary["cloud_calls_per_problem"] == 0.5 and summary["round_trips_per_answer"] == 0.5
    assert summary["cloud_share"] == pytest.approx(20 / 50) and summary["pass_at_1"] == 1.0


# -- the report rebuilt from disk ----------------------------------------------------------------------------------


def _write_run(folder: Path, name: str, passes: str, cloud: int, **extra: object) -> None:
    rows = [{"task_id": f"HumanEval/{i}", "passed": bit == "1", "tokens": 10, "cloud_tokens": cloud,
             "cloud_calls": cloud, "tokens_sent": 3 * cloud, "tokens_received": cloud, "probe_top1_mean": 0.2 * i,
             **extra} for i, bit in enumerate(passes)]  # fmt: skip
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _disk(tmp_path: Path) -> Path:
    _write_run(tmp_path, "slm-0.00", "1100", 0, policy="slm", target_share=0.0, threshold=None)
    _write_run(tmp_path, "llm-1.00", "1010", 10, policy="llm", target_share=1.0, threshold=None)
    _write_run(tmp_path, "router-0.30", "0110", 2, policy="router", label="router", target_share=0.3, threshold=0.4)
    # A decode mode this module has never heard of: unknown name, extra fields, no target_share in its rows.
    _write_run(tmp_path, "router-lossless-0.30", "1010", 3, policy="router", mode="lossless", round_trips=1,
               threshold=0.4, verified_tokens=[1, 2])  # fmt: skip
    calibration = {"settings": {"source": "test"}, "token_top1": [0.5, 0.9], "probe_means": [0.1, 0.3, 0.5, 0.7, 0.9]}
    (tmp_path / "calibration.json").write_text(json.dumps(calibration))
    return tmp_path


def test_report_takes_any_run_file_as_a_hybrid_run(tmp_path: Path) -> None:
    from citer_bench.humaneval import Problem

    problems = [Problem(f"HumanEval/{i}", "p", "t", "f") for i in range(4)]
    calibration = json.loads((_disk(tmp_path) / "calibration.json").read_text())
    results = results_from_disk(tmp_path, problems, calibration, [0.2])
    by_run = {s["run"]: s for s in results.summaries}
    lossless = by_run["router-lossless-0.30"]
    assert lossless["policy"] == "router/lossless" and lossless["target_share"] == 0.3
    assert lossless["round_trips_per_answer"] == 1.0 and lossless["cloud_calls_per_problem"] == 3.0
    assert by_run["router-0.30"]["round_trips_per_answer"] == 2.0  # no round_trips field: cloud calls


def test_report_only_rebuilds_summary_markdown_and_plots_without_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import citer_bench.quality as quality

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a report must not load or download a model")

    monkeypatch.setattr(quality, "resolve_model", no_model)
    monkeypatch.setattr(quality, "LocalModel", no_model)
    assert main(["--report-only", "--out", str(_disk(tmp_path)), "--limit", "4", "--shares", "0.2"]) == 0

    report = json.loads((tmp_path / "summary.json").read_text())
    assert {k: report["end_categories"][k] for k in paired.CATEGORIES} == {
        "both_right": 1, "only_llm_right": 1, "only_slm_right": 1, "both_wrong": 1}  # fmt: skip
    # router-0.30 "0110": 0 both right -> wrong (broken); 1 only SLM right -> right (kept);
    # 2 only LLM right -> right (rescued); 3 both wrong -> wrong.
    mixing = report["mixing"]["router-0.30"]
    assert (mixing["broken"], mixing["rescued"], mixing["lost_slm_wins"], mixing["gained"]) == (1, 1, 0, 0)
    kinds = {(c["a"], c["b"]): c["kind"] for c in report["paired_comparisons"]}
    assert kinds[("router-0.30", "slm-0.00")] == "vs_slm" and kinds[("router-0.30", "llm-1.00")] == "vs_llm"
    assert kinds[("router-0.30", "router-lossless-0.30")] == "matched_share"  # an unknown mode is its own curve
    markdown = (tmp_path / "report.md").read_text()
    assert "broken (of 1)" in markdown and "| router-lossless-0.30 |" in markdown
    assert markdown in capsys.readouterr().out
    assert (tmp_path / "pareto.png").stat().st_size > 0 and (tmp_path / "mixing.png").stat().st_size > 0


def test_lossless_runs_are_ranked_on_round_trips_and_discarded_drafts(tmp_path: Path) -> None:
    """Round trips alone would crown the longest draft; a run dominates only if it is no worse on both axes."""
    from citer_bench.humaneval import Problem

    _disk(tmp_path)
    for name, trips, rejected in (("draft-k8", 4, 9), ("draft-k32", 2, 40), ("router-0.05-lossless32", 2, 20)):
        _write_run(tmp_path, name, "1010", 1, policy="draft" if name.startswith("draft") else "router",
                   mode="lossless", round_trips=trips, drafts_rejected=rejected, threshold=0.4)  # fmt: skip
    problems = [Problem(f"HumanEval/{i}", "p", "t", "f") for i in range(4)]
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    results = results_from_disk(tmp_path, problems, calibration, [0.2])
    comparison = lossless_comparison([*results.summaries, *results.unfinished], results)
    rows = {r["run"]: r for r in comparison["runs"]}
    assert rows["router-0.05-lossless32"]["discarded_drafts_per_answer"] == 20.0
    assert rows["router-0.05-lossless32"]["dominates"] == ["draft-k32"]  # same round trips, half the waste
    assert rows["draft-k32"]["dominates"] == [] and rows["draft-k8"]["dominates"] == []  # a trade, not a win
    # One round trip and no drafts field (nothing discarded): better than all three on both axes.
    assert rows["router-lossless-0.30"]["dominates"] == ["router-0.05-lossless32", "draft-k32", "draft-k8"]
    assert set(rows["router-lossless-0.30"]) >= {"prefill_per_token", "cloud_share"}


def test_a_sweep_reports_the_runs_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sweep path hands its records to the same report; models and the cloud are faked here."""
    import contextlib

    import citer_bench.quality as quality

    _disk(tmp_path)
    on_disk = {path.stem: quality.read_jsonl(path) for path in tmp_path.glob("*.jsonl")}

    class FakeSweep:
        def __init__(self, args: object) -> None:
            self.llm_path = Path("llm.gguf")

        def calibration(self) -> dict:
            return json.loads((tmp_path / "calibration.json").read_text())

        def run(self, spec: quality.RunSpec, problems: list, cloud_address: str | None, llm: object = None) -> list:
            return on_disk["router-0.30" if spec.policy == "confidence" else spec.name]

        def close(self) -> None:
            pass

    monkeypatch.setattr(quality, "Sweep", FakeSweep)
    monkeypatch.setattr(quality, "LocalCloud", lambda path: contextlib.nullcontext(type("Cloud", (), {"address": ""})))
    argv = ["--out", str(tmp_path), "--limit", "4", "--shares", "0.3", "--policies", "confidence", "query"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "summary.json").read_text())
    assert [r["run"] for r in report["runs"]] == ["slm-0.00", "llm-1.00", "confidence-0.30", "query-0.30"]
    assert report["mixing"]["confidence-0.30"]["broken"] == 1
    assert "| confidence-0.30 |" in capsys.readouterr().out


# -- decode modes: run specs, options, rows, and their report --------------------------------------------------------


def test_run_names_carry_the_mode_and_its_settings() -> None:
    from citer_bench.quality import RunSpec

    assert RunSpec("router", 0.3, 0.4).name == "router-0.30"
    assert RunSpec("router", 0.3, 0.4, lossless=True).name == "router-0.30-lossless"
    assert RunSpec("router", 0.3, 0.4, lossless=True, max_draft=8).name == "router-0.30-lossless8"
    assert RunSpec("router", 0.2, 0.6, span_below=0.9, tokens_per_call=8).name == "router-0.20-span8-tau0.90"
    assert RunSpec("confidence", 0.3, 0.5, tokens_per_call=4).name == "confidence-0.30-n4"
    assert RunSpec("router", 0.3, 0.4, overlap=True).name == "router-0.30-overlap"
    assert RunSpec("router", 0.3, 0.4, label="router-r1", lossless=True, overlap=True).name == (
        "router-r1-0.30-lossless-overlap"
    )
    draft = RunSpec("draft", None, lossless=True, max_draft=4)
    assert draft.name == "draft-k4"
    assert draft.decode_options["lossless"] is True and draft.decode_options["max_draft"] == 4
    assert RunSpec("draft", None, max_draft=8).decode_options["lossless"] is True  # draft is lossless by definition
    assert type(draft.make_policy(896)).__name__ == "LocalPolicy"


def _modes(*argv: str) -> list[dict[str, object]]:
    import argparse

    from citer_bench.quality import DEFAULT_MAX_DRAFT, decode_modes

    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", nargs="+", default=["blocking"])
    parser.add_argument("--max-draft", type=int, nargs="+", default=[DEFAULT_MAX_DRAFT])
    parser.add_argument("--tokens-per-call", type=int, default=None)
    parser.add_argument("--span-below", type=float, default=None)
    parser.add_argument("--policies", nargs="*", default=[])
    return decode_modes(parser, parser.parse_args(argv))


def test_mode_options_map_onto_the_generator_arguments() -> None:
    assert _modes() == [{"overlap": False, "span_below": 0.0, "tokens_per_call": 1}]
    assert _modes("--mode", "span") == [{"overlap": False, "span_below": 0.5, "tokens_per_call": 8}]
    assert _modes("--mode", "span", "--tokens-per-call", "4", "--span-below", "0.9")[0]["span_below"] == 0.9
    lossless = _modes("--mode", "lossless", "overlap", "--max-draft", "4", "8")
    assert [(m["lossless"], m["max_draft"], m["overlap"]) for m in lossless] == [(True, 4, True), (True, 8, True)]
    assert _modes("--policies", "draft", "--max-draft", "4", "8") == [
        {"overlap": False, "span_below": 0.0, "tokens_per_call": 1}]  # fmt: skip
    for bad in (["--mode", "blocking", "lossless"], ["--span-below", "0.5"], ["--max-draft", "4"],
                ["--mode", "span", "--span-below", "0"], ["--tokens-per-call", "0"]):  # fmt: skip
        with pytest.raises(SystemExit):
            _modes(*bad)


def test_a_resumed_run_must_have_the_same_settings(tmp_path: Path) -> None:
    from citer_bench.quality import RunSpec, check_resumable

    spec = RunSpec("router", 0.2, 0.6, span_below=0.9, tokens_per_call=8)
    path = tmp_path / f"{spec.name}.jsonl"
    check_resumable(spec, path)  # nothing yet
    path.write_text(json.dumps({"task_id": "HumanEval/0", **spec.__dict__}) + "\n")
    check_resumable(spec, path)
    with pytest.raises(SystemExit, match="other settings"):
        check_resumable(RunSpec("router", 0.2, 0.55, span_below=0.9, tokens_per_call=8), path)


def test_rows_record_the_mode_round_trips_drafts_and_the_generator_gets_the_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import citer_bench.quality as quality
    from citer_edge.decode import GeneratedToken, GenerationSummary

    seen: dict[str, object] = {}

    class FakeModel:
        def reset(self) -> None:
            pass

        def tokenize(self, text: str) -> list[int]:
            return [1, 2]

    class FakeGenerator:
        def __init__(self, slm: object, policy: object, cloud: object, **options: object) -> None:
            seen.update(options)

        def stream(self, prompt: list[int], max_tokens: int, sampling: object) -> object:
            summary = GenerationSummary(policy="local", tokens=2, cloud_tokens=1, cloud_calls=3, mode="lossless",
                                        drafts_accepted=5, drafts_rejected=2)  # fmt: skip
            tokens = [GeneratedToken(7, "    return 1\n", "slm", 0.1, 0.9), GeneratedToken(8, "\ndef", "llm", 0.1, 0.5)]

            class Stream:
                def __init__(self) -> None:
                    self.summary = summary

                def __iter__(self):  # type: ignore[no-untyped-def]
                    return iter(tokens)

            return Stream()

    monkeypatch.setattr(quality, "HybridGenerator", FakeGenerator)
    spec = quality.RunSpec("draft", None, max_draft=4)
    row = quality.complete(FakeModel(), "def f():\n", spec.make_policy(896), None, 16, spec.decode_options)  # type: ignore[arg-type]
    assert seen == {"lossless": True, "max_draft": 4, "overlap": False, "span_below": 0.0, "tokens_per_call": 1}
    assert row["completion"] == "    return 1\n" and row["stopped"] is True
    assert (row["mode"], row["round_trips"], row["drafts_accepted"], row["drafts_rejected"]) == ("lossless", 3, 5, 2)


def test_modes_join_their_curve_only_when_they_are_the_plain_loop() -> None:
    from citer_bench.quality import curve_of, curve_rank

    assert curve_of({"policy": "router", "label": "router", "mode": "blocking"}, "router-0.30") == "router"
    assert curve_of({"policy": "router", "label": "router", "mode": "blocking+span"}, "x") == "router/span"
    assert curve_of({"policy": "router", "mode": "lossless+overlap"}, "x") == "router/lossless+overlap"
    assert curve_of({"policy": "draft", "mode": "lossless"}, "draft-k4") == "draft/lossless"
    assert curve_rank("router") < curve_rank("router/span") < curve_rank("confidence") < curve_rank("query")


def _mode_rows(folder: Path, name: str, completions: list[str], passes: str, trips: list[int], **extra: object) -> None:
    rows = [{"task_id": f"HumanEval/{i}", "passed": bit == "1", "completion": text, "tokens": 10, "cloud_tokens": 2,
             "cloud_calls": trips[i], "round_trips": trips[i], "tokens_sent": 10, "tokens_received": 2,
             "probe_top1_mean": 0.5, **extra}
            for i, (text, bit) in enumerate(zip(completions, passes, strict=True))]  # fmt: skip
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_lossless_runs_are_compared_on_the_problems_all_of_them_answered(tmp_path: Path) -> None:
    from citer_bench.humaneval import Problem
    from citer_bench.quality import build_report, markdown_report

    llm = ["a", "b", "c", "d"]
    _mode_rows(tmp_path, "slm-0.00", ["a", "x", "c", "y"], "1010", [0] * 4, policy="slm", target_share=0.0)
    _mode_rows(tmp_path, "llm-1.00", llm, "1100", [1] * 4, policy="llm", target_share=1.0)
    # the router in lossless mode on all four problems (one near-tie flip on problem 3), draft-4 on the first two
    _mode_rows(tmp_path, "router-0.30-lossless", ["a", "b", "c", "z"], "1100", [2, 4, 3, 5], policy="router",
               label="router", target_share=0.3, mode="lossless", max_draft=16, drafts_accepted=8,
               drafts_rejected=2)  # fmt: skip
    _mode_rows(tmp_path, "draft-k4", ["a", "b"], "11", [3, 5], policy="draft", target_share=None, mode="lossless",
               max_draft=4, equals_llm=True, drafts_accepted=7, drafts_rejected=3)  # fmt: skip
    # the plain loop's rows say "blocking": still the router curve; span is a curve of its own
    _mode_rows(tmp_path, "router-0.20-span8-tau0.90", ["a", "q", "c", "d"], "1011", [1, 1, 2, 1], policy="router",
               label="router", target_share=0.2, mode="blocking+span", tokens_per_call=8,
               span_below=0.9)  # fmt: skip
    _mode_rows(tmp_path, "router-0.30", ["a", "q", "c", "r"], "1010", [2, 2, 2, 2], policy="router",
               label="router", target_share=0.3, mode="blocking")  # fmt: skip
    problems = [Problem(f"HumanEval/{i}", "p", "t", "f") for i in range(4)]
    results = results_from_disk(tmp_path, problems, {"probe_means": [0.1, 0.9]}, [])
    by_run = {s["run"]: s for s in [*results.summaries, *results.unfinished]}
    assert by_run["router-0.30"]["policy"] == "router" and by_run["router-0.30"]["mode"] == ""
    span = by_run["router-0.20-span8-tau0.90"]
    assert span["policy"] == "router/span" and span["mode"] == "span" and span["equals_llm"] == 3
    assert span["settings"] == {"tokens_per_call": 8, "span_below": 0.9}
    assert span["cloud_tokens_per_round_trip"] == pytest.approx(8 / 5)
    lossless = by_run["router-0.30-lossless"]
    assert lossless["equals_llm"] == 3 and lossless["equals_llm_of"] == 4  # filled in from the completions
    assert lossless["draft_acceptance"] == pytest.approx(32 / 40)
    assert [s["run"] for s in results.unfinished] == ["draft-k4"]

    report = build_report(results, {"slm": "s", "llm": "l", "problems": 4}, {})
    equal = report["lossless_at_equal_output"]
    assert equal["problems"] == 2 and equal["tasks"] == ["HumanEval/0", "HumanEval/1"]
    rows = {row["run"]: row for row in equal["runs"]}
    assert rows["router-0.30-lossless"]["round_trips_per_answer"] == 3.0
    assert rows["draft-k4"]["round_trips_per_answer"] == 4.0
    assert rows["router-0.30-lossless"]["equals_llm"] == 2 and equal["llm_pass_at_1"] == 1.0
    markdown = markdown_report(report)
    assert "## Decode modes" in markdown and "### Lossless at equal output" in markdown
    assert "| router-0.20-span8-tau0.90 | span | span below 0.9, ≤8 tok/call |" in markdown
    assert "| draft-k4 | lossless | max_draft 4 | 2 |" in markdown and "= LLM 2/2" in markdown
