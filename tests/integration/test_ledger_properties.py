"""Random submit/cancel/complete sequences through the real service, ledger and planner.

The database's EXCLUDE constraint would abort any append that holds a GPU slot twice;
on top of that we check, after every step, the read models against the envelope cap.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ledger.parsing import parse_manifests
from ledger.store import Ledger
from service.app import JobtreeApp
from service.identity import Identity
from tests.conftest import PgServer

ADMIN = Identity("admin", frozenset())
START = datetime(2026, 1, 1, tzinfo=UTC)
CAP = 24
_names = itertools.count()

FLEET = """
apiVersion: rq.davidlangworthy.io/v1
kind: Cluster
metadata: {name: f}
spec:
  nodes:
""" + "".join(
    f"    - {{name: n{i}, gpuType: H100, gpus: 8, labels: {{region: r, cluster: c, fabricDomain: {'AB'[i % 2]}}}}}\n"
    for i in range(4)
)

BUDGET = f"""
apiVersion: rq.davidlangworthy.io/v1
kind: Budget
metadata: {{name: team}}
spec:
  owner: team
  envelopes: [{{name: e, gpuType: H100, concurrency: {CAP}}}]
"""


def run_manifest(name: str, gpus: int, group: int | None) -> str:
    locality = f"\n  locality: {{groupGPUs: {group}}}" if group else ""
    return f"""
apiVersion: rq.davidlangworthy.io/v1
kind: Run
metadata: {{name: {name}, namespace: ns}}
spec:
  owner: team
  resources: {{gpuType: H100, totalGPUs: {gpus}}}{locality}
"""


@contextmanager
def fresh_ledger(pg_server: PgServer) -> Iterator[Ledger]:
    name = f"prop_{next(_names)}"
    ledger = Ledger.from_url(pg_server.clone(name))
    try:
        yield ledger
    finally:
        ledger.engine.dispose()
        pg_server.drop(name)


def held_slots_are_exclusive_and_capped(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        doubled = conn.execute(
            text("""SELECT node, gpu FROM lease_slots WHERE upper_inf(during) AND role IN ('Active','Spare')
                    GROUP BY node, gpu HAVING count(*) > 1""")
        ).all()
        funded = conn.execute(
            text("SELECT COALESCE(sum(gpus), 0) FROM leases WHERE end_at IS NULL AND envelope = 'team/e'")
        ).scalar_one()
    assert doubled == []
    assert funded <= CAP


step = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from([1, 2, 4, 8, 12, 16]), st.sampled_from([None, 4])),
    st.tuples(st.just("cancel"), st.integers(0, 20), st.none()),
    st.tuples(st.just("complete"), st.integers(0, 20), st.none()),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=12))
def test_random_sequences_never_double_book_or_overspend(pg_server: PgServer, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    with fresh_ledger(pg_server) as ledger:
        now = START
        app = JobtreeApp(ledger, ADMIN, now)
        app.apply(parse_manifests(FLEET) + parse_manifests(BUDGET))
        submitted: list[str] = []
        for index, (action, amount, group) in enumerate(steps):
            now += timedelta(minutes=5)
            app = JobtreeApp(ledger, ADMIN, now)
            if action == "submit":
                gpus = amount if group is None or amount % group == 0 else group
                name = f"r{index}"
                app.apply(parse_manifests(run_manifest(name, gpus, group)))
                submitted.append(name)
            elif submitted:
                name = submitted[amount % len(submitted)]
                if app.run("ns", name)["phase"] not in ("Completed", "Cancelled", "Failed"):
                    getattr(app, action)("ns", name)
            held_slots_are_exclusive_and_capped(ledger)
        assert ledger.verify_chain().ok
