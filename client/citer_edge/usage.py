"""What one generation cost and uploaded: fills the cost-and-privacy fields of its summary.

The decode loop counts tokens and calls; what a user pays for and what left
the device live in the cloud session's budget and upload audit, and the share
asked for lives in the policy. ``CostMeter`` reads them around one stream:
``start()`` before iterating, ``finish(summary)`` after, so the summary line
and ``--json`` show target share, budget left and bytes uploaded.
``HybridGenerator.stream`` does this itself with the generator's own cloud
session; a caller that detaches the session for a while (the chat's
``/local``) meters with the session it keeps and says the turn was local::

    meter = CostMeter(generator, cloud=session, local_only=True)
    meter.start()
    stream = generator.stream(prompt)
    text = stream.text()
    meter.finish(stream.summary)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from citer_edge.cloud.audit import UploadAudit, UploadTotals

if TYPE_CHECKING:
    from citer_edge.cloud.session import CloudSession
    from citer_edge.decode import GenerationSummary, HybridGenerator


class CostMeter:
    """Reads a generator's policy, budget and upload audit around one generation."""

    def __init__(self, generator: HybridGenerator, cloud: CloudSession | None = None, local_only: bool = False) -> None:
        self.generator = generator
        self.cloud = cloud if cloud is not None else generator.cloud  # kept while a chat is local (generator's is None)
        self.local_only = local_only
        self._before = UploadTotals()

    def start(self) -> None:
        audit = self._audit()
        self._before = audit.snapshot() if audit is not None else UploadTotals()

    def finish(self, summary: GenerationSummary) -> GenerationSummary:
        policy = self.generator.policy
        summary.target_share = target_share(policy)
        summary.local_only = self.local_only
        budget = self.cloud.budget if self.cloud is not None else None
        summary.budget = budget.to_dict() if budget is not None else None
        audit = self._audit()
        if audit is not None:
            spent = audit.totals.since(self._before)
            summary.uploads = spent.uploads
            summary.upload_tokens = spent.tokens
            summary.upload_text_bytes = spent.text_bytes
            summary.upload_wire_bytes = spent.wire_bytes
        return summary

    def _audit(self) -> UploadAudit | None:
        return self.cloud.audit if self.cloud is not None else None


def target_share(policy: object) -> float | None:
    """The cloud share a policy aims at, where it aims at one (share controller, calibrated router, random)."""
    for name in ("target_share", "cloud_share"):
        value = getattr(policy, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None
