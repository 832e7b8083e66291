"""The event catalog: every fact the ledger stores.

Events are frozen dataclasses named in the past tense. Each has a stable type
string (never renamed; add an upcaster instead) and a schema version. Payloads
hold only JSON-friendly values so that ``to_data``/``from_data`` round-trip.

Inputs come from people and Kubernetes; decisions come from the planner only.
Time is not part of an event's payload: the ledger records the logical time of
every event (``Recorded.occurred_at``), which is "now" as the caller saw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# re-exported (explicitly): the catalog's API is ``ev.*``, codec included
from ledger.event_codec import JSON as JSON
from ledger.event_codec import VERSION_KEY as VERSION_KEY
from ledger.event_codec import Event as Event
from ledger.event_codec import Upcaster as Upcaster
from ledger.event_codec import event as event
from ledger.event_codec import event_types as event_types
from ledger.event_codec import from_data as from_data
from ledger.event_codec import to_data as to_data
from ledger.event_codec import upcast as upcast
from ledger.event_codec import upcaster as upcaster

# ---------------------------------------------------------------- streams

POLICY_STREAM = "policy"


def run_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def run_stream(run: str) -> str:
    return f"run:{run}"


def budget_stream(owner: str) -> str:
    return f"budget:{owner}"


def node_stream(node: str) -> str:
    return f"node:{node}"


def admission_stream(uid: str) -> str:
    return f"admission:{uid}"


def plan_stream(shard: int = 0) -> str:
    return f"plan:{shard}"


def binder_stream(shard: int = 0) -> str:
    return f"binder:{shard}"


CLOCK_STREAM = "clock"


# ---------------------------------------------------------------- inputs


@event("NodeRegistered")
@dataclass(frozen=True, slots=True)
class NodeRegistered(Event):
    """A node was added or updated (gpus, labels)."""

    name: str
    gpu_type: str
    gpus: int
    labels: dict[str, str]


@event("NodeCordoned")
@dataclass(frozen=True, slots=True)
class NodeCordoned(Event):
    name: str
    reason: str = "manual"


@event("NodeUncordoned")
@dataclass(frozen=True, slots=True)
class NodeUncordoned(Event):
    name: str


@event("NodeFailed")
@dataclass(frozen=True, slots=True)
class NodeFailed(Event):
    name: str
    reason: str = "manual"


@event("NodeRecovered")
@dataclass(frozen=True, slots=True)
class NodeRecovered(Event):
    name: str


@event("BudgetApplied")
@dataclass(frozen=True, slots=True)
class BudgetApplied(Event):
    """A Budget manifest was applied; ``spec`` is the validated, normalised spec."""

    owner: str
    name: str
    spec: JSON


@event("PolicyChanged")
@dataclass(frozen=True, slots=True)
class PolicyChanged(Event):
    spec: JSON


@event("RunSubmitted")
@dataclass(frozen=True, slots=True)
class RunSubmitted(Event):
    """A Run manifest was accepted; ``spec`` is the validated, normalised spec."""

    run: str
    namespace: str
    name: str
    submitter: str
    spec: JSON


@event("RunShrinkRequested")
@dataclass(frozen=True, slots=True)
class RunShrinkRequested(Event):
    run: str
    by: int


@event("RunCancelRequested")
@dataclass(frozen=True, slots=True)
class RunCancelRequested(Event):
    run: str


@event("RunCompleted")
@dataclass(frozen=True, slots=True)
class RunCompleted(Event):
    """The run's workload finished (binder) or someone said so (`jobtree complete`)."""

    run: str


@event("PodBound")
@dataclass(frozen=True, slots=True)
class PodBound(Event):
    lease_id: str
    node: str
    pods: tuple[str, ...]


@event("PodBindFailed")
@dataclass(frozen=True, slots=True)
class PodBindFailed(Event):
    lease_id: str
    node: str
    message: str


@event("ClockAdvanced")
@dataclass(frozen=True, slots=True)
class ClockAdvanced(Event):
    """The ledger's clock moved to this event's ``occurred_at`` (``--now`` on a write).

    Time is an input (ARCHITECTURE §4): the planner plans at the newest time it has
    folded, so replaying the events reproduces every decision. ``reason`` says why
    (``--now``, ``clock set``); the actor is on the record.
    """

    reason: str = ""


@event("AdmissionReviewed")
@dataclass(frozen=True, slots=True)
class AdmissionReviewed(Event):
    """The intake's admission webhook admitted a CREATE/UPDATE of the Kubernetes Run ``uid`` for ``user``
    (with ``groups``), as the API server authenticated them; the intake submits the Run as that user."""

    uid: str
    user: str
    groups: tuple[str, ...]
    namespace: str = ""
    name: str = ""


# ---------------------------------------------------------------- decisions


@event("RunAdmitted")
@dataclass(frozen=True, slots=True)
class RunAdmitted(Event):
    run: str
    width: int


@event("RunDeferred")
@dataclass(frozen=True, slots=True)
class RunDeferred(Event):
    """The run stays Pending; ``message`` says what is short. Only recorded on change."""

    run: str
    message: str


@event("LeaseStarted")
@dataclass(frozen=True, slots=True)
class LeaseStarted(Event):
    """GPU slots of one node are held by one group of one run, paid by one payer.

    ``role``: Active | Spare | Fill. ``envelope``: ``"<owner>/<envelope>"`` or None.
    ``payer_class``: owned | shared | borrowed | unfunded.
    ``previous``: for reason ``PayerChanged``, the lease (ended at the same instant)
    whose slots this one carries on; the binder keeps its pods.
    """

    lease_id: str
    run: str
    group: int
    role: str
    node: str
    slots: tuple[int, ...]
    envelope: str | None
    payer_owner: str | None
    payer_class: str
    reason: str
    previous: str | None = None


@event("LeaseEnded")
@dataclass(frozen=True, slots=True)
class LeaseEnded(Event):
    lease_id: str
    reason: str
    seed: str | None = None


@event("RunFinished")
@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    """``phase``: Completed | Failed | Cancelled."""

    run: str
    phase: str
    reason: str


@event("RunRequeued")
@dataclass(frozen=True, slots=True)
class RunRequeued(Event):
    """The run lost its leases (SPEC §6.3, §5.4) and is Pending again in its old FIFO place."""

    run: str
    reason: str


@event("RunResized")
@dataclass(frozen=True, slots=True)
class RunResized(Event):
    """A running malleable run's allocated width changed (``reason``: Grow | Shrink | NodeFailure …)."""

    run: str
    width: int
    reason: str


# ---------------------------------------------------------------- reservations (SPEC §5)


@dataclass(frozen=True, slots=True)
class ReservationContent(Event):
    """What a Reservation says (shared by ReservationCreated and ReservationChanged).

    ``earliest_start``: RFC 3339 UTC. ``deficit``: ``{"<cluster>/<fabricDomain>": GPUs}``.
    ``remedies``: ``[{"action": ReclaimUnfunded|DropSpare|Shrink|RandomPreempt, "gpus": N}]``
    in application order. ``kill_probability`` and ``shrink``: per run in the conflict set.
    ``confidence``: firm | lottery | window-aligned. ``seed``: the lottery seed for an
    activation at ``earliest_start`` (SPEC §5.4). ``slots``: the intended placement, kept
    while it stays valid so the plan does not wander.
    """

    reservation: str
    run: str
    earliest_start: str
    width: int
    domains: tuple[str, ...]
    nodes: tuple[str, ...]
    payers: tuple[str, ...]
    deficit: dict[str, int]
    conflict_set: tuple[str, ...]
    remedies: tuple[dict[str, Any], ...]
    kill_probability: dict[str, float]
    shrink: dict[str, int]
    confidence: str
    seed: str
    message: str = ""
    slots: dict[str, list[int]] | None = None  # the intended placement: node -> GPU slots


@event("ReservationCreated")
@dataclass(frozen=True, slots=True)
class ReservationCreated(ReservationContent):
    """A plan for a run that cannot start now (planner.reserve)."""


@event("ReservationChanged")
@dataclass(frozen=True, slots=True)
class ReservationChanged(ReservationContent):
    """The reservation's content changed; ``earliest_start`` never moves later (SPEC §5.2)."""


@event("ReservationReleased")
@dataclass(frozen=True, slots=True)
class ReservationReleased(Event):
    """The run no longer needs its reservation (it started without cuts, or can no longer be placed)."""

    reservation: str
    run: str
    reason: str


@event("ReservationCancelled")
@dataclass(frozen=True, slots=True)
class ReservationCancelled(Event):
    reservation: str
    run: str


@event("ReservationActivated")
@dataclass(frozen=True, slots=True)
class ReservationActivated(Event):
    """At ``earliestStart`` the cuts were made (``freed`` GPUs) and the run starts; ``seed`` drove the lottery."""

    reservation: str
    run: str
    seed: str
    freed: int


@event("ConflictWarningIssued")
@dataclass(frozen=True, slots=True)
class ConflictWarningIssued(Event):
    """``run`` is in the conflict set of ``reservation`` (for ``by``): advance warning (SPEC §5.3)."""

    reservation: str
    run: str
    by: str
    earliest_start: str
    kill_probability: float
    shrink_gpus: int


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event as the ledger stored it."""

    position: int
    stream: str
    version: int
    event: Event
    actor: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended to one stream."""

    stream: str
    event: Event
