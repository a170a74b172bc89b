"""The pinned-core edge-speed benchmark's own logic: options, pinning commands, modes and the result maths.

Its numbers mean something only if each side really runs where the command
says and the ratios divide what they claim to; no model is loaded here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from citer_bench import edge_speed
from citer_bench.edge_speed import (
    BASELINE,
    add_ratios,
    build_modes,
    compare_to_reference,
    parse_args,
    pinned_cloud,
    proxy_command,
    select_modes,
    summarise_cell,
    target_verdict,
    thread_affinity,
)


def _record(tokens: int, elapsed: float, **extra: float) -> dict:
    base = dict.fromkeys(
        ("cloud_tokens", "cloud_calls", "cloud_fallbacks", "cloud_wait_s", "drafts_accepted", "drafts_rejected",
         "unverified_tokens", "overlap_kept", "overlap_discarded", "server_forward_passes", "server_tokens_prefilled",
         "server_tokens_generated", "server_decode_requests", "edge_cpu_s", "cloud_cpu_s"),
        0,
    )  # fmt: skip
    return {**base, "tokens": tokens, "elapsed_s": elapsed, **extra}


def test_quick_and_full_defaults_and_explicit_flags_win() -> None:
    quick = parse_args(["--quick"])
    assert (quick.prompts, quick.max_tokens, quick.rtt_ms, quick.name) == (2, 24, [0.0, 50.0], "edge-speed-quick")
    full = parse_args([])
    assert (full.prompts, full.max_tokens, full.rtt_ms, full.name) == (4, 64, [0.0, 20.0, 50.0, 100.0], "edge-speed")
    mixed = parse_args(["--quick", "--prompts", "3", "--rtt-ms", "100"])
    assert (mixed.prompts, mixed.max_tokens, mixed.rtt_ms) == (3, 24, [100.0])


def test_edge_and_cloud_may_not_share_a_core() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--edge-core", "1", "--cloud-core", "1"])


def test_cloud_and_proxy_commands_are_pinned_to_one_core_with_one_thread() -> None:
    command = pinned_cloud("/models/llm.gguf", core=1).command
    assert command[:3] == ["taskset", "--cpu-list", "1"]
    assert command[3:6] == [sys.executable, "-m", "citer_cloud.cli"]
    assert command[command.index("--threads") + 1] == "1"
    assert command[command.index("--model") + 1] == "/models/llm.gguf"
    assert "--stop-on-stdin-eof" in command  # the child dies with the benchmark
    proxy = proxy_command(50051, core=1, python="python3")
    assert proxy[:3] == ["taskset", "--cpu-list", "1"] and proxy[-1] == "50051"


def test_taskset_prefix_really_pins_the_child() -> None:
    core = min(os.sched_getaffinity(0))
    child = [
        *edge_speed.taskset_prefix(core),
        sys.executable,
        "-c",
        "import os; print(sorted(os.sched_getaffinity(0)))",
    ]
    assert subprocess.run(child, capture_output=True, text=True, check=True, timeout=30).stdout.strip() == f"[{core}]"


def test_thread_affinity_counts_every_thread_of_a_process() -> None:
    counts = thread_affinity(os.getpid())
    assert sum(counts.values()) == len(os.listdir(f"/proc/{os.getpid()}/task"))


def test_modes_cover_the_issue_and_the_baseline_always_runs() -> None:
    modes = build_modes(span_tokens=4, span_below=0.5, max_draft=16, draft_ks=[2, 4, 8])
    by_name = {mode.name: mode for mode in modes}
    assert list(by_name)[:6] == [BASELINE, "blocking", "overlap", "span", "lossless", "lossless+overlap"]
    assert by_name["draft-4"].generator_options()["max_draft"] == 4 and not by_name["draft-4"].router
    assert by_name["lossless+overlap"].lossless and by_name["lossless+overlap"].overlap
    assert by_name["span"].generator_options()["tokens_per_call"] == 4
    assert not by_name[BASELINE].cloud
    assert [m.name for m in select_modes(modes, ["overlap"])] == [BASELINE, "overlap"]
    with pytest.raises(SystemExit):
        select_modes(modes, ["no-such-mode"])


def test_cell_rates_come_from_totals_and_costs_per_answer() -> None:
    records = [
        _record(90, 3.0, cloud_wait_s=0.5, cloud_calls=10, server_forward_passes=12, cloud_tokens=9, edge_cpu_s=2.5),
        _record(10, 2.0, cloud_wait_s=1.5, cloud_calls=2, server_forward_passes=3, cloud_tokens=1, edge_cpu_s=1.5),
    ]
    cell = summarise_cell(records, lossless=False)
    assert cell["tokens_per_s"] == pytest.approx(100 / 5.0)  # not the mean of 30 and 5 tok/s
    assert cell["blocked_s_per_answer"] == pytest.approx(1.0)
    assert cell["round_trips_per_answer"] == pytest.approx(6.0)
    assert cell["forward_passes_per_token"] == pytest.approx(0.15)
    assert cell["cloud_share"] == pytest.approx(0.10)
    assert cell["edge_core_share"] == pytest.approx(4.0 / 3.0)  # CPU seconds over wall seconds not blocked
    assert "tie_flips" not in cell


def test_lossless_cells_count_tie_flips() -> None:
    records = [_record(5, 1.0, first_difference=None), _record(5, 1.0, first_difference=3)]
    cell = summarise_cell(records, lossless=True)
    assert (cell["equal_llm"], cell["tie_flips"], cell["first_differences"]) == (1, 1, [3])
    assert compare_to_reference([1, 2, 3], [1, 2, 3]) is None
    assert compare_to_reference([1, 2, 4], [1, 2, 3]) == 2
    assert compare_to_reference([1, 2], [1, 2, 3]) == 2  # a shorter answer differs where it stops


def test_ratios_divide_by_the_same_rtt_blocks_baseline_and_the_target_is_judged() -> None:
    results = {
        BASELINE: {"0": {"tokens_per_s": 20.0}, "50": {"tokens_per_s": 10.0}},
        "overlap": {"0": {"tokens_per_s": 19.0}, "50": {"tokens_per_s": 9.5}},
        "blocking": {"0": {"tokens_per_s": 15.0}, "50": {"tokens_per_s": 6.0}},
    }
    add_ratios(results)
    assert results["overlap"]["50"]["ratio_to_slm"] == pytest.approx(0.95)
    assert results[BASELINE]["0"]["ratio_to_slm"] == pytest.approx(1.0)
    assert target_verdict(results).startswith("target MET")
    results["overlap"]["50"]["ratio_to_slm"] = 0.85
    assert target_verdict(results).startswith("target NOT MET")
