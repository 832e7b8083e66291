"""Rules the planner's fold and the read-model projections share: one definition each.

The planner folds events into memory (``planner.fold``) and ``ledger.projections``
folds the same events into tables; where both need a rule, it lives here.
"""

from __future__ import annotations

from ledger.model import RunSpec

#: The reason of a cordon set by hand (``nodes cordon``); only that one outlives a recovery.
MANUAL_CORDON = "manual"


def cordon_after_recovery(reason: str | None) -> str | None:
    """A node's cordon reason after NodeRecovered (SPEC §6.3): a manual cordon stays, any other lifts."""
    return reason if reason == MANUAL_CORDON else None


def shrunk_width(spec: RunSpec, allocated: int, desired: int, by: int) -> int:
    """The new desired width after ``shrink --by`` (SPEC §7): ``allocated - by``, step-aligned, >= min.

    A run holding nothing yet (pending) shrinks from its desired width instead; a second
    shrink folded before the planner acted on the first counts from the lower of the two.
    """
    if spec.malleable is None:
        return desired
    low, step = spec.malleable.min_total_gpus, spec.malleable.step_gpus
    base = min(allocated, desired) if allocated > 0 else desired
    want = base - by
    if want <= low:
        return low
    return low + ((want - low) // step) * step
