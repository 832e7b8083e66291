"""`jobtree audit verify` and `audit history`: is the ledger intact, and what happened to a run.

``verify`` runs three checks (four with checkpoints) and names the first violation:

1. the hash chain (``Ledger.verify_chain``): an altered, removed or inserted event;
   with checkpoints (``ledger.anchors``), that the log still extends each signed head —
   which a superuser's consistent re-hash of the whole chain cannot fake;
2. the invariants over the whole history (``ledger.invariants``);
3. the projections against a replay: every event is re-applied, with the same
   projection code, into temporary copies of the read-model tables (they shadow the
   real ones inside one transaction that is rolled back), and the two are compared
   row by row. A manual UPDATE of a projection row, or an event inserted behind the
   application's back, shows up as a difference; the report names the row and the
   event it comes from.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, text
from sqlalchemy.exc import DBAPIError

from ledger import events as ev
from ledger import projections
from ledger import tables as t
from ledger.errors import LedgerError, UndecodableEvent
from ledger.invariants import Violation, check_invariants
from ledger.parsing import budget_from_spec, policy_from_spec, run_from_spec
from ledger.queries import iso_utc
from ledger.store import Ledger

Row = dict[str, Any]

#: projection table -> (key columns, SQL finding the newest event about that key)
_SOURCES: dict[str, tuple[tuple[str, ...], str]] = {
    "leases": (("lease_id",), "data->>'lease_id' = :k0"),
    "lease_slots": (("lease_id", "gpu"), "data->>'lease_id' = :k0"),
    "runs": (("run",), "(stream = 'run:' || :k0 OR data->>'run' = :k0)"),
    "nodes": (("name",), "stream = 'node:' || :k0"),
    "budgets": (("owner",), "stream = 'budget:' || :k0"),
    "envelopes": (("owner", "name"), "stream = 'budget:' || :k0"),
    "policy": (("id",), "stream = 'policy'"),
    "reservations": (("id",), "(data->>'reservation' = :k0 OR data->>'reservation_id' = :k0 OR data->>'id' = :k0)"),
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    message: str

    def as_row(self) -> Row:
        return {"check": self.name, "ok": self.ok, "message": self.message}


@dataclass(slots=True)
class VerifyReport:
    events: int
    checks: list[Check] = field(default_factory=list)
    violations: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_row(self) -> Row:
        return {
            "ok": self.ok,
            "events": self.events,
            "checks": [c.as_row() for c in self.checks],
            "firstViolation": self.violations[0] if self.violations else None,
            "violations": self.violations,
        }


def violation_row(v: Violation) -> Row:
    return {
        "check": v.check,
        "position": v.position,
        "type": v.event_type,
        "at": iso_utc(v.at),
        "message": v.message,
    }


def verify(ledger: Ledger, checkpoints: Sequence[tuple[str, Row]] = (), pinned: str | None = None) -> VerifyReport:
    """Every check; ``checkpoints`` are (source, parsed checkpoint) pairs, ``pinned`` a trusted public key."""
    report = VerifyReport(events=ledger.count())
    chain = ledger.verify_chain()
    if not chain.ok:
        kind = _event_type(ledger, chain.first_bad_position)
        report.checks.append(Check("hash chain", False, chain.message))
        report.violations.append(
            {"check": "hash chain", "position": chain.first_bad_position, "type": kind, "at": None,
             "message": chain.message}
        )  # fmt: skip
    else:
        report.checks.append(Check("hash chain", True, chain.message))
    if checkpoints:
        _verify_checkpoints(ledger, report, checkpoints, pinned)
    try:
        found = check_invariants(ledger.read())
    except UndecodableEvent:
        return _undecodable(ledger, report)  # adds a failed "decoding" check (it only shows when it fails)
    names = "no slot held twice, envelope caps, lending caps, maxGPUHours"
    first = found[0].message if found else f"{names}: all hold"
    report.checks.append(Check("invariants", not found, first))
    report.violations += [violation_row(v) for v in found]
    diffs = projection_differences(ledger)
    report.checks.append(
        Check("projections", not diffs, diffs[0]["message"] if diffs else "projections match a replay of the events")
    )
    report.violations += diffs
    return report


def _verify_checkpoints(ledger: Ledger, report: VerifyReport, checkpoints: Sequence[tuple[str, Row]],
                        pinned: str | None) -> None:  # fmt: skip
    from ledger import anchors  # the only user of the cryptography package

    results = [anchors.verify_checkpoint(ledger, data, source, pinned) for source, data in checkpoints]
    bad = [r for r in results if not r.ok]
    summary = bad[0].message if bad else f"the ledger extends all {len(results)} checkpoint(s)"
    report.checks.append(Check("checkpoints", not bad, summary))
    for r in bad:
        report.violations.append(
            {"check": "checkpoint", "position": r.first_bad, "type": _event_type(ledger, r.first_bad), "at": None,
             "message": r.message, "checkpoint": r.source, "lastPosition": r.last_bad}
        )  # fmt: skip


def undecodable_rows(ledger: Ledger, limit: int = 100, batch: int = 1000) -> list[UndecodableEvent]:
    """The first ``limit`` rows no event class can be rebuilt from, in position order."""
    found: list[UndecodableEvent] = []
    after = 0
    sql = text("SELECT position, type, data FROM events WHERE position > :after ORDER BY position LIMIT :n")
    while len(found) < limit:
        with ledger.engine.connect() as conn:
            rows = conn.execute(sql, {"after": after, "n": batch}).all()
        for row in rows:
            try:
                _check_spec(ev.from_data(row.type, row.data, row.position))
            except UndecodableEvent as exc:
                found.append(UndecodableEvent(row.position, exc.type_name, exc.reason))
        if len(rows) < batch:
            break
        after = rows[-1].position
    return found[:limit]


def _check_spec(event: ev.Event) -> None:
    """The spec a Budget, Run or Policy event carries must still validate (the folds re-read it)."""
    if isinstance(event, ev.BudgetApplied):
        budget_from_spec(event.spec)
    elif isinstance(event, ev.RunSubmitted):
        run_from_spec(event.spec)
    elif isinstance(event, ev.PolicyChanged):
        policy_from_spec(event.spec)


def _undecodable(ledger: Ledger, report: VerifyReport) -> VerifyReport:
    """Report every undecodable row by position; the checks that need every event are skipped."""
    bad = undecodable_rows(ledger)
    report.checks.append(Check("decoding", False, str(bad[0]) if bad else "an event could not be decoded"))
    report.violations += [
        {"check": "decoding", "position": b.position, "type": b.type_name, "at": None, "message": str(b)} for b in bad
    ]
    skipped = "not checked: the ledger holds undecodable rows"
    report.checks += [Check("invariants", False, skipped), Check("projections", False, skipped)]
    return report


def _event_type(ledger: Ledger, position: int | None) -> str | None:
    if position is None:
        return None
    with ledger.engine.connect() as conn:
        value = conn.execute(text("SELECT type FROM events WHERE position = :p"), {"p": position}).scalar()
    return None if value is None else str(value)


# ---------------------------------------------------------------- projections vs replay


def _records(conn: Connection) -> Iterator[ev.Recorded]:
    """The real log (``public.events``: the temporary read models shadow only projections)."""
    return projections.records(conn, events="public.events")


def projection_differences(ledger: Ledger) -> list[Row]:
    """Rows where the projections differ from a fresh replay of every event (first first)."""
    with ledger.engine.connect() as conn, conn.begin() as tx:
        for table in t.PROJECTION_TABLES:
            conn.execute(
                text(f"CREATE TEMP TABLE {table.name} (LIKE public.{table.name} INCLUDING ALL) ON COMMIT DROP")
            )
        failure = _replay_into(conn)
        if failure is not None:
            tx.rollback()
            return [failure]
        diffs = [d for table in t.PROJECTION_TABLES for d in _table_differences(conn, table)]
        tx.rollback()
    return diffs


_REPLAY_ERRORS = (DBAPIError, LedgerError, ValueError, KeyError)
_CHUNK = 5000


def _replay_into(conn: Connection) -> Row | None:
    """Fold every event into the (temporary) projections in batches; the first failure, if any.

    A chunk that fails is rolled back and replayed one event at a time, so the failure
    names the exact event, as a one-at-a-time replay would.
    """
    records = _records(conn)
    try:
        while chunk := list(itertools.islice(records, _CHUNK)):
            try:
                with conn.begin_nested():
                    projections.apply_many(conn, chunk)
            except _REPLAY_ERRORS:
                return _first_failure(conn, chunk)
    except _REPLAY_ERRORS as exc:  # the log itself could not be read (e.g. an undecodable row)
        return _replay_failure(None, exc)
    return None


def _first_failure(conn: Connection, chunk: list[ev.Recorded]) -> Row:
    for record in chunk:
        try:
            with conn.begin_nested():
                projections.apply(conn, record)
        except _REPLAY_ERRORS as exc:
            return _replay_failure(record, exc)
    return _replay_failure(chunk[0], LedgerError("the batch failed, but no single event did"))


def _replay_failure(record: ev.Recorded | None, exc: Exception) -> Row:
    detail = str(exc).splitlines()[0]
    where = f"event {record.position} ({record.event.TYPE})" if record else "the first event"
    return {
        "check": "projections",
        "position": record.position if record else None,
        "type": record.event.TYPE if record else None,
        "at": iso_utc(record.occurred_at) if record else None,
        "message": f"replaying {where} into fresh projections failed: {detail}",
    }


def _table_differences(conn: Connection, table: Table) -> list[Row]:
    name = table.name
    keys = _SOURCES.get(name, (tuple(c.name for c in table.primary_key.columns), "false"))[0]
    extra = conn.execute(text(f"SELECT * FROM public.{name} EXCEPT SELECT * FROM pg_temp.{name}")).mappings().all()
    missing = conn.execute(text(f"SELECT * FROM pg_temp.{name} EXCEPT SELECT * FROM public.{name}")).mappings().all()
    replayed = {tuple(r[k] for k in keys): dict(r) for r in missing}
    out: list[Row] = []
    for row in extra:
        key = tuple(row[k] for k in keys)
        out.append(_difference(conn, name, key, dict(row), replayed.pop(key, None)))
    for key, lost in replayed.items():
        out.append(_difference(conn, name, key, None, lost))
    return out


def _difference(conn: Connection, table: str, key: tuple[Any, ...], stored: Row | None, replayed: Row | None) -> Row:
    label = "/".join(str(k) for k in key)
    if stored is not None and replayed is not None:
        columns = [c for c in stored if stored[c] != replayed.get(c)]
        change = "; ".join(f"{c} is {stored[c]!r}, a replay gives {replayed.get(c)!r}" for c in columns)
        what = f"{table} row {label} was changed outside the ledger: {change}"
    elif stored is not None:
        what = f"{table} row {label} exists but no event produces it"
    else:
        what = f"{table} row {label} is missing (its events were not applied)"
    position, kind, at = _source_event(conn, table, key)
    if position is not None:
        what += f"; its newest event is position {position} ({kind})"
    return {"check": "projections", "position": position, "type": kind, "at": iso_utc(at), "table": table,
            "key": label, "message": what}  # fmt: skip


def _source_event(conn: Connection, table: str, key: tuple[Any, ...]) -> tuple[int | None, str | None, datetime | None]:
    source = _SOURCES.get(table)
    if source is None:
        return None, None, None
    sql = f"SELECT position, type, occurred_at FROM public.events WHERE {source[1]} ORDER BY position DESC LIMIT 1"
    row = conn.execute(text(sql), {"k0": str(key[0])}).first()
    return (row.position, row.type, row.occurred_at) if row else (None, None, None)


# ---------------------------------------------------------------- history


def run_timeline(ledger: Ledger, run: str) -> list[Row]:
    """Every event about ``run`` (all incarnations), each with its incarnation number."""
    sql = """
        WITH ids AS (SELECT DISTINCT data->>'lease_id' AS id FROM events
                      WHERE type = 'LeaseStarted' AND data->>'run' = :run)
        SELECT position, stream, type, data, actor, occurred_at FROM events
        WHERE stream = :stream OR data->>'run' = :run OR data->>'lease_id' IN (SELECT id FROM ids)
        ORDER BY position
    """
    with ledger.engine.connect() as conn:
        rows = conn.execute(text(sql), {"run": run, "stream": f"run:{run}"}).all()
    out: list[Row] = []
    incarnation = 0
    for r in rows:
        if r.type == "RunSubmitted":
            incarnation += 1
        out.append(
            {
                "incarnation": incarnation,
                "position": r.position,
                "at": iso_utc(r.occurred_at),
                "type": r.type,
                "actor": r.actor,
                "summary": summarize(r.type, r.data),
                "data": r.data,
            }
        )
    return out


def summarize(kind: str, data: Row) -> str:
    """One readable line per event of a run's timeline (`audit history` and `explain` both print it)."""
    if kind == "LeaseStarted":
        payer = data.get("envelope") or "nobody"
        slots = ",".join(str(s) for s in data.get("slots", []))
        return (
            f"{data['lease_id']} group {data['group']} {data['role']} on {data['node']} [{slots}] "
            f"paid by {payer} ({data['payer_class']}) — {data['reason']}"
        )
    if kind == "LeaseEnded":
        seed = f" seed {data['seed']}" if data.get("seed") else ""
        return f"{data['lease_id']} ended — {data['reason']}{seed}"
    if kind == "RunSubmitted":
        spec = data.get("spec", {})
        total = spec.get("resources", {}).get("totalGPUs")
        return f"submitted by {data.get('submitter')} for {spec.get('owner')}: {total} GPUs"
    if kind == "RunAdmitted":
        return f"admitted at {data['width']} GPUs"
    if kind == "RunFinished":
        return f"{data['phase']} ({data['reason']})"
    if kind == "PodBound":
        return f"{data['lease_id']} pods {', '.join(data['pods'])} on {data['node']}"
    parts = [f"{k}={v}" for k, v in data.items() if k not in ("run", "spec")]
    return ", ".join(parts)
