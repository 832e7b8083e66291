"""The planner's picture of the cluster: nodes, domains, runs, leases, reservations.

``planner.fold`` builds and advances a ``ClusterState`` from ledger records;
``plan()`` never mutates one (it works on an overlay, ``planner.view.PlanView``).
Derived counters (per-node free slots, per-domain schedulable free GPUs, per-envelope
funded GPUs, the FIFO of pending runs, the runs with a finish request) are kept by
the fold so planning needs no full scans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ledger import events as ev
from ledger.model import BudgetSpec, PolicySpec, RunSpec
from planner.clone import clone
from planner.hours import FundingIndex

DomainKey = tuple[str, str, str]
"""(gpuType, cluster, fabricDomain): SPEC §3.1."""

FINISHED = frozenset({"Completed", "Failed", "Cancelled"})


def envelope_key(owner: str, envelope: str) -> str:
    return f"{owner}/{envelope}"


def lease_id(seq: int) -> str:
    return f"lease-{seq:06d}"


def reservation_id(seq: int) -> str:
    return f"res-{seq:06d}"


@dataclass(slots=True)
class NodeState:
    name: str
    gpu_type: str
    gpus: int
    region: str
    cluster: str
    fabric_domain: str
    cordoned: bool = False
    cordon_reason: str = ""
    failed: bool = False
    free: set[int] = field(default_factory=set)
    leases: set[str] = field(default_factory=set)

    @property
    def schedulable(self) -> bool:
        return not (self.cordoned or self.failed)

    @property
    def domain(self) -> DomainKey:
        return (self.gpu_type, self.cluster, self.fabric_domain)


@dataclass(slots=True)
class DomainState:
    key: DomainKey
    region: str
    nodes: list[str] = field(default_factory=list)  # sorted by name
    free: int = 0  # free GPUs on schedulable nodes

    @property
    def name(self) -> str:
        return f"{self.key[1]}/{self.key[2]}"

    @property
    def location(self) -> dict[str, str]:
        return {"region": self.region, "cluster": self.key[1], "fabricDomain": self.key[2]}


@dataclass(slots=True)
class LeaseState:
    lease_id: str
    run: str
    group: int
    role: str
    node: str
    slots: tuple[int, ...]
    envelope: str | None
    payer_owner: str | None
    payer_class: str
    started_at: datetime
    position: int

    @classmethod
    def started(cls, e: ev.LeaseStarted, at: datetime, position: int = 0, payer_class: str | None = None) -> LeaseState:
        """The open lease a LeaseStarted describes (``position`` 0: decided in this plan call, not yet stored)."""
        return cls(e.lease_id, e.run, e.group, e.role, e.node, tuple(e.slots), e.envelope, e.payer_owner,
                   e.payer_class if payer_class is None else payer_class, at, position)  # fmt: skip


@dataclass(slots=True)
class RunState:
    key: str
    namespace: str
    name: str
    spec: RunSpec
    submitter: str
    phase: str
    submitted_position: int
    submitted_at: datetime
    desired: int
    deferred_message: str | None = None
    finish_request: str | None = None  # "Cancelled" | "Completed": first request wins
    shrink_requested: int = 0
    width: int = 0
    admitted_at: datetime | None = None
    finish_reason: str | None = None
    leases: set[str] = field(default_factory=set)
    reservation: str | None = None  # open reservation id (SPEC §5, planner.reserve)
    requeued: bool = False  # lost its leases once (RunRequeued) in this incarnation

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED


@dataclass(slots=True)
class ReservationState:
    """An open reservation: the latest ReservationCreated/Changed content."""

    reservation_id: str
    run: str
    earliest_start: datetime
    event: ev.ReservationCreated | ev.ReservationChanged


@dataclass(slots=True)
class ClusterState:
    nodes: dict[str, NodeState] = field(default_factory=dict)
    domains: dict[DomainKey, DomainState] = field(default_factory=dict)
    domains_by_type: dict[str, list[DomainKey]] = field(default_factory=dict)  # sorted
    budgets: dict[str, BudgetSpec] = field(default_factory=dict)
    policy: PolicySpec = field(default_factory=PolicySpec)
    runs: dict[str, RunState] = field(default_factory=dict)  # live runs only: RunFinished removes one
    pending: dict[str, int] = field(default_factory=dict)  # run key -> submitted position
    finishing: dict[str, int] = field(default_factory=dict)  # run key -> request position
    leases: dict[str, LeaseState] = field(default_factory=dict)  # open leases
    funded: dict[str, int] = field(default_factory=dict)  # envelope key -> funded GPUs now
    fills: set[str] = field(default_factory=set)  # open Fill lease ids (SPEC §6.2)
    funding: FundingIndex = field(default_factory=FundingIndex)  # funded leases and GPU-hours (§4.3)
    plan_version: int = 0
    last_position: int = 0
    last_time: datetime | None = None
    next_lease_seq: int = 1
    reservations: dict[str, ReservationState] = field(default_factory=dict)  # open ones
    next_reservation_seq: int = 1

    def copy(self) -> ClusterState:
        """An independent copy (fold consumes its base; plan never does): ``planner.clone``."""
        return clone(self)

    def pending_in_order(self) -> list[RunState]:
        return [self.runs[k] for k, _ in sorted(self.pending.items(), key=lambda kv: kv[1])]


def change_free(free: set[int], slots: tuple[int, ...], gpus: int, take: bool) -> int:
    """Take ``slots`` out of a node's ``free`` set, or give them back (within its ``gpus``): the change in size."""
    before = len(free)
    if take:
        free.difference_update(slots)
    else:
        free.update(s for s in slots if s < gpus)
    return len(free) - before
