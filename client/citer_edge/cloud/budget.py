"""Cloud budgets: at most so many cloud tokens and calls per conversation and per UTC day.

A budget counts what the cloud does for us: tokens the LLM generates (the
cloud share's tokens) and successful ``Decode`` calls. ``CloudSession.decode``
asks ``allowance`` before each call, which caps the tokens asked at what is
left, so use stops exactly at the limit; once nothing is left the session
stops routing with one notice and generation goes on on the SLM.
``charge`` books a successful reply.

The per-day count lives in a small JSON ledger under the state directory
(``budget/daily.json``), shared by every ``citer-edge`` process of this user:
each charge is a locked read-modify-write with an atomic replace, so no
process loses another's charge and a crash never leaves a torn file. The
limit is checked before a call and booked after it, so two processes calling
at the same moment can overshoot the daily limit by at most one call's
tokens each; one process never overshoots. A conversation's own count is
kept in memory and, for chats, in the journal (``--resume`` carries it on).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from citer_edge.state import locked, read_json, state_dir, write_json_atomic

log = logging.getLogger(__name__)

#: Days of history the ledger keeps (older days are dropped when it is written).
LEDGER_DAYS = 31


@dataclass(frozen=True)
class BudgetLimits:
    """Limits; None means unlimited. 0 is allowed (and means: no cloud at all)."""

    conversation_tokens: int | None = None
    conversation_calls: int | None = None
    daily_tokens: int | None = None
    daily_calls: int | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and value < 0:
                raise ValueError(f"budget {name.replace('_', ' ')} must be 0 or more, got {value}")

    @property
    def any(self) -> bool:
        return any(value is not None for value in vars(self).values())


@dataclass(frozen=True)
class Usage:
    tokens: int = 0
    calls: int = 0


def utc_today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


class DailyLedger:
    """Cloud tokens and calls per UTC day, on disk, safe to share between processes."""

    def __init__(self, path: Path | None = None, today: Callable[[], str] = utc_today) -> None:
        self.path = path if path is not None else state_dir() / "budget" / "daily.json"
        self._today = today

    def used(self) -> Usage:
        """Today's use so far, every process included."""
        day = (read_json(self.path) or {}).get("days", {}).get(self._today(), {})
        return Usage(int(day.get("tokens", 0)), int(day.get("calls", 0)))

    def add(self, tokens: int, calls: int) -> Usage:
        """Book a charge for today; returns today's new total."""
        today = self._today()
        with locked(self.path):
            days = dict((read_json(self.path) or {}).get("days", {}))
            entry = days.get(today, {})
            total = Usage(int(entry.get("tokens", 0)) + tokens, int(entry.get("calls", 0)) + calls)
            days[today] = {"tokens": total.tokens, "calls": total.calls}
            kept = dict(sorted(days.items())[-LEDGER_DAYS:])
            write_json_atomic(self.path, {"days": kept})
        return total


class CloudBudget:
    """Per-conversation and per-day limits on cloud tokens and calls, with their use so far."""

    def __init__(self, limits: BudgetLimits | None = None, ledger: DailyLedger | None = None) -> None:
        self.limits = limits or BudgetLimits()
        self.ledger = ledger
        if self.ledger is None and (self.limits.daily_tokens is not None or self.limits.daily_calls is not None):
            raise ValueError("a daily budget needs a ledger to count the day in")
        self.conversation = Usage()

    def start_conversation(self, used: Usage | None = None) -> None:
        """A new conversation (or a resumed one, with what it had already used)."""
        self.conversation = used or Usage()

    def remaining(self) -> tuple[int | None, int | None]:
        """(tokens, calls) left before some limit is reached; None where nothing limits it."""
        today = self.ledger.used() if self.ledger is not None else Usage()
        tokens = _least(
            _left(self.limits.conversation_tokens, self.conversation.tokens),
            _left(self.limits.daily_tokens, today.tokens),
        )
        calls = _least(
            _left(self.limits.conversation_calls, self.conversation.calls),
            _left(self.limits.daily_calls, today.calls),
        )
        return tokens, calls

    def allowance(self, wanted: int) -> tuple[int, str | None]:
        """Tokens the next call may ask for (at most ``wanted``), or (0, why) when the budget is spent."""
        if not self.limits.any:
            return wanted, None
        tokens, calls = self.remaining()
        spent = self._spent_reason(tokens, calls)
        if spent:
            return 0, spent
        return (wanted if tokens is None else min(wanted, tokens)), None

    def charge(self, tokens: int, calls: int = 1) -> None:
        """Book a successful cloud reply."""
        self.conversation = Usage(self.conversation.tokens + tokens, self.conversation.calls + calls)
        if self.ledger is not None:
            self.ledger.add(tokens, calls)

    def to_dict(self) -> dict[str, object]:
        """Use and what is left, for the summary and ``--json``."""
        tokens_left, calls_left = self.remaining()
        today = self.ledger.used() if self.ledger is not None else None
        return {
            "limits": vars(self.limits),
            "conversation": vars(self.conversation),
            "today": vars(today) if today is not None else None,
            "tokens_left": tokens_left,
            "calls_left": calls_left,
        }

    def _spent_reason(self, tokens: int | None, calls: int | None) -> str | None:
        limits = self.limits
        if tokens is not None and tokens <= 0:
            if limits.conversation_tokens is not None and self.conversation.tokens >= limits.conversation_tokens:
                return f"the cloud budget of {limits.conversation_tokens} tokens for this conversation is spent"
            return f"today's cloud budget of {limits.daily_tokens} tokens is spent"
        if calls is not None and calls <= 0:
            if limits.conversation_calls is not None and self.conversation.calls >= limits.conversation_calls:
                return f"the cloud budget of {limits.conversation_calls} calls for this conversation is spent"
            return f"today's cloud budget of {limits.daily_calls} calls is spent"
        return None


def _left(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)


def _least(*values: int | None) -> int | None:
    known = [value for value in values if value is not None]
    return min(known) if known else None
