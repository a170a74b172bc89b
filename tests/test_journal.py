"""The chat journal: nothing a user wrote or received is lost, not even to kill -9, and a chat can resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from citer_edge.chat.journal import FLUSH_EVERY_TOKENS, HISTORY_ENV, Journal, read_transcript
from tests.test_cli import run_cli


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "history"
    monkeypatch.setenv(HISTORY_ENV, str(folder))
    return folder


def test_journal_round_trip_with_origins_and_an_unfinished_reply(history: Path) -> None:
    journal = Journal.start("be brief", "SmolLM2")
    journal.user("hello")
    for text, source in [("Hi", "slm"), (" there", "llm"), ("!", "slm")]:
        journal.token(text, source)
    journal.end_reply("stop")
    journal.user("and?")
    journal.token("And", "slm")  # buffered, then the process ends without finishing the reply
    journal.close()
    transcript = read_transcript(journal.conversation_id)
    assert transcript.system == "be brief"
    assert [(t.role, t.text, t.finish) for t in transcript.turns] == [
        ("user", "hello", None),
        ("assistant", "Hi there!", "stop"),
        ("user", "and?", None),
        ("assistant", "And", "interrupted"),
    ]
    assert transcript.turns[1].tokens_from == {"slm": 2, "llm": 1}
    assert transcript.messages()[0] == {"role": "system", "content": "be brief"}


def test_a_torn_last_line_is_skipped(history: Path) -> None:
    journal = Journal.start(None, "SmolLM2")
    journal.user("hello")
    for _ in range(FLUSH_EVERY_TOKENS):
        journal.token("x", "slm")
    journal._file.write('{"event": "tokens", "tok')  # noqa: SLF001 - a crash in the middle of a write
    journal._file.flush()  # noqa: SLF001
    transcript = read_transcript(journal.conversation_id)
    assert transcript.turns[-1].text == "x" * FLUSH_EVERY_TOKENS
    assert transcript.turns[-1].finish == "interrupted"


def test_resuming_after_a_torn_line_keeps_the_next_turn(history: Path) -> None:
    journal = Journal.start(None, "SmolLM2")
    journal.user("hello")
    journal._file.write('{"event": "tokens", "tok')  # noqa: SLF001 - a crash in the middle of a write
    journal._file.close()  # noqa: SLF001 - the process is gone
    again = Journal.reopen(journal.conversation_id)
    again.user("still there?")
    again.close()
    assert [t.text for t in read_transcript(journal.conversation_id).turns] == ["hello", "still there?"]


def test_kill_9_mid_answer_then_resume_keeps_the_partial_answer(smol_path: Path, history: Path) -> None:
    env = {**os.environ, "CITER_EDGE_THREADS": "2"}
    chat = subprocess.Popen(
        [sys.executable, "-m", "citer_edge.cli", "chat", "--slm", str(smol_path), "--policy", "local",
         "--max-tokens", "2000", "--temperature", "0.7"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    chat.stdin.write("Tell me a very long story about a dragon and a lighthouse.\n")
    chat.stdin.flush()
    deadline = time.monotonic() + 120
    partial = ""
    while time.monotonic() < deadline and len(partial) < 60:
        time.sleep(0.2)
        paths = list(history.glob("*.jsonl"))
        turns = read_transcript(paths[0].stem).turns if paths else []
        partial = turns[1].text if len(turns) > 1 else ""
    chat.send_signal(signal.SIGKILL)
    chat.wait()
    assert partial, "the reply was being journaled while it streamed"
    conversation_id = next(history.glob("*.jsonl")).stem

    shown = json.loads(run_cli("history", "show", conversation_id, "--json", env={HISTORY_ENV: str(history)}).stdout)
    user, reply = shown["turns"]
    assert user["text"].startswith("Tell me a very long story")
    assert reply["finish"] == "interrupted" and reply["text"].startswith(partial)

    resumed = run_cli(
        "chat", "--slm", str(smol_path), "--policy", "local", "--max-tokens", "6", "--resume", conversation_id,
        stdin="And then?\n", env={HISTORY_ENV: str(history)},
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed conversation {conversation_id} (2 turns)" in resumed.stderr
    turns = read_transcript(conversation_id).turns
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[1].text == reply["text"] and turns[2].text == "And then?" and turns[3].finish == "length"


def test_empty_line_does_nothing_and_exit_ends_the_chat(smol_path: Path, history: Path) -> None:
    result = run_cli(
        "chat", "--slm", str(smol_path), "--policy", "local", "--max-tokens", "4",
        stdin="\n\nHi.\n/exit\nNever asked.\n", env={HISTORY_ENV: str(history)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("tokens, 0 from the cloud") == 1
    turns = read_transcript("latest").turns
    assert [t.text for t in turns if t.role == "user"] == ["Hi."]
    assert "saved: citer-edge chat --resume" in result.stderr


def test_no_history_writes_nothing(smol_path: Path, history: Path) -> None:
    result = run_cli(
        "chat", "--slm", str(smol_path), "--policy", "local", "--max-tokens", "4", "--no-history", "Hi.",
        env={HISTORY_ENV: str(history)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not history.exists() or not list(history.iterdir())


def test_unknown_conversation_is_one_readable_line(history: Path) -> None:
    result = run_cli("history", "show", "nope", env={HISTORY_ENV: str(history)})
    assert result.returncode == 1
    assert result.stderr.strip().startswith("citer-edge: error: no conversation 'nope'")


def test_a_chat_that_outgrows_the_window_drops_its_oldest_turns(smol_path: Path, history: Path) -> None:
    """Never a silent 0-token answer: old turns go (with a notice) so every reply has room."""
    long_message = "Please summarise this:" + " the quick brown fox jumps over the lazy dog" * 12
    result = run_cli(
        "chat", "--slm", str(smol_path), "--policy", "local", "--n-ctx", "256", "--max-tokens", "40",
        stdin=f"{long_message}\n{long_message}\n{long_message}\n", env={HISTORY_ENV: str(history)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summaries = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(summaries) == 3
    assert all(not line.startswith("[0 tokens") for line in summaries), summaries
    assert "oldest messages to fit the SLM's window of 256 tokens" in result.stderr
    assert [t.text for t in read_transcript("latest").turns if t.role == "user"] == [long_message] * 3
