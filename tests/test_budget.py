"""Cloud budgets: cloud use stops exactly at the limit, generation goes on locally with one notice, and the
daily count persists across processes (and survives several of them charging at once)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from citer_cloud.server import CloudServer
from citer_edge import CloudPolicy, CloudSession, HybridGenerator, LocalModel
from citer_edge.cloud.budget import BudgetLimits, CloudBudget, DailyLedger, Usage
from citer_protocol import pb, pb_grpc
from tests.conftest import COUNTING_PROMPT
from tests.test_cli import run_cli


def server_stats(address: str) -> pb.StatsResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.LlmServiceStub(channel).GetStats(pb.StatsRequest(), timeout=10)


def _budget_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "budget" in r.getMessage()]


def test_ledger_counts_per_utc_day_and_persists(tmp_path: Path) -> None:
    day = ["2026-12-01"]
    ledger = DailyLedger(tmp_path / "daily.json", today=lambda: day[0])
    ledger.add(5, 1)
    ledger.add(3, 1)
    assert DailyLedger(tmp_path / "daily.json", today=lambda: day[0]).used() == Usage(8, 2)  # a new reader sees it
    day[0] = "2026-12-02"
    assert ledger.used() == Usage(0, 0)  # a new day starts at zero
    ledger.add(1, 1)
    assert json.loads((tmp_path / "daily.json").read_text())["days"] == {
        "2026-12-01": {"tokens": 8, "calls": 2},
        "2026-12-02": {"tokens": 1, "calls": 1},
    }


def test_concurrent_processes_lose_no_charge(tmp_path: Path) -> None:
    path = tmp_path / "daily.json"
    charger = (
        "import sys; from pathlib import Path; from citer_edge.cloud.budget import DailyLedger\n"
        "ledger = DailyLedger(Path(sys.argv[1]))\n"
        "for _ in range(40): ledger.add(2, 1)\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", charger, str(path)]) for _ in range(4)]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0, 0, 0]
    assert DailyLedger(path).used() == Usage(320, 160)


def test_allowance_caps_the_tokens_asked_and_names_the_spent_limit(tmp_path: Path) -> None:
    budget = CloudBudget(BudgetLimits(conversation_tokens=10, daily_calls=2), DailyLedger(tmp_path / "d.json"))
    assert budget.allowance(4) == (4, None)
    budget.charge(8)
    assert budget.allowance(4) == (2, None)  # only 2 tokens left in this conversation
    budget.charge(2)
    tokens, why = budget.allowance(4)
    assert tokens == 0 and why == "the cloud budget of 10 tokens for this conversation is spent"
    budget.start_conversation()
    assert budget.allowance(4) == (0, "today's cloud budget of 2 calls is spent")  # the day's 2 calls are gone
    with pytest.raises(ValueError, match="must be 0 or more"):
        BudgetLimits(daily_tokens=-1)


@pytest.mark.parametrize(
    ("limits", "expected_tokens", "expected_calls"),
    [(BudgetLimits(conversation_tokens=7), 7, 3), (BudgetLimits(conversation_calls=4), 12, 4)],
    ids=["tokens", "calls"],
)
def test_budget_stops_cloud_use_exactly_at_the_limit(
    smol_slm: LocalModel,
    smol_server: CloudServer,
    caplog: pytest.LogCaptureFixture,
    limits: BudgetLimits,
    expected_tokens: int,
    expected_calls: int,
) -> None:
    """Every token is routed, 3 per call: the cloud produces exactly the budget, the SLM the rest."""
    budget = CloudBudget(limits)
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint, timeout_s=60, budget=budget)
    try:
        generator = HybridGenerator(smol_slm, CloudPolicy(), cloud, tokens_per_call=3)
        with caplog.at_level(logging.WARNING, logger="citer_edge"):
            result = generator.generate(smol_slm.tokenize(COUNTING_PROMPT), max_tokens=24)
    finally:
        cloud.close()
    assert result.summary.tokens == 24  # generation went on after the budget was spent
    assert result.summary.cloud_tokens == expected_tokens == budget.conversation.tokens
    assert result.summary.cloud_calls == expected_calls == budget.conversation.calls
    assert server_stats(smol_server.address).tokens_generated == expected_tokens  # the server agrees
    assert result.sources[expected_tokens:] == ["slm"] * (24 - expected_tokens)
    assert len(_budget_warnings(caplog)) == 1  # one notice, not one per token
    assert "budget" in (cloud.routing_stopped or "")


def test_daily_budget_persists_across_processes(smol_path: Path, smol_server: CloudServer, tmp_path: Path) -> None:
    """Two runs share the day's budget of 10 tokens: 8 in the first, exactly the 2 left in the second."""
    env = {"CITER_EDGE_STATE_DIR": str(tmp_path), "CITER_EDGE_DAILY_BUDGET_TOKENS": "10"}
    command = ("generate", "--slm", str(smol_path), "--cloud", smol_server.address, "--policy", "cloud",
               "--max-tokens", "8", "--cloud-timeout", "60", "--raw", "--json", COUNTING_PROMPT)  # fmt: skip
    first = run_cli(*command, env=env)
    assert first.returncode == 0, first.stderr
    second = run_cli(*command, env=env)
    assert second.returncode == 0, second.stderr
    runs = [json.loads(run.stdout) for run in (first, second)]
    assert [run["routing"]["llm"] for run in runs] == [8, 2]
    assert [run["summary"]["budget"]["tokens_left"] for run in runs] == [2, 0]
    assert runs[1]["summary"]["budget"]["today"] == {"tokens": 10, "calls": 10}
    assert "budget of 10 tokens is spent" in second.stderr and "budget" not in first.stderr
    assert server_stats(smol_server.address).tokens_generated == 10


def test_bad_budget_is_one_readable_line(smol_path: Path) -> None:
    result = run_cli("generate", "--slm", str(smol_path), "--cloud-budget-tokens", "lots", "hello")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "citer-edge: error: --cloud-budget-tokens must be a whole number of 0 or more, got 'lots'"
    )
