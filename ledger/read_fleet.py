"""Read queries over the fleet and its money: leases, nodes, budgets, funding usage (``ledger.queries``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine, text

from ledger.read_runs import Row, iso_utc


def lease_row(row: Any) -> Row:
    return {
        "id": row.lease_id,
        "run": row.run,
        "group": row.group_index,
        "role": row.role,
        "node": row.node,
        "slots": list(row.slots),
        "gpus": row.gpus,
        "envelope": row.envelope,
        "payerOwner": row.payer_owner,
        "class": row.payer_class,
        "start": iso_utc(row.start_at),
        "end": iso_utc(row.end_at),
        "reason": row.reason,
        "endReason": row.end_reason,
        "seed": row.seed,  # the lottery seed a reservation's activation published when it ended this lease (§5.4)
    }


_LEASE_COLUMNS = (
    "lease_id, run, group_index, role, node, slots, gpus, envelope, payer_owner, payer_class, "
    "start_at, end_at, reason, end_reason, seed, bound"
)


def list_leases(
    engine: Engine,
    run: str | None = None,
    owner: str | None = None,
    since_position: int | None = None,
    open_only: bool = False,
) -> list[Row]:
    sql = f"SELECT {_LEASE_COLUMNS} FROM leases l WHERE true"
    params: dict[str, Any] = {}
    if run is not None:
        sql += " AND run = :run"
        params["run"] = run
    if owner is not None:
        sql += " AND run IN (SELECT run FROM runs WHERE owner = :owner)"
        params["owner"] = owner
    if since_position is not None:
        sql += (
            " AND lease_id IN (SELECT data->>'lease_id' FROM events WHERE type = 'LeaseStarted' AND position > :since)"
        )
        params["since"] = since_position
    if open_only:
        sql += " AND end_at IS NULL"
    sql += " ORDER BY start_at, lease_id"
    with engine.connect() as conn:
        return [lease_row(r) for r in conn.execute(text(sql), params)]


def node_gpu_types(engine: Engine) -> set[str]:
    """Every GPU type some registered node has."""
    with engine.connect() as conn:
        return {r.gpu_type for r in conn.execute(text("SELECT DISTINCT gpu_type FROM nodes"))}


def list_nodes(engine: Engine) -> list[Row]:
    sql = """
        SELECT n.name, n.gpu_type, n.gpus, n.region, n.cluster, n.fabric_domain, n.cordoned, n.failed,
               n.cordon_reason, COALESCE((SELECT count(*) FROM lease_slots s
                         WHERE s.node = n.name AND upper_inf(s.during) AND s.role IN ('Active', 'Spare')), 0)
                 AS held
        FROM nodes n ORDER BY n.cluster, n.fabric_domain, n.name
    """
    with engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    return [
        {
            "name": r.name,
            "gpuType": r.gpu_type,
            "gpus": r.gpus,
            "used": int(r.held),
            "free": 0 if (r.cordoned or r.failed) else r.gpus - int(r.held),
            "labels": {"region": r.region, "cluster": r.cluster, "fabricDomain": r.fabric_domain},
            "cordoned": bool(r.cordoned),
            "failed": bool(r.failed),
            "cordonReason": r.cordon_reason if r.cordoned else None,  # manual | NodeFailure | …
        }
        for r in rows
    ]


class NodeRegistration(NamedTuple):
    """A node as its latest ``NodeRegistered`` describes it."""

    gpu_type: str
    gpus: int
    labels: dict[str, str]


def node_registrations(engine: Engine) -> dict[str, NodeRegistration]:
    """Each node's registration as the ledger holds it; ``apply`` skips equal ones."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, gpu_type, gpus, labels FROM nodes")).all()
    return {r.name: NodeRegistration(r.gpu_type, r.gpus, dict(r.labels)) for r in rows}


def max_held_slot(engine: Engine, node: str) -> int:
    """Highest GPU index held by an open lease on the node, or -1."""
    sql = "SELECT COALESCE(max(gpu), -1) FROM lease_slots WHERE node = :node AND upper_inf(during)"
    with engine.connect() as conn:
        return int(conn.execute(text(sql), {"node": node}).scalar_one())


def list_budgets(engine: Engine) -> list[Row]:
    with engine.connect() as conn:
        budgets = conn.execute(text("SELECT owner, name, spec FROM budgets ORDER BY owner")).all()
    return [{"owner": b.owner, "name": b.name, "spec": b.spec} for b in budgets]


def budget_submitters(engine: Engine, owner: str) -> list[str] | None:
    """The owner's submitters, or None when the owner has no Budget."""
    for budget in list_budgets(engine):
        if budget["owner"] == owner:
            return list(budget["spec"].get("submitters", []))
    return None


def envelope_usage(engine: Engine) -> list[Row]:
    """Funded GPUs held now per envelope (Active and Spare at full count), by class."""
    sql = """
        SELECT e.owner, e.name, e.gpu_type, e.concurrency, e.max_gpu_hours, e.selector,
               COALESCE(sum(l.gpus) FILTER (WHERE l.payer_class = 'owned'), 0) AS owned,
               COALESCE(sum(l.gpus) FILTER (WHERE l.payer_class = 'shared'), 0) AS shared,
               COALESCE(sum(l.gpus) FILTER (WHERE l.payer_class = 'borrowed'), 0) AS borrowed
        FROM envelopes e
        LEFT JOIN leases l
          ON l.envelope = e.owner || '/' || e.name AND l.end_at IS NULL AND l.role IN ('Active', 'Spare')
        GROUP BY e.owner, e.name, e.gpu_type, e.concurrency, e.max_gpu_hours, e.selector
        ORDER BY e.owner, e.name
    """
    with engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    out = []
    for r in rows:
        used = int(r.owned) + int(r.shared) + int(r.borrowed)
        out.append(
            {
                "envelope": f"{r.owner}/{r.name}",
                "owner": r.owner,
                "gpuType": r.gpu_type,
                "selector": r.selector or {},
                "concurrency": r.concurrency,
                "owned": int(r.owned),
                "shared": int(r.shared),
                "borrowed": int(r.borrowed),
                "headroom": max(r.concurrency - used, 0),
                "maxGPUHours": r.max_gpu_hours,
            }
        )
    return out


_UNFUNDED_BY_ENVELOPE = """
    SELECT e.owner, e.name, COALESCE(sum(l.gpus), 0) AS gpus
    FROM envelopes e
    JOIN runs r ON r.owner = e.owner
    JOIN leases l ON l.run = r.run AND l.end_at IS NULL AND l.payer_class = 'unfunded'
                 AND l.role IN ('Active', 'Spare', 'Fill')
    JOIN nodes n ON n.name = l.node AND n.gpu_type = e.gpu_type
                AND (e.selector->>'region' IS NULL OR e.selector->>'region' = n.region)
                AND (e.selector->>'cluster' IS NULL OR e.selector->>'cluster' = n.cluster)
                AND (e.selector->>'fabricDomain' IS NULL OR e.selector->>'fabricDomain' = n.fabric_domain)
    GROUP BY e.owner, e.name
"""

_RELATIONS = """
    SELECT l.envelope, l.payer_owner, l.payer_class, r.owner AS run_owner, n.gpu_type, sum(l.gpus) AS gpus
    FROM leases l JOIN runs r ON r.run = l.run LEFT JOIN nodes n ON n.name = l.node
    WHERE l.end_at IS NULL AND l.role IN ('Active', 'Spare') AND l.payer_class IN ('shared', 'borrowed')
    GROUP BY l.envelope, l.payer_owner, l.payer_class, r.owner, n.gpu_type
    ORDER BY l.envelope, r.owner
"""

_CHARGED_HOURS = """
    SELECT l.envelope,
           sum(l.gpus * CASE WHEN l.role = 'Spare' THEN CAST(:spare AS numeric) ELSE 1 END
               * EXTRACT(EPOCH FROM least(COALESCE(l.end_at, :now), :now) - l.start_at)) / 3600 AS hours,
           sum(l.gpus * EXTRACT(EPOCH FROM least(COALESCE(l.end_at, :now), :now) - l.start_at))
               FILTER (WHERE l.payer_class = 'borrowed') / 3600 AS lent_hours
    FROM leases l
    WHERE l.envelope IS NOT NULL AND l.payer_class <> 'unfunded' AND l.role IN ('Active', 'Spare')
      AND l.start_at < :now
    GROUP BY l.envelope
"""


def _window(start: datetime | None, end: datetime | None, now: datetime) -> tuple[Row | None, bool]:
    if start is None and end is None:
        return None, True
    open_now = (start is None or start <= now) and (end is None or now < end)
    return {"start": iso_utc(start), "end": iso_utc(end)}, open_now


def funding_usage(engine: Engine, now: datetime, spare_rate: float = 0.5) -> list[Row]:
    """``envelope_usage`` plus who pays for whom, GPU-hours and windows, per envelope.

    Added keys: ``unfunded`` (unfunded GPUs of the owner's runs this envelope could pay
    for: same gpuType, selector matches), ``gpuHoursUsed`` (charged: spares at
    ``spare_rate``), ``gpuHoursLeft`` (of ``maxGPUHours``, or None), ``lentGPUHours``,
    ``window``/``windowOpen``, ``sharing``, ``lending``, ``lentTo`` and ``sharedWith``
    (other owners this envelope pays for now), ``borrowedFrom`` and ``sharedFrom`` (other
    owners' envelopes paying for this owner's runs of this gpuType now).
    """
    rows = envelope_usage(engine)
    params = {"now": now, "spare": spare_rate}
    with engine.connect() as conn:
        unfunded = {(r.owner, r.name): int(r.gpus) for r in conn.execute(text(_UNFUNDED_BY_ENVELOPE))}
        relations = list(conn.execute(text(_RELATIONS)).all())
        hours = {r.envelope: r for r in conn.execute(text(_CHARGED_HOURS), params)}
        extra = {
            (r.owner, r.name): r
            for r in conn.execute(text("SELECT owner, name, window_start, window_end, sharing, lending FROM envelopes"))
        }
    for row in rows:
        key = (row["owner"], row["envelope"].rsplit("/", 1)[1])
        used = hours.get(row["envelope"])
        spent = round(float(used.hours or 0), 6) if used is not None else 0.0
        info = extra[key]
        window, open_now = _window(info.window_start, info.window_end, now)
        row |= {
            "unfunded": unfunded.get(key, 0),
            "gpuHoursUsed": spent,
            "gpuHoursLeft": None if row["maxGPUHours"] is None else round(row["maxGPUHours"] - spent, 6),
            "lentGPUHours": round(float(used.lent_hours or 0), 6) if used is not None else 0.0,
            "window": window,
            "windowOpen": open_now,
            "sharing": info.sharing,
            "lending": info.lending,
            "lentTo": _others(relations, row, "borrowed", lender=True),
            "sharedWith": _others(relations, row, "shared", lender=True),
            "borrowedFrom": _others(relations, row, "borrowed", lender=False),
            "sharedFrom": _others(relations, row, "shared", lender=False),
        }
        # ``lent``: this envelope's GPUs held by other owners' runs; ``borrowed``: what the owner's runs
        # borrow from other envelopes (each row states its own side of a loan, SPEC §9)
        row["lent"] = row["borrowed"]
        row["borrowed"] = sum(r["gpus"] for r in row["borrowedFrom"])
    return rows


def _others(relations: list[Any], row: Row, payer_class: str, lender: bool) -> list[Row]:
    out = []
    for r in relations:
        if r.payer_class != payer_class:
            continue
        if lender and r.envelope == row["envelope"]:
            out.append({"owner": r.run_owner, "gpus": int(r.gpus)})
        elif not lender and r.run_owner == row["owner"] and r.gpu_type == row["gpuType"]:
            out.append({"envelope": r.envelope, "owner": r.payer_owner, "gpus": int(r.gpus)})
    return out
