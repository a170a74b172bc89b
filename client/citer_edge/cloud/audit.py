"""The upload audit: a record of exactly which token spans of a conversation left the device.

``CloudSession.decode`` records every ``Decode`` request just before it is
sent (also when the call then fails: the bytes have left the device): when,
to which server and session, which positions of the conversation (from
``known_len``, ``n_tokens`` of them), their UTF-8 text size and the
request's protobuf size. A chat writes one JSON line per upload beside its
journal (``<id>.uploads.jsonl``, shown by ``citer-edge history show ID
--uploads``); otherwise the records stay in memory (or go to ``--audit
FILE``). Each line is flushed as written, so a crash loses none.

``wire_bytes`` is ``DecodeRequest.ByteSize()``: the serialized request, not
gRPC/HTTP2 framing or TLS overhead. ``text_bytes`` counts the appended
tokens' text as the SLM would print it (0 where no detokenizer was given).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    time: str  # UTC, ISO 8601
    server: str
    session_id: str
    start: int  # the first position sent (the request's known_len)
    n_tokens: int
    text_bytes: int
    wire_bytes: int
    kind: str  # "sync" (delta), "resync" (the whole context after the server lost it), "retry" (same, new stream)

    @property
    def end(self) -> int:
        return self.start + self.n_tokens


@dataclass
class UploadTotals:
    uploads: int = 0
    tokens: int = 0
    text_bytes: int = 0
    wire_bytes: int = 0

    def add(self, upload: Upload) -> None:
        self.uploads += 1
        self.tokens += upload.n_tokens
        self.text_bytes += upload.text_bytes
        self.wire_bytes += upload.wire_bytes

    def since(self, earlier: UploadTotals) -> UploadTotals:
        return UploadTotals(
            self.uploads - earlier.uploads,
            self.tokens - earlier.tokens,
            self.text_bytes - earlier.text_bytes,
            self.wire_bytes - earlier.wire_bytes,
        )


class UploadAudit:
    """Records uploads in memory and, when ``path`` is set, as JSON lines in that file."""

    def __init__(self, path: Path | None = None, token_bytes: Callable[[int], bytes] | None = None) -> None:
        self.path = path
        self.token_bytes = token_bytes
        self.uploads: list[Upload] = []
        self.totals = UploadTotals()

    def record(
        self, server: str, session_id: str, known_len: int, tokens: Sequence[int], wire_bytes: int, kind: str
    ) -> Upload:
        text_bytes = sum(len(self.token_bytes(token)) for token in tokens) if self.token_bytes else 0
        upload = Upload(
            time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            server=server,
            session_id=session_id,
            start=known_len,
            n_tokens=len(tokens),
            text_bytes=text_bytes,
            wire_bytes=wire_bytes,
            kind=kind,
        )
        self.uploads.append(upload)
        self.totals.add(upload)
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(asdict(upload)) + "\n")
            except OSError as error:  # the upload happens either way; say that its record could not be kept
                log.warning("could not write the upload audit %s (%s)", self.path, error)
        return upload

    def snapshot(self) -> UploadTotals:
        return UploadTotals(**asdict(self.totals))


def read_uploads(path: Path) -> list[Upload]:
    """The uploads recorded in ``path`` (none when it does not exist); a torn last line is skipped."""
    if not path.is_file():
        return []
    uploads = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            uploads.append(Upload(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return uploads


def totals_of(uploads: Sequence[Upload]) -> UploadTotals:
    totals = UploadTotals()
    for upload in uploads:
        totals.add(upload)
    return totals


def format_uploads(uploads: Sequence[Upload]) -> str:
    """A readable table of uploads with a total line, for ``history show ID --uploads``."""
    if not uploads:
        return "no uploads: nothing of this conversation left the device"
    lines = [f"{'time (UTC)':24} {'server':21} {'session':9} {'positions':>13} {'tokens':>6} "
             f"{'text B':>7} {'wire B':>7}  kind"]  # fmt: skip
    for u in uploads:
        positions = f"{u.start}-{u.end - 1}" if u.n_tokens else f"{u.start} (none)"
        lines.append(
            f"{u.time:24} {u.server:21} {u.session_id[:8]:9} {positions:>13} {u.n_tokens:6d} "
            f"{u.text_bytes:7d} {u.wire_bytes:7d}  {u.kind}"
        )
    t = totals_of(uploads)
    lines.append(
        f"total: {t.uploads} uploads, {t.tokens} tokens, {t.text_bytes} bytes of text, {t.wire_bytes} on the wire"
    )
    return "\n".join(lines)
