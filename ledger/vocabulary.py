"""The domain's words, one definition each (issue #13: a typed vocabulary).

Values are the strings stored in event payloads and read-model rows, so a member compares
and hashes equal to its string and old rows read unchanged. Renaming a value is a payload
change: it needs an upcast (ledger/events.py), not an edit here.
"""

from __future__ import annotations

from enum import StrEnum


class LeaseRole(StrEnum):
    """What a lease's slots are for (SPEC §6.2)."""

    ACTIVE = "Active"
    SPARE = "Spare"
    FILL = "Fill"


HOLDING_ROLES: frozenset[str] = frozenset({LeaseRole.ACTIVE, LeaseRole.SPARE})
"""Roles that hold slots exclusively and are paid for (Fill leases sit on Spare slots)."""

WIDTH_ROLES: frozenset[str] = frozenset({LeaseRole.ACTIVE, LeaseRole.FILL})
"""Roles whose GPUs count toward a run's allocated width (a filling run's GPUs run its pods)."""


class PayerClass(StrEnum):
    """Who pays for a lease (SPEC §4), in the order tables and plots show them."""

    OWNED = "owned"
    SHARED = "shared"
    BORROWED = "borrowed"
    UNFUNDED = "unfunded"


USAGE_LAYERS: tuple[str, ...] = (*PayerClass, "spare")
"""How usage charts stack GPUs: by payer class, with spare slots as their own layer."""


class RunPhase(StrEnum):
    """A run's phase as the read models and the CLI show it (SPEC §5)."""

    PENDING = "Pending"
    RESERVED = "Reserved"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    REJECTED = "Rejected"
    """Only on a Run custom resource whose spec intake refused; never in the ledger."""


FINISHED_PHASES: frozenset[str] = frozenset({RunPhase.COMPLETED, RunPhase.FAILED, RunPhase.CANCELLED})
WAITING_PHASES: frozenset[str] = frozenset({RunPhase.PENDING, RunPhase.RESERVED})


class ReservationState(StrEnum):
    """A reservation row's state: open until one of the closing events."""

    OPEN = "Open"
    RELEASED = "Released"
    CANCELLED = "Cancelled"
    ACTIVATED = "Activated"


class Remedy(StrEnum):
    """How a reservation frees GPUs at its start, in the order they are tried (SPEC §7)."""

    RECLAIM_UNFUNDED = "ReclaimUnfunded"
    DROP_SPARE = "DropSpare"
    SHRINK = "Shrink"
    RANDOM_PREEMPT = "RandomPreempt"


class LeaseReason(StrEnum):
    """Why a lease started or ended (``LeaseStarted.reason``, ``LeaseEnded.reason``)."""

    ADMITTED = "Admitted"
    GROW = "Grow"
    SHRINK = Remedy.SHRINK.value
    RECLAIM_UNFUNDED = Remedy.RECLAIM_UNFUNDED.value
    DROP_SPARE = Remedy.DROP_SPARE.value
    RANDOM_PREEMPT = Remedy.RANDOM_PREEMPT.value
    NODE_FAILURE = "NodeFailure"
    SWAP = "Swap"
    RECLAIMED_BY_SPARE = "ReclaimedBySpare"
    SPARE_REPLACED = "SpareReplaced"
    SPARE_RELEASED = "SpareReleased"
    PAYER_CHANGED = "PayerChanged"
    REQUEUED = "Requeued"
    FAILED = RunPhase.FAILED.value
    COMPLETED = RunPhase.COMPLETED.value
    CANCELLED = RunPhase.CANCELLED.value


class Confidence(StrEnum):
    """How sure a reservation's earliestStart is (SPEC §7)."""

    FIRM = "firm"
    LOTTERY = "lottery"
    WINDOW_ALIGNED = "window-aligned"
