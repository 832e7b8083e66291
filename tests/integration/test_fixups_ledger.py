"""Fix-ups on the ledger side: Fill width in the runs projection, cordon reasons that
survive NodeRecovered, the 0003 backfill for older databases, and the PodBound index."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from binder.worker import kept_pods
from ledger import audit
from ledger import events as ev
from ledger.binder_reads import KEPT_PODS as _KEPT_PODS
from ledger.queries import funding_usage, list_nodes
from ledger.store import Ledger
from tests.e2e.conftest import CLI, EXAMPLES, jt, planner  # noqa: F401  (the CLI fixture and its planner)
from tests.integration.test_projections import BUDGET, T0, H, end, lease, new, nodes, one, rows, submit

ELASTIC = EXAMPLES / "elastic"


def migration() -> Any:
    return importlib.import_module("migrations.versions.0003_fixups")


def fill_ledger(ledger: Ledger) -> None:
    """r1 holds a-0 (Active) and a-1 (Spare); r2 fills 2 GPUs of the spare."""
    ledger.append(
        [*nodes("a-0", "a-1"), new("budget:org:a", ev.BudgetApplied("org:a", "a", BUDGET)), submit("r1"), submit("r2")],
        actor="admin",
        at=T0,
    )
    ledger.append(
        [
            new("plan:0", ev.RunAdmitted("ns/r1", 8)),
            lease("L1", "ns/r1", tuple(range(8))),
            lease("S1", "ns/r1", tuple(range(8)), role="Spare", node="a-1"),
            new("plan:0", ev.RunAdmitted("ns/r2", 2)),
            lease("F1", "ns/r2", (0, 1), role="Fill", node="a-1", payer_class="unfunded"),
        ],
        actor="planner",
        at=T0 + H,
    )


# ---------------------------------------------------------------- 3. Fill width


def test_a_fill_lease_is_allocated_width_classed_unfunded(ledger: Ledger) -> None:
    fill_ledger(ledger)
    counts = "SELECT allocated_gpus, owned, unfunded FROM runs WHERE run = :r"
    assert one(ledger, counts.replace(":r", "'ns/r2'")) == {"allocated_gpus": 2, "owned": 0, "unfunded": 2}
    assert one(ledger, counts.replace(":r", "'ns/r1'")) == {"allocated_gpus": 8, "owned": 8, "unfunded": 0}
    ledger.append([end("F1", "ReclaimedBySpare")], actor="planner", at=T0 + 2 * H)
    assert one(ledger, counts.replace(":r", "'ns/r2'")) == {"allocated_gpus": 0, "owned": 0, "unfunded": 0}
    assert audit.verify(ledger).ok


def test_fill_is_charged_to_nobody_and_the_views_agree_with_the_runs_projection(ledger: Ledger) -> None:
    fill_ledger(ledger)
    by_class = {r["payer_class"]: r for r in rows(ledger, "SELECT * FROM usage_now_by_class")}
    run_unfunded = one(ledger, "SELECT sum(unfunded)::int AS n FROM runs")["n"]
    unfunded = by_class["unfunded"]
    assert run_unfunded == unfunded["active_gpus"] + unfunded["fill_gpus"] == 2
    assert unfunded["gpus"] == 0  # held slots: a Fill sits on the spare's slots, counted once (by the spare)
    charged = rows(
        ledger,
        "SELECT gpu_seconds, charge_rate, charged_gpu_seconds FROM gpu_hours(p_now => :n) WHERE role = 'Fill'",
        n=T0 + 3 * H,
    )
    assert [(r["gpu_seconds"], r["charge_rate"], r["charged_gpu_seconds"]) for r in charged] == [(2 * 7200, 0, 0)]
    usage = {r["envelope"]: r for r in funding_usage(ledger.engine, T0 + 3 * H)}
    assert usage["org:a/west"]["unfunded"] == 2  # the owner's unfunded GPUs this envelope could pay for
    assert usage["org:a/west"]["gpuHoursUsed"] == pytest.approx(8 * 2 + 8 * 2 * 0.5)  # 2 h of r1; its Fill adds nothing


# ---------------------------------------------------------------- 4. cordon reasons


def _node(ledger: Ledger, name: str) -> dict[str, Any]:
    return next(n for n in list_nodes(ledger.engine) if n["name"] == name)


def node(name: str, event: ev.Event) -> ev.NewEvent:
    return new(ev.node_stream(name), event)


def test_recover_keeps_a_manual_cordon_and_clears_a_failure_cordon(ledger: Ledger) -> None:
    ledger.append(nodes("a-0", "a-1"), actor="admin", at=T0)
    ledger.append(
        [
            node("a-0", ev.NodeCordoned("a-0")),
            node("a-0", ev.NodeFailed("a-0")),
            node("a-1", ev.NodeFailed("a-1")),
            node("a-1", ev.NodeCordoned("a-1", "NodeFailure")),
        ],
        actor="admin",
        at=T0 + H,
    )
    assert (_node(ledger, "a-1")["cordoned"], _node(ledger, "a-1")["cordonReason"]) == (True, "NodeFailure")
    ledger.append(
        [node("a-0", ev.NodeRecovered("a-0")), node("a-1", ev.NodeRecovered("a-1"))], actor="admin", at=T0 + 2 * H
    )
    a0, a1 = _node(ledger, "a-0"), _node(ledger, "a-1")
    assert (a0["cordoned"], a0["failed"], a0["cordonReason"], a0["free"]) == (True, False, "manual", 0)
    assert (a1["cordoned"], a1["failed"], a1["cordonReason"], a1["free"]) == (False, False, None, 8)
    ledger.append([node("a-0", ev.NodeUncordoned("a-0"))], actor="admin", at=T0 + 3 * H)
    assert (_node(ledger, "a-0")["cordoned"], _node(ledger, "a-0")["cordonReason"]) == (False, None)
    assert audit.verify(ledger).ok


# ---------------------------------------------------------------- 0003 backfill of older databases


def _as_before_0003(ledger: Ledger) -> None:
    """What 0001/0002 projections held: no cordon reasons, recover cleared every cordon, Fill not counted."""
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE nodes SET cordon_reason = NULL"))
        conn.execute(text("UPDATE nodes SET cordoned = false WHERE NOT failed AND name = 'a-0'"))
        conn.execute(text("UPDATE runs SET allocated_gpus = 0, unfunded = 0 WHERE run = 'ns/r2'"))


def test_the_0003_backfill_brings_older_projections_in_line_with_a_replay(ledger: Ledger) -> None:
    fill_ledger(ledger)
    ledger.append(
        [node("a-0", ev.NodeCordoned("a-0")), node("a-0", ev.NodeRecovered("a-0"))],
        actor="admin",
        at=T0 + 2 * H,
    )
    _as_before_0003(ledger)
    assert not audit.verify(ledger).ok
    with ledger.engine.begin() as conn:
        migration().backfill(conn)
    report = audit.verify(ledger)
    assert report.ok, report.as_row()
    assert _node(ledger, "a-0")["cordonReason"] == "manual"


def test_the_0003_migration_is_the_head_and_mirrors_the_metadata() -> None:
    from ledger import tables

    found = migration()
    assert found.revision == "0003" and found.down_revision == "0002"
    assert "cordon_reason" in tables.nodes.c and tables.nodes.c.cordon_reason.nullable
    assert Path(found.__file__).name.startswith("0003_")


# ---------------------------------------------------------------- 6. the PodBound lookup index


def test_kept_pods_lookup_can_use_the_lease_id_index(ledger: Ledger) -> None:
    fill_ledger(ledger)
    ledger.append([new("binder:0", ev.PodBound("L1", "a-0", ("pod-l1",)))], actor="binder", at=T0 + H)
    ledger.append(
        [end("L1", "PayerChanged"), lease("L2", "ns/r1", tuple(range(8)), payer_class="shared", reason="PayerChanged")],
        actor="planner",
        at=T0 + 2 * H,
    )
    # The test's lease() has no ``previous``: record one with it, as the planner does.
    started = ev.LeaseStarted("L3", "ns/r1", 0, "Active", "a-0", (0,), "org:a/west", "org:a", "owned", "PayerChanged",
                              previous="L1")  # fmt: skip
    ledger.append([end("L2", "PayerChanged"), new("plan:0", started)], actor="planner", at=T0 + 3 * H)
    assert kept_pods(ledger, "L3") == ("pod-l1",)
    with ledger.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # a tiny table: ask whether the index CAN serve it
        plan = "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {_KEPT_PODS.text}"), {"lease": "L3"}))
    assert "events_lease_id_idx" in plan, plan
    assert plan.count("events_lease_id_idx") == 2  # both sides: the LeaseStarted and its predecessor's PodBound
    assert "events_pkey" not in plan  # not a backward walk over every PodBound


# ---------------------------------------------------------------- through the CLI


def at(minute: int) -> tuple[str, str]:
    return ("--now", f"2030-01-06T10:{minute:02d}:00Z")


@pytest.fixture
def guide6(jt: CLI) -> CLI:  # noqa: F811
    assert jt("nodes", "apply", "-f", str(ELASTIC / "cluster-spares.yaml"), *at(0)).code == 0
    assert jt("budgets", "apply", "-f", str(ELASTIC / "budgets.yaml"), *at(0)).code == 0
    assert jt("submit", "-f", str(ELASTIC / "trainer-32.yaml"), *at(1)).code == 0
    assert jt("submit", "-f", str(ELASTIC / "opportunistic-2.yaml"), *at(2)).code == 0
    return jt


def test_a_filling_run_shows_its_width_and_watch_settles(guide6: CLI) -> None:
    sweep = guide6("get", "runs", "-n", "scratch", "-o", "json", *at(3)).json()[0]
    assert sweep["phase"] == "Running"
    assert sweep["width"] == {"min": 2, "max": 2, "desired": 2, "allocated": 2}
    assert sweep["funding"] == {"owned": 0, "shared": 0, "borrowed": 0, "unfunded": 2}
    table = guide6("get", "runs", "-n", "scratch", *at(3)).out
    assert "2/2" in table
    watched = guide6("watch", "scratch/sweep-2", "--timeout", "5", "--interval", "0.01", *at(3))
    assert watched.code == 0 and "Running, 2/2 GPUs" in watched.out and watched.out.count("\n") == 1
    verified = guide6("audit", "verify", "-o", "json", *at(3)).json()
    assert verified["ok"], verified


def test_nodes_list_shows_a_manual_cordon_kept_through_recover(guide6: CLI) -> None:
    assert guide6("nodes", "cordon", "b-0", *at(3)).code == 0
    guide6("nodes", "fail", "b-0", *at(4))
    recovered = guide6("nodes", "recover", "b-0", "-o", "json", *at(5)).json()
    assert (recovered["cordoned"], recovered["failed"], recovered["cordonReason"]) == (True, False, "manual")
    listed = {n["name"]: n for n in guide6("nodes", "list", "-o", "json", *at(5)).json()}
    assert listed["b-0"]["cordonReason"] == "manual" and listed["a-0"]["cordonReason"] is None
    line = next(x for x in guide6("nodes", "list", *at(5)).out.splitlines() if x.startswith("b-0"))
    assert line.rstrip().endswith("cordoned (manual)")
    guide6("nodes", "fail", "a-1", *at(6))
    line = next(x for x in guide6("nodes", "list", *at(6)).out.splitlines() if x.startswith("a-1"))
    assert line.rstrip().endswith("failed")
    guide6("nodes", "recover", "a-1", *at(7))
    listed = {n["name"]: n for n in guide6("nodes", "list", "-o", "json", *at(7)).json()}
    assert (listed["a-1"]["cordoned"], listed["a-1"]["cordonReason"]) == (False, None)
    assert guide6("audit", "verify", "-o", "json", *at(7)).json()["ok"]
