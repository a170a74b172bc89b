"""Local-only and the upload audit: a local-only conversation sends nothing (the server's own counters say so),
`/local` stops uploads from that message on, and the audit records exactly what the server received."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from citer_cloud.server import CloudServer
from citer_edge import CloudPolicy, CloudSession, HybridGenerator, LocalModel
from citer_edge.chat.journal import HISTORY_ENV, Journal, journal_path, list_conversations, read_transcript
from citer_edge.cloud.audit import UploadAudit, read_uploads
from citer_edge.cloud.budget import BudgetLimits, CloudBudget
from tests.test_budget import server_stats
from tests.test_cli import run_cli

COUNTERS = ("decode_requests", "tokens_prefilled", "tokens_generated", "sessions_created")


def counters(server: CloudServer) -> dict[str, int]:
    stats = server_stats(server.address)
    return {name: getattr(stats, name) for name in COUNTERS}


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "history"
    monkeypatch.setenv(HISTORY_ENV, str(folder))  # run_cli passes the environment on
    return folder


def chat(smol_path: Path, server: CloudServer, *extra: str, stdin: str | None = None):
    return run_cli(
        "chat", "--slm", str(smol_path), "--cloud", server.address, "--policy", "cloud", "--max-tokens", "6",
        "--cloud-timeout", "60",  # a loaded 2-core machine must not turn a slow call into a local token
        *extra, stdin=stdin,
    )  # fmt: skip


def saved_id(stderr: str) -> str:
    return re.search(r"saved: citer-edge chat --resume (\S+)", stderr).group(1)  # type: ignore[union-attr]


def uploads_json(conversation_id: str) -> dict:
    shown = run_cli("history", "show", conversation_id, "--uploads", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_generate_local_only_sends_nothing(smol_path: Path, smol_server: CloudServer) -> None:
    result = run_cli(
        "generate", "--slm", str(smol_path), "--cloud", smol_server.address, "--policy", "cloud", "--local-only",
        "--max-tokens", "8", "--json", "A secret: 1234.",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["sources"] == ["slm"] * 8 and payload["uploads"] == []
    assert payload["summary"]["local_only"] and payload["summary"]["upload_wire_bytes"] == 0
    assert counters(smol_server) == dict.fromkeys(COUNTERS, 0)


def test_local_only_chat_sends_nothing_and_stays_local_when_resumed(
    smol_path: Path, smol_server: CloudServer, history: Path
) -> None:
    first = chat(smol_path, smol_server, "--local-only", stdin="My password is hunter2.\nAnd again?\n")
    assert first.returncode == 0, first.stderr
    conversation = saved_id(first.stderr)
    assert read_transcript(conversation).local_only
    resumed = chat(smol_path, smol_server, "--resume", conversation, stdin="Once more?\n")  # no --local-only
    assert resumed.returncode == 0, resumed.stderr
    assert "local-only conversation" in resumed.stderr
    assert counters(smol_server) == dict.fromkeys(COUNTERS, 0)
    assert uploads_json(conversation)["uploads"] == []
    assert not any(history.glob("*.uploads.jsonl"))


def test_after_slash_local_nothing_more_is_sent(
    smol_path: Path, start_server: Callable[..., CloudServer], history: Path
) -> None:
    """The same first message, then `/local` and more: the server ends up with exactly what the first reply cost."""
    reference, server = start_server(smol_path), start_server(smol_path)
    one_message = chat(smol_path, reference, "Say hi.")
    assert one_message.returncode == 0, one_message.stderr
    expected = counters(reference)
    assert expected["decode_requests"] == 6  # every token of the first reply came from the cloud

    result = chat(smol_path, server, stdin="Say hi.\n/local My PIN is 4321.\nAnd then?\n")
    assert result.returncode == 0, result.stderr
    assert "local only from here" in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(lines) == 3 and "uploaded" in lines[0] and "B on the wire" in lines[0]
    assert all(line.endswith(", local only]") for line in lines[1:])  # nothing uploaded, and it says why
    assert counters(server) == expected  # nothing after /local reached the server
    conversation = saved_id(result.stderr)
    assert read_transcript(conversation).local_only

    audit = uploads_json(conversation)
    assert len(audit["uploads"]) == expected["decode_requests"]
    assert audit["totals"]["tokens"] == expected["tokens_prefilled"]  # the audit's spans are what was prefilled
    first = audit["uploads"][0]
    assert first["server"] == server.address and first["start"] == 0 and first["kind"] == "sync"
    assert first["text_bytes"] > 0 and first["wire_bytes"] > first["n_tokens"]
    positions = [(u["start"], u["n_tokens"]) for u in audit["uploads"]]
    # Each call sends what the server lacks: it holds the last call's span plus the one token it wrote.
    assert all(start == a + n + 1 for (a, n), (start, _) in zip(positions, positions[1:], strict=False))

    shown = run_cli("history", "show", conversation, "--uploads")
    assert shown.returncode == 0, shown.stderr
    assert server.address in shown.stdout
    assert f"total: {expected['decode_requests']} uploads, {expected['tokens_prefilled']} tokens" in shown.stdout


def test_slash_new_after_slash_local_may_use_the_cloud_again(
    smol_path: Path, smol_server: CloudServer, history: Path
) -> None:
    result = chat(smol_path, smol_server, stdin="/local Hi.\n/new\nSay hi.\n")
    assert result.returncode == 0, result.stderr
    assert counters(smol_server)["decode_requests"] == 6  # the second conversation's reply came from the cloud
    transcripts = sorted(history.glob("*.jsonl"))
    assert len([p for p in transcripts if not p.name.endswith(".uploads.jsonl")]) == 2
    listed = run_cli("history", "list")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2  # audits are not conversations


def test_journal_keeps_the_privacy_mark_and_cloud_use_and_audits_are_not_conversations(history: Path) -> None:
    journal = Journal.start(None, "SmolLM2")
    journal.user("hello")
    journal.token("Hi", "llm")
    journal.end_reply("stop")
    journal.cloud_use(5, 2)
    journal.cloud_use(9, 3)  # cumulative: the last one counts
    journal.local_only()
    journal.close()
    audit = UploadAudit(journal.uploads_path, token_bytes=lambda token: b"ab")
    audit.record("host:1", "s", 0, [1, 2, 3], 40, "sync")
    transcript = read_transcript(journal.conversation_id)
    assert transcript.local_only and (transcript.cloud_tokens, transcript.cloud_calls) == (9, 3)
    assert [u.text_bytes for u in read_uploads(journal.uploads_path)] == [6]
    assert journal_path("latest") == journal.path  # not the audit beside it, which sorts after it
    assert [t.conversation_id for t in list_conversations()] == [journal.conversation_id]


def test_library_generation_reports_budget_and_uploads_without_a_meter(
    smol_slm: LocalModel, smol_server: CloudServer
) -> None:
    """A library user gets the cost-and-privacy fields the CLI shows, per generation, also when stopping early."""
    budget = CloudBudget(BudgetLimits(conversation_tokens=100))
    audit = UploadAudit(token_bytes=smol_slm.token_bytes)
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint, timeout_s=60, budget=budget, audit=audit)
    try:
        generator = HybridGenerator(smol_slm, CloudPolicy(), cloud)
        first = generator.generate(smol_slm.tokenize("Count: one, two,"), max_tokens=4).summary
        after_first = audit.snapshot()
        stream = generator.stream(smol_slm.tokenize("Name three colours:"), max_tokens=8)
        tokens = iter(stream)
        next(tokens)
        next(tokens)
        tokens.close()  # the caller stops after two tokens
    finally:
        cloud.close()
    assert first.uploads == after_first.uploads > 0 and first.upload_wire_bytes == after_first.wire_bytes
    assert first.budget is not None and first.budget["tokens_left"] == 100 - 4
    second = stream.summary
    assert second.uploads == audit.totals.uploads - after_first.uploads > 0  # this generation's, not the session's
    assert second.upload_tokens == audit.totals.tokens - after_first.tokens
    assert second.budget is not None and second.budget["tokens_left"] == 100 - 4 - 2


def test_each_stream_counts_its_own_uploads_from_first_to_last_token(
    smol_slm: LocalModel, smol_server: CloudServer
) -> None:
    """Streams created together and consumed in turn, one of them in two goes (break, then text())."""
    audit = UploadAudit(token_bytes=smol_slm.token_bytes)
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint, timeout_s=60, audit=audit)
    try:
        generator = HybridGenerator(smol_slm, CloudPolicy(), cloud)
        first = generator.stream(smol_slm.tokenize("Count: one, two,"), max_tokens=4)
        second = generator.stream(smol_slm.tokenize("Name three colours:"), max_tokens=3)
        for _ in first:
            break  # one token, then the rest below
        first.text()
        after_first = audit.snapshot()
        second.text()
    finally:
        cloud.close()
    assert first.summary.tokens == 4 and first.summary.uploads == after_first.uploads == 4  # one call per token
    assert second.summary.uploads == audit.totals.uploads - after_first.uploads == 3
