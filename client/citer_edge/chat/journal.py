"""The conversation journal: every turn of ``citer-edge chat`` on disk while it streams, so nothing is lost.

One append-only JSON-lines file per conversation under the user's data
directory. A reply is written every few tokens and when it ends, so a crash,
``kill -9`` or Ctrl-C keeps everything up to the last few tokens; reading
skips a torn last line and marks a reply that never ended as interrupted.

Cost and privacy travel with the conversation: a ``local`` event marks it
local-only (``--resume`` keeps it on the device), a ``cloud`` event after each
reply holds its cloud use so far (``--resume`` carries its budget on), and the
upload audit (``cloud/audit.py``) sits beside it as ``<id>.uploads.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from platformdirs import user_data_dir

from citer_edge.errors import CiterEdgeError

HISTORY_ENV = "CITER_EDGE_HISTORY_DIR"
#: Tokens buffered before a reply is written out: a kill loses at most this many.
FLUSH_EVERY_TOKENS = 8
#: The upload audit beside a journal: ``<id>.uploads.jsonl`` (never taken for a conversation itself).
UPLOADS_SUFFIX = ".uploads.jsonl"


def history_dir() -> Path:
    return Path(os.environ.get(HISTORY_ENV) or Path(user_data_dir("citer-edge")) / "conversations")


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    text: str = ""
    tokens_from: dict[str, int] = field(default_factory=dict)  # assistant: tokens per origin ("slm", "llm")
    finish: str | None = None  # assistant: how the reply ended; "interrupted" when the journal never says


@dataclass
class Transcript:
    conversation_id: str
    created: str
    system: str | None
    turns: list[Turn]
    local_only: bool = False  # marked local-only: nothing of it may be sent to the cloud
    cloud_tokens: int = 0  # cloud use so far, for the conversation's budget
    cloud_calls: int = 0

    def messages(self) -> list[dict[str, str]]:
        """The chat messages to continue from (a partial reply included, as far as it got)."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": turn.role, "content": turn.text} for turn in self.turns]

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.conversation_id,
            "created": self.created,
            "system": self.system,
            "turns": [vars(turn) for turn in self.turns],
            "local_only": self.local_only,
            "cloud": {"tokens": self.cloud_tokens, "calls": self.cloud_calls},
        }


class Journal:
    """Appends one conversation's events; ``start`` a new one or ``reopen`` an existing one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conversation_id = path.stem
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # a torn last line from a crash: start clean, or the next event is lost too
        self._pending: list[tuple[str, str]] = []
        self._in_reply = False

    @classmethod
    def start(cls, system: str | None, slm: str) -> Journal:
        folder = history_dir()
        folder.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.timezone.utc)
        conversation_id = f"{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        journal = cls(folder / f"{conversation_id}.jsonl")
        journal._write({"event": "start", "created": now.isoformat(timespec="seconds"), "system": system, "slm": slm})
        return journal

    @classmethod
    def reopen(cls, conversation_id: str) -> Journal:
        return cls(journal_path(conversation_id))

    def user(self, text: str) -> None:
        self._end_open_reply("interrupted")
        self._write({"event": "user", "text": text})

    def token(self, text: str, source: str) -> None:
        self._in_reply = True
        self._pending.append((text, source))
        if len(self._pending) >= FLUSH_EVERY_TOKENS:
            self._flush_tokens()

    def end_reply(self, finish: str) -> None:
        self._flush_tokens()
        self._write({"event": "end", "finish": finish}, sync=True)
        self._in_reply = False

    def local_only(self) -> None:
        """From here on this conversation stays on the device (and stays so when resumed)."""
        self._write({"event": "local"}, sync=True)

    def cloud_use(self, tokens: int, calls: int) -> None:
        """The conversation's cloud use so far (cumulative), so a resumed chat keeps counting its budget."""
        self._write({"event": "cloud", "tokens": tokens, "calls": calls})

    @property
    def uploads_path(self) -> Path:
        return uploads_path_for(self.path)

    def close(self) -> None:
        self._end_open_reply("interrupted")
        self._file.close()

    def _end_open_reply(self, finish: str) -> None:
        if self._in_reply or self._pending:
            self.end_reply(finish)

    def _flush_tokens(self) -> None:
        if self._pending:
            self._write({"event": "tokens", "tokens": self._pending})
            self._pending = []

    def _write(self, event: dict[str, object], sync: bool = False) -> None:
        self._file.write(json.dumps(event, ensure_ascii=False) + "\n")
        self._file.flush()  # in the OS now: survives the process being killed
        if sync:
            os.fsync(self._file.fileno())  # on the disk: survives the machine going down


def uploads_path_for(journal: Path) -> Path:
    """The upload audit that belongs beside a journal file."""
    return journal.with_name(journal.stem + UPLOADS_SUFFIX)


def _journal_files() -> list[Path]:
    """Every conversation's journal, oldest first (upload audits beside them are not conversations)."""
    return sorted(path for path in history_dir().glob("*.jsonl") if not path.name.endswith(UPLOADS_SUFFIX))


def journal_path(conversation_id: str) -> Path:
    """The journal file of ``conversation_id``; ``latest`` names the most recent conversation."""
    if conversation_id == "latest":
        paths = _journal_files()
        if not paths:
            raise CiterEdgeError(f"no conversations in {history_dir()} yet")
        return paths[-1]
    path = history_dir() / f"{conversation_id}.jsonl"
    if "/" in conversation_id or conversation_id.endswith(UPLOADS_SUFFIX[: -len(".jsonl")]) or not path.is_file():
        raise CiterEdgeError(f"no conversation {conversation_id!r} in {history_dir()} (see `citer-edge history list`)")
    return path


def read_transcript(conversation_id: str) -> Transcript:
    """The conversation as far as it was written; a torn last line is skipped, never fatal."""
    path = journal_path(conversation_id)
    created, system, turns = "", None, []
    local_only, cloud_tokens, cloud_calls = False, 0, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        kind = event.get("event")
        if kind == "start":
            created, system = event.get("created", ""), event.get("system")
        elif kind == "user":
            turns.append(Turn("user", event.get("text", "")))
        elif kind == "tokens":
            if not turns or turns[-1].role != "assistant" or turns[-1].finish is not None:
                turns.append(Turn("assistant"))
            reply = turns[-1]
            for text, source in event.get("tokens", []):
                reply.text += text
                reply.tokens_from[source] = reply.tokens_from.get(source, 0) + 1
        elif kind == "local":
            local_only = True
        elif kind == "cloud":
            cloud_tokens, cloud_calls = int(event.get("tokens", 0)), int(event.get("calls", 0))
        elif kind == "end":
            if not turns or turns[-1].role != "assistant" or turns[-1].finish is not None:
                turns.append(Turn("assistant"))
            turns[-1].finish = event.get("finish")
    for turn in turns:
        if turn.role == "assistant" and turn.finish is None:
            turn.finish = "interrupted"
    return Transcript(path.stem, created, system, turns, local_only, cloud_tokens, cloud_calls)


def list_conversations() -> list[Transcript]:
    return [read_transcript(path.stem) for path in _journal_files()]
