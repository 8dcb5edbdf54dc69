"""What an audit claims while it runs: its output folder always, its reference only while it writes to it.

Two runs writing one folder corrupt each other's shards (one run's part files vanish under the other), so
:func:`audit_claims` claims ``cfg.output`` (:mod:`memray.io.claim`) before anything is written there and refuses a
second writer at once, naming the first. A reference whose fit for this audit is complete (listed in its
``reference.json``, :func:`memray.job.markers.fit_done`) is only read: any number of audits may read
it at once, with no claim. Otherwise the audit builds it (its embeddings, or a fit of new settings) and claims it
too, so a second audit building the same reference is refused with the builder's name instead of failing later.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from memray.io.claim import Claim, acquire
from memray.job.config import AuditConfig
from memray.job.keys import Listed, fit_key
from memray.job.markers import fit_done

log = logging.getLogger(__name__)
OUTPUT_ADVICE = "wait, use another --out"
REFERENCE_ADVICE = "wait, or give another reference"


@dataclass
class AuditClaims:
    """The claims an audit holds; ``reference`` is ``None`` while the reference is only read (or there is none)."""

    cfg: AuditConfig
    fit_key: str | None
    output: Claim
    reference: Claim | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def claim_reference(self) -> Claim:
        """Claim the reference for writing (idempotent); :class:`~memray.io.claim.ClaimHeldError` if it is held."""
        if self.reference is None:
            self.reference = self._stack.enter_context(_claim(self.cfg, str(self.cfg.reference), reference=True))
        return self.reference

    def check(self) -> None:
        """Raise :class:`~memray.io.claim.ClaimLostError` if another run took a claim over."""
        for claim in (self.output, self.reference):
            if claim is not None:
                claim.check()

    def record(self) -> dict[str, Any]:
        """For ``run.json``: who held the output, and whether the reference was built (claimed) or only read."""
        out: dict[str, Any] = {"output": asdict(self.output.record)}
        if self.cfg.reference:
            ref = self.reference
            out["reference"] = {"role": "read"} if ref is None else {"role": "built", **asdict(ref.record)}
        return out


def _claim(cfg: AuditConfig, folder: str, reference: bool) -> Claim:
    storage_options = cfg.storage
    if reference:
        return acquire(folder, cfg.claim_lease_s, storage_options, "memray audit (reference)", "reference ", "built",
                       REFERENCE_ADVICE)  # fmt: skip
    return acquire(folder, cfg.claim_lease_s, storage_options, "memray audit (output)", "", "written", OUTPUT_ADVICE)


@contextlib.contextmanager
def audit_claims(cfg: AuditConfig, checked: Listed) -> Iterator[AuditClaims]:
    """Hold the output claim, and the reference claim unless the reference is finished for this audit's fit.

    ``checked``: the preflight (:class:`memray.job.preflight.Preflight`; its listings give the fit key).

    Raises:
        ClaimHeldError: the output, or a reference this audit would build, is claimed by a live run.
    """
    key = fit_key(cfg, checked) if cfg.reference else None
    with _claim(cfg, cfg.output, reference=False) as output:
        claims = AuditClaims(cfg, key, output)
        with claims._stack:
            if key is not None and not fit_done(cfg.reference, key, cfg.storage):
                claims.claim_reference()
            elif key is not None:
                log.info("reference %s: finished for this audit's fit; read without a claim", cfg.reference)
            yield claims
