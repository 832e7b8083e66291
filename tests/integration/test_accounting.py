"""GPU-hours in SQL, checked against a scenario computed by hand.

The lease events are written directly with ``Ledger.append`` (the accounting views
only read the ``leases`` projection). Fleet: nodes a-0, a-1 (domain A) and b-0
(domain B), 8 H100s each. Budgets: org:sys (envelope ``west``), its parent org:rai
(``pool``, shared with family) and the sponsor org:vision (``lend``, lends to org:sys).
Policy: the default spareChargeRate 0.5. Day 2026-01-01, times in UTC:

| lease | run | role | GPUs | payer | class | from → to | GPU-seconds | charged |
|---|---|---|---|---|---|---|---|---|
| L1 | sys/r1 | Active | 4 (a-0 0-3) | org:sys/west | owned | 10:00 → 12:00 | 28800 | 28800 |
| L2 | sys/r1 | Spare | 8 (a-1) | org:sys/west | owned | 10:00 → 11:00 | 28800 | 14400 (x0.5) |
| L5 | sys/r1 | Active | 4 (a-0 4-7) | org:sys/west | owned | 10:00 → 11:00:30 (PayerChanged) | 14520 | 14520 |
| L6 | sys/r1 | Active | 4 (a-0 4-7) | org:rai/pool | shared | 11:00:30 (PayerChanged) → 12:00 | 14280 | 14280 |
| L3 | sys/r2 | Active | 4 (b-0 0-3) | org:vision/lend | borrowed | 10:30 → 11:30 | 14400 | 14400 |
| L4 | sys/r3 | Active | 4 (b-0 4-7) | nobody | unfunded | 10:00 → 10:45 | 10800 | 0 |
| L7 | sys/r4 | Active | 2 (a-1 0-1) | org:sys/west | owned | 11:00 → open (now = 12:00) | 7200 | 7200 |

All time (now = 12:00): west metered 28800+28800+14520+7200 = 79320 s, charged
28800+14400+14520+7200 = 64920 s (18.033333 h; spare 8 h metered). lend 14400 s
(4 h borrowed, charged to org:vision), pool 14280 s (3.966667 h shared, org:rai),
nobody 10800 s metered (3 h unfunded) and 0 charged.

Period [10:30, 11:30): L1 3600x4 = 14400, L2 1800x8 = 14400 (charged 7200),
L5 1830x4 = 7320, L6 1770x4 = 7080, L3 3600x4 = 14400, L4 900x4 = 3600,
L7 1800x2 = 3600 → west metered 39720, charged 32520; pool 7080; lend 14400; nobody 3600.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from ledger import accounting
from ledger.events import (
    POLICY_STREAM,
    BudgetApplied,
    Event,
    LeaseEnded,
    LeaseStarted,
    NewEvent,
    NodeRegistered,
    PolicyChanged,
    RunAdmitted,
    RunSubmitted,
    budget_stream,
    node_stream,
    plan_stream,
    run_stream,
)
from ledger.model import BudgetSpec, PolicySpec, RunSpec
from ledger.store import Ledger

DAY = datetime(2026, 1, 1, tzinfo=UTC)


def at(hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return DAY + timedelta(hours=hh, minutes=mm, seconds=ss)


LABELS = {"region": "us-west", "cluster": "c1"}


def budget(owner: str, env: str, parents: list[str] | None = None, lend_to: list[str] | None = None) -> BudgetApplied:
    envelope: dict[str, Any] = {"name": env, "gpuType": "H100-80GB", "concurrency": 32}
    if lend_to:
        envelope["lending"] = {"allow": True, "to": lend_to, "maxConcurrency": 8}
    spec = BudgetSpec.model_validate({"owner": owner, "parents": parents or [], "envelopes": [envelope]})
    return BudgetApplied(owner, owner.split(":")[-1], spec.dump())


def submitted(name: str, gpus: int, **funding: Any) -> NewEvent:
    spec = RunSpec.model_validate(
        {"owner": "org:sys", "resources": {"gpuType": "H100-80GB", "totalGPUs": gpus}, "funding": funding}
    )
    key = f"sys/{name}"
    return NewEvent(run_stream(key), RunSubmitted(key, "sys", name, "alice", spec.dump()))


def start(lid: str, run: str, role: str, node: str, slots: range, envelope: str | None, cls: str, reason: str) -> Event:
    owner = envelope.split("/")[0] if envelope else None
    return LeaseStarted(lid, f"sys/{run}", 0, role, node, tuple(slots), envelope, owner, cls, reason)


def put(ledger: Ledger, when: datetime, *events: Event | NewEvent) -> None:
    items = [e if isinstance(e, NewEvent) else NewEvent(plan_stream(), e) for e in events]
    ledger.append(items, actor="test", at=when)


def build(ledger: Ledger, rate: float | None = None) -> None:
    policy = PolicySpec(admins=["root"]) if rate is None else PolicySpec(admins=["root"], spare_charge_rate=rate)
    put(ledger, at(9), NewEvent(POLICY_STREAM, PolicyChanged(policy.dump())))
    nodes = [("a-0", "A"), ("a-1", "A"), ("b-0", "B")]
    put(ledger, at(9), *(NewEvent(node_stream(n), NodeRegistered(n, "H100-80GB", 8, LABELS | {"fabricDomain": d}))
                         for n, d in nodes))  # fmt: skip
    put(
        ledger,
        at(9),
        NewEvent(budget_stream("org:rai"), budget("org:rai", "pool")),
        NewEvent(budget_stream("org:sys"), budget("org:sys", "west", parents=["org:rai"])),
        NewEvent(budget_stream("org:vision"), budget("org:vision", "lend", lend_to=["org:sys"])),
    )
    put(ledger, at(9, 59), submitted("r1", 8), submitted("r2", 4, allowBorrow=True, sponsors=["org:vision"]),
        submitted("r3", 4, opportunistic=True), submitted("r4", 2))  # fmt: skip
    put(ledger, at(10), *(RunAdmitted(f"sys/{r}", w) for r, w in (("r1", 8), ("r3", 4))))
    put(
        ledger,
        at(10),
        start("L1", "r1", "Active", "a-0", range(0, 4), "org:sys/west", "owned", "Admitted"),
        start("L5", "r1", "Active", "a-0", range(4, 8), "org:sys/west", "owned", "Admitted"),
        start("L2", "r1", "Spare", "a-1", range(0, 8), "org:sys/west", "owned", "Admitted"),
        start("L4", "r3", "Active", "b-0", range(4, 8), None, "unfunded", "Admitted"),
    )
    put(
        ledger,
        at(10, 30),
        RunAdmitted("sys/r2", 4),
        start("L3", "r2", "Active", "b-0", range(0, 4), "org:vision/lend", "borrowed", "Admitted"),
    )
    put(ledger, at(10, 45), LeaseEnded("L4", "Cancelled"))
    put(ledger, at(11), LeaseEnded("L2", "DropSpare"), RunAdmitted("sys/r4", 2),
        start("L7", "r4", "Active", "a-1", range(0, 2), "org:sys/west", "owned", "Admitted"))  # fmt: skip
    put(ledger, at(11, 0, 30), LeaseEnded("L5", "PayerChanged"),
        start("L6", "r1", "Active", "a-0", range(4, 8), "org:rai/pool", "shared", "PayerChanged"))  # fmt: skip
    put(ledger, at(11, 30), LeaseEnded("L3", "Completed"))
    put(ledger, at(12), LeaseEnded("L1", "Completed"), LeaseEnded("L6", "Completed"))


def by(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {r[key]: r for r in rows}


ALL = accounting.Period()
NOON = at(12)


def test_gpu_hours_by_envelope_match_the_hand_computation(ledger: Ledger) -> None:
    build(ledger)
    rows = by(accounting.gpu_hours(ledger.engine, "envelope", ALL, NOON), "envelope")
    assert set(rows) == {"org:sys/west", "org:rai/pool", "org:vision/lend"}
    west, pool, lend = rows["org:sys/west"], rows["org:rai/pool"], rows["org:vision/lend"]
    assert (west["gpuSeconds"], west["chargedGPUSeconds"]) == (79320, 64920)
    assert west["chargedGPUHours"] == pytest.approx(18.033333, abs=1e-6)
    assert west["spareGPUHours"] == 8
    assert west["ownedGPUHours"] == west["chargedGPUHours"]
    assert (pool["owner"], pool["chargedGPUSeconds"], pool["sharedGPUHours"]) == ("org:rai", 14280, 3.966667)
    assert (lend["owner"], lend["chargedGPUSeconds"], lend["borrowedGPUHours"]) == ("org:vision", 14400, 4)


def test_gpu_hours_by_owner_and_class(ledger: Ledger) -> None:
    build(ledger)
    owners = by(accounting.gpu_hours(ledger.engine, "owner", ALL, NOON), "owner")
    assert {k: v["chargedGPUSeconds"] for k, v in owners.items()} == {
        "org:sys": 64920, "org:rai": 14280, "org:vision": 14400, None: 0,
    }  # fmt: skip
    assert owners[None]["gpuSeconds"] == 10800 and owners[None]["unfundedGPUHours"] == 3
    classes = by(accounting.gpu_hours(ledger.engine, "class", ALL, NOON), "class")
    metered = {k: v["gpuSeconds"] for k, v in classes.items()}
    charged = {k: v["chargedGPUSeconds"] for k, v in classes.items()}
    assert metered == {"owned": 79320, "shared": 14280, "borrowed": 14400, "unfunded": 10800}
    assert charged == {"owned": 64920, "shared": 14280, "borrowed": 14400, "unfunded": 0}


def test_gpu_hours_by_run_charge_the_consumer_side(ledger: Ledger) -> None:
    build(ledger)
    runs = by(accounting.gpu_hours(ledger.engine, "run", ALL, NOON), "run")
    assert runs["sys/r1"]["owner"] == "org:sys"
    assert runs["sys/r1"]["chargedGPUSeconds"] == 28800 + 14400 + 14520 + 14280
    assert runs["sys/r2"]["borrowedGPUHours"] == 4
    assert (runs["sys/r3"]["gpuSeconds"], runs["sys/r3"]["chargedGPUSeconds"]) == (10800, 0)


def test_a_period_cuts_leases_at_its_edges(ledger: Ledger) -> None:
    build(ledger)
    period = accounting.Period(at(10, 30), at(11, 30))
    rows = by(accounting.gpu_hours(ledger.engine, "envelope", period, NOON), "envelope")
    assert (rows["org:sys/west"]["gpuSeconds"], rows["org:sys/west"]["chargedGPUSeconds"]) == (39720, 32520)
    assert rows["org:rai/pool"]["gpuSeconds"] == 7080
    assert rows["org:vision/lend"]["gpuSeconds"] == 14400
    nobody = by(accounting.gpu_hours(ledger.engine, "owner", period, NOON), "owner")[None]
    assert nobody["gpuSeconds"] == 3600


def test_the_payer_change_splits_one_slot_set_between_two_payers(ledger: Ledger) -> None:
    build(ledger)
    leases = by(accounting.lease_hours(ledger.engine, ALL, NOON, run="sys/r1"), "id")
    assert (leases["L5"]["endReason"], leases["L6"]["reason"]) == ("PayerChanged", "PayerChanged")
    assert leases["L5"]["end"] == leases["L6"]["start"] == "2026-01-01T11:00:30Z"
    assert leases["L5"]["gpuSeconds"] + leases["L6"]["gpuSeconds"] == 4 * 7200
    assert leases["L2"]["chargeRate"] == 0.5


def test_views_read_the_same_numbers_in_plain_sql(ledger: Ledger) -> None:
    build(ledger)
    put(ledger, at(12), LeaseEnded("L7", "Completed"))  # close everything: the views run up to now
    with ledger.engine.connect() as conn:
        sql = "SELECT envelope, charged_gpu_seconds FROM gpu_hours_by_envelope"
        envelope: dict[Any, Any] = dict(conn.execute(text(sql)).all())
        owner: dict[Any, Any] = dict(conn.execute(text("SELECT owner, gpu_seconds FROM gpu_hours_by_owner")).all())
        history = conn.execute(text("SELECT count(*), sum(gpu_seconds) FROM lease_history")).one()
        now_rows = conn.execute(text("SELECT count(*) FROM usage_now_by_class")).scalar_one()
    assert envelope == {"org:sys/west": 64920, "org:rai/pool": 14280, "org:vision/lend": 14400}
    assert owner[None] == 10800
    assert (history[0], history[1]) == (7, 79320 + 14280 + 14400 + 10800)
    assert now_rows == 0


def test_usage_now_by_class_counts_open_leases(ledger: Ledger) -> None:
    build(ledger)
    put(ledger, at(12, 5), start("L8", "r1", "Spare", "b-0", range(0, 8), "org:sys/west", "owned", "Admitted"))
    rows = accounting.usage_now_by_class(ledger.engine)
    assert rows == [
        {"class": "owned", "gpuType": "H100-80GB", "gpus": 10, "active": 2, "spare": 8, "fill": 0, "leases": 2}
    ]


def test_the_spare_rate_comes_from_the_latest_policy(ledger: Ledger) -> None:
    build(ledger, rate=0.25)
    west = by(accounting.gpu_hours(ledger.engine, "envelope", ALL, NOON), "envelope")["org:sys/west"]
    assert west["chargedGPUSeconds"] == 28800 + 28800 // 4 + 14520 + 7200


def test_budgets_usage_for_a_period(ledger: Ledger) -> None:
    build(ledger)
    rows = accounting.envelope_period_usage(ledger.engine, accounting.parse_period("2026-01-01", NOON), NOON)
    found = {r["envelope"]: r for r in rows}
    assert found["org:sys/west"]["chargedGPUSeconds"] == 64920
    assert found["org:sys/west"]["concurrency"] == 32
    assert found[None]["unfundedGPUHours"] == 3
    mine = accounting.envelope_period_usage(ledger.engine, ALL, NOON, owner="org:vision")
    assert [r["envelope"] for r in mine] == ["org:vision/lend", None]
    assert mine[-1]["gpuSeconds"] == 0  # org:vision's runs used nothing unfunded


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("2026-01", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)),
        ("2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ("2026-01-01", DAY, DAY + timedelta(days=1)),
        ("2026-01-01T10:00:00Z/2026-01-01T11:00:00Z", at(10), at(11)),
        ("2026-01-01T10:00:00Z/", at(10), None),
        ("2h", at(10), at(12)),
    ],
)
def test_parse_period(value: str, start: datetime, end: datetime | None) -> None:
    assert accounting.parse_period(value, at(12)) == accounting.Period(start, end)


@pytest.mark.parametrize("value", ["yesterday", "2026-13", "2026-01-02T00:00:00Z/2026-01-01T00:00:00Z"])
def test_parse_period_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="period"):
        accounting.parse_period(value, at(12))


# ---------------------------------------------------------------- migration 0006 keeps 0002's results

_0002 = importlib.import_module("migrations.versions.0002_accounting_views")
_QUERIES = (
    "SELECT * FROM gpu_hours(:f, :t, :n)",
    "SELECT * FROM gpu_hours_by_envelope(:f, :t, :n)",
    "SELECT * FROM gpu_hours_by_owner(:f, :t, :n)",
    "SELECT * FROM gpu_hours_by_class(:f, :t, :n)",
    "SELECT * FROM gpu_hours_by_run(:f, :t, :n)",
    "SELECT * FROM lease_history",
    "SELECT * FROM gpu_hours_by_envelope",
    "SELECT * FROM gpu_hours_by_owner",
    "SELECT * FROM usage_now_by_class",
)
_PERIODS = ((at(0), at(23, 59), NOON), (at(10, 30), at(11, 30), NOON), (at(10, 50), at(13), None))
#: "now" before some open leases started: their spans are clamped to 0 (0002: the integer 0)
_EARLY = ((at(0), at(23), at(11, 45)), (at(11, 46), at(23), at(11, 45)), (at(11, 10), at(11, 50), at(11, 25)))


def _results(conn: Any, queries: tuple[str, ...] = _QUERIES, periods: Any = _PERIODS) -> list[list[tuple[str, ...]]]:
    """Every function and view over a few periods, each value as text (scale included)."""
    out = []
    for query in queries:
        for start_at, end_at, now in periods:
            rows = conn.execute(text(query), {"f": start_at, "t": end_at, "n": now}).all()
            out.append([tuple(str(v) for v in row) for row in rows])
    return out


def _results_under_0002(ledger: Ledger, *args: Any) -> list[list[tuple[str, ...]]]:
    """The same queries with 0002's definitions put back inside a transaction that is rolled back."""
    with ledger.engine.connect() as conn, conn.begin() as tx:
        for sql in (_0002.HELPERS, _0002.PER_LEASE, _0002.AGGREGATES):
            conn.execute(text(sql.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")))
        found = _results(conn, *args)
        tx.rollback()
    return found


def test_spares_with_a_mid_period_policy_change_give_0002s_results(ledger: Ledger) -> None:
    """0002's meaning, kept: the spare rate of the newest PolicyChanged prices every Spare lease,
    also the hours before the change; a run resubmitted after its lease started keeps the
    lease's owner at the submission in force when the lease began."""
    build(ledger)
    put(ledger, at(11, 15), NewEvent(POLICY_STREAM, PolicyChanged(PolicySpec(admins=["root"],
        spare_charge_rate=0.2).dump())))  # fmt: skip
    put(ledger, at(11, 20), start("L8", "r4", "Spare", "b-0", range(4, 8), "org:sys/west", "owned", "Admitted"))
    resubmitted = RunSpec.model_validate({"owner": "org:rai", "resources": {"gpuType": "H100-80GB", "totalGPUs": 2}})
    put(ledger, at(11, 40), NewEvent(run_stream("sys/r4"), RunSubmitted("sys/r4", "sys", "r4", "bob",
        resubmitted.dump())))  # fmt: skip
    put(ledger, at(11, 50), start("L9", "r4", "Active", "b-0", range(0, 2), "org:rai/pool", "shared", "Admitted"))
    with ledger.engine.connect() as conn:
        early = _results(conn, _QUERIES[:5], _EARLY)
    assert early == _results_under_0002(ledger, _QUERIES[:5], _EARLY)
    assert any("0" in row for rows in early[-3:] for row in rows)  # by run: a group whose spans are all clamped
    put(ledger, at(12), *(LeaseEnded(lid, "Completed") for lid in ("L7", "L8", "L9")))  # the views run to now
    with ledger.engine.connect() as conn:
        current = _results(conn)
    assert current == _results_under_0002(ledger)
    west = by(accounting.gpu_hours(ledger.engine, "envelope", ALL, NOON), "envelope")["org:sys/west"]
    spares = 28800 + 40 * 60 * 4  # L2 (10:00-11:00, 8 GPUs) and L8 (11:20-12:00, 4 GPUs), both at 0.2
    assert west["chargedGPUSeconds"] == 28800 + spares // 5 + 14520 + 7200
    owners = {r["id"]: r["owner"] for r in accounting.lease_hours(ledger.engine, ALL, NOON, run="sys/r4")}
    assert owners == {"L7": "org:sys", "L8": "org:sys", "L9": "org:rai"}
    runs = by(accounting.gpu_hours(ledger.engine, "run", ALL, NOON), "run")
    assert runs["sys/r4"]["owner"] == "org:rai"  # min() over its leases' owners, as 0002 did


def test_the_spare_rate_is_the_default_then_the_latest_policys(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT jobtree_spare_charge_rate()")).scalar_one() == Decimal("0.5")
    policy = PolicySpec(admins=["root"], spare_charge_rate=0.3)
    put(ledger, at(9), NewEvent(POLICY_STREAM, PolicyChanged(policy.dump())))
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT jobtree_spare_charge_rate()")).scalar_one() == Decimal("0.3")
