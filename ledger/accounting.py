"""GPU-hour queries over the accounting functions and views of migration 0002.

Every lease has one payer, so each figure is a plain sum over ``gpu_hours(from, to,
now)`` (see docs/accounting.md). Rows come back with stable camelCase keys (the
``-o json`` contract); seconds are exact integers, hours are rounded to 6 places.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from ledger.fields import parse_duration
from ledger.queries import iso_utc

Row = dict[str, Any]

GROUPINGS = ("envelope", "owner", "submitter", "class", "run")

_SUM_KEYS = {
    "gpu_seconds": "gpuSeconds",
    "charged_gpu_seconds": "chargedGPUSeconds",
    "gpu_hours": "gpuHours",
    "charged_gpu_hours": "chargedGPUHours",
    "owned_gpu_hours": "ownedGPUHours",
    "shared_gpu_hours": "sharedGPUHours",
    "borrowed_gpu_hours": "borrowedGPUHours",
    "unfunded_gpu_hours": "unfundedGPUHours",
    "spare_gpu_hours": "spareGPUHours",
}
_GROUP_KEYS = {
    "envelope": {"envelope": "envelope", "owner": "owner"},
    "owner": {"owner": "owner"},
    "submitter": {"submitter": "submitter"},
    "class": {"payer_class": "class"},
    "run": {"run": "run", "run_owner": "owner"},
}


@dataclass(frozen=True, slots=True)
class Period:
    """``[start, end)``; None is open-ended on that side."""

    start: datetime | None = None
    end: datetime | None = None

    def as_row(self) -> Row:
        return {"from": iso_utc(self.start), "to": iso_utc(self.end)}


def number(value: Any) -> int | float:
    """A numeric column as JSON: integral values as int, the rest as float."""
    if value is None:
        return 0
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return int(value) if float(value).is_integer() else float(value)


def _instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_period(value: str, now: datetime) -> Period:
    """``YYYY-MM`` (a UTC month), ``YYYY-MM-DD`` (a UTC day), ``FROM/TO`` (RFC 3339, either
    side may be empty) or a duration (``24h``, ``P7D``: that long up to ``now``)."""
    raw = value.strip()
    try:
        month = _MONTH.match(raw)
        if month:
            year, mon = int(month.group(1)), int(month.group(2))
            start = datetime(year, mon, 1, tzinfo=UTC)
            end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
            return Period(start, end)
        if _DAY.match(raw):
            start = _instant(raw + "T00:00:00Z")
            return Period(start, start + timedelta(days=1))
        if "/" in raw:
            left, _, right = raw.partition("/")
            return _ordered(Period(_instant(left) if left else None, _instant(right) if right else None))
    except ValueError:
        raise ValueError(f"{value!r} is not a period (YYYY-MM, YYYY-MM-DD, FROM/TO or a duration like 24h)") from None
    try:
        return Period(now - parse_duration(raw), now)
    except ValueError:
        raise ValueError(f"{value!r} is not a period (YYYY-MM, YYYY-MM-DD, FROM/TO or a duration like 24h)") from None


def _ordered(period: Period) -> Period:
    if period.start and period.end and period.end <= period.start:
        raise ValueError(f"the period must end after it starts ({iso_utc(period.start)} .. {iso_utc(period.end)})")
    return period


def make_period(start: str | None, end: str | None) -> Period:
    """A period from ``--from``/``--to`` strings (RFC 3339); raises ValueError naming the bad one."""
    bounds: list[datetime | None] = []
    for name, raw in (("--from", start), ("--to", end)):
        try:
            bounds.append(_instant(raw) if raw else None)
        except ValueError:
            raise ValueError(f"{name}: {raw!r} is not an RFC 3339 time (e.g. 2026-01-01T00:00:00Z)") from None
    return _ordered(Period(bounds[0], bounds[1]))


def _params(period: Period, now: datetime | None) -> dict[str, Any]:
    return {
        "f": period.start or datetime.min.replace(tzinfo=UTC),
        "t": period.end or datetime.max.replace(tzinfo=UTC),
        "n": now,
    }


def _convert(row: Any, keys: dict[str, str]) -> Row:
    data = row._mapping
    out: Row = {new: data[old] for old, new in keys.items()}
    out.update({new: number(data[old]) for old, new in _SUM_KEYS.items()})
    return out


#: GPU-hours by the user who submitted each run (its submission before the lease started),
#: summed as the ``gpu_hours_by_*`` functions of migration 0002 sum (unfunded: metered).
_BY_SUBMITTER = """
    SELECT s.submitter,
           sum(g.gpu_seconds) AS gpu_seconds, sum(g.charged_gpu_seconds) AS charged_gpu_seconds,
           round(sum(g.gpu_seconds) / 3600, 6) AS gpu_hours,
           round(sum(g.charged_gpu_seconds) / 3600, 6) AS charged_gpu_hours,
           round(COALESCE(sum(g.charged_gpu_seconds) FILTER (WHERE g.payer_class = 'owned'), 0) / 3600, 6)
               AS owned_gpu_hours,
           round(COALESCE(sum(g.charged_gpu_seconds) FILTER (WHERE g.payer_class = 'shared'), 0) / 3600, 6)
               AS shared_gpu_hours,
           round(COALESCE(sum(g.charged_gpu_seconds) FILTER (WHERE g.payer_class = 'borrowed'), 0) / 3600, 6)
               AS borrowed_gpu_hours,
           round(COALESCE(sum(g.gpu_seconds) FILTER (WHERE g.payer_class = 'unfunded'), 0) / 3600, 6)
               AS unfunded_gpu_hours,
           round(COALESCE(sum(g.gpu_seconds) FILTER (WHERE g.role = 'Spare'), 0) / 3600, 6) AS spare_gpu_hours
    FROM gpu_hours(:f, :t, :n) g
    LEFT JOIN LATERAL (
        SELECT e.data->>'submitter' AS submitter FROM events e
         WHERE e.stream = 'run:' || g.run AND e.type = 'RunSubmitted' AND e.occurred_at <= g.start_at
         ORDER BY e.position DESC LIMIT 1
    ) s ON true
    GROUP BY s.submitter ORDER BY s.submitter
"""


def gpu_hours(engine: Engine, by: str, period: Period, now: datetime | None = None) -> list[Row]:
    """GPU-hours grouped ``by`` envelope | owner (the payer) | class | run, inside ``period``."""
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {', '.join(GROUPINGS)} (got {by!r})")
    sql = _BY_SUBMITTER if by == "submitter" else f"SELECT * FROM gpu_hours_by_{by}(:f, :t, :n)"
    with engine.connect() as conn:
        rows = conn.execute(text(sql), _params(period, now)).all()
    return [_convert(r, _GROUP_KEYS[by]) for r in rows]


def lease_hours(engine: Engine, period: Period, now: datetime | None = None, run: str | None = None) -> list[Row]:
    """One row per lease overlapping ``period`` (the ``gpu_hours`` function)."""
    sql = "SELECT * FROM gpu_hours(:f, :t, :n)" + (" WHERE run = :run" if run else "")
    with engine.connect() as conn:
        rows = conn.execute(text(sql), {**_params(period, now), "run": run}).all()
    return [
        {
            "id": r.lease_id,
            "run": r.run,
            "owner": r.run_owner,
            "group": r.group_index,
            "role": r.role,
            "node": r.node,
            "gpuType": r.gpu_type,
            "domain": f"{r.cluster}/{r.fabric_domain}" if r.cluster is not None else None,
            "gpus": r.gpus,
            "envelope": r.envelope,
            "payerOwner": r.payer_owner,
            "class": r.payer_class,
            "start": iso_utc(r.start_at),
            "end": iso_utc(r.end_at),
            "reason": r.reason,
            "endReason": r.end_reason,
            "seconds": number(r.seconds),
            "gpuSeconds": number(r.gpu_seconds),
            "chargeRate": number(r.charge_rate),
            "chargedGPUSeconds": number(r.charged_gpu_seconds),
        }
        for r in rows
    ]


def envelope_period_usage(engine: Engine, period: Period, now: datetime, owner: str | None = None) -> list[Row]:
    """``budgets usage --period``: GPU-hours per envelope in the period, owned / shared /
    borrowed (charged, spares at the spare rate), plus one ``envelope: null`` row with the
    unfunded hours metered for nobody (only the owner's runs when ``owner`` is given)."""
    sql = """
        SELECT COALESCE(e.owner || '/' || e.name, g.envelope) AS envelope_name,
               COALESCE(e.owner, g.owner) AS envelope_owner, e.gpu_type, e.concurrency, e.max_gpu_hours,
               g.*
        FROM envelopes e
        FULL JOIN gpu_hours_by_envelope(:f, :t, :n) g ON g.envelope = e.owner || '/' || e.name
        ORDER BY 1
    """
    with engine.connect() as conn:
        rows = conn.execute(text(sql), _params(period, now)).all()
        unfunded = conn.execute(
            text(
                "SELECT COALESCE(sum(gpu_seconds), 0) FROM gpu_hours(:f, :t, :n) "
                "WHERE payer_class = 'unfunded' AND (CAST(:o AS text) IS NULL OR run_owner = :o)"
            ),
            {**_params(period, now), "o": owner},
        ).scalar_one()
    out: list[Row] = []
    for r in rows:
        if owner is not None and r.envelope_owner != owner:  # (g.envelope and g.owner are NULL without leases)
            continue
        row = {"envelope": r.envelope_name, "owner": r.envelope_owner}
        row |= {"gpuType": r.gpu_type, "concurrency": r.concurrency}
        row["maxGPUHours"] = r.max_gpu_hours
        row.update({new: number(r._mapping[old]) for old, new in _SUM_KEYS.items()})
        out.append(row | period.as_row())
    nobody: Row = {"envelope": None, "owner": None, "gpuType": None, "concurrency": None, "maxGPUHours": None}
    nobody.update(dict.fromkeys(_SUM_KEYS.values(), 0))
    nobody.update(gpuSeconds=number(unfunded), unfundedGPUHours=number(round(number(unfunded) / 3600, 6)))
    nobody["gpuHours"] = nobody["unfundedGPUHours"]
    return [*out, nobody | period.as_row()]


def usage_now_by_class(engine: Engine) -> list[Row]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM usage_now_by_class")).all()
    return [
        {
            "class": r.payer_class,
            "gpuType": r.gpu_type,
            "gpus": r.gpus,
            "active": r.active_gpus,
            "spare": r.spare_gpus,
            "fill": r.fill_gpus,
            "leases": r.leases,
        }
        for r in rows
    ]


def slot_holders(engine: Engine) -> list[Row]:
    """Open lease slots with their run and role (for ``nodes list --map``)."""
    sql = """
        SELECT s.node, s.gpu, s.role, l.run, l.payer_class FROM lease_slots s
        JOIN leases l ON l.lease_id = s.lease_id
        WHERE upper_inf(s.during) ORDER BY s.node, s.gpu, s.role
    """
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql))]


def reservation_timeline(engine: Engine) -> list[Row]:
    """Reservations with the time they were first mentioned by an event, for the report."""
    sql = """
        SELECT r.id, r.run, r.state, r.earliest_start,
               (SELECT min(e.occurred_at) FROM events e
                 WHERE left(e.type, 11) = 'Reservation'
                   AND r.id IN (e.data->>'reservation', e.data->>'reservation_id', e.data->>'id')) AS created_at
        FROM reservations r ORDER BY r.earliest_start NULLS LAST, r.id
    """
    with engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    return [
        {"id": r.id, "run": r.run, "state": r.state, "earliestStart": r.earliest_start, "createdAt": r.created_at}
        for r in rows
    ]
