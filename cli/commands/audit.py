"""Audit commands: gpu-hours, verify, replay, history."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import context
from cli.commands.runs import RunArg, split_run
from cli.context import open_app, open_ledger
from cli.errors import BadInput, CommandError, NotFound
from cli.render import Col, Column, console, emit_data, hours, key_values, table
from ledger import accounting, audit
from ledger.events import run_key
from planner.replay import replay

app = typer.Typer(help="Accounting and audit: GPU-hours, tamper and determinism checks, run history.",
                  no_args_is_help=True)  # fmt: skip


class AuditFailed(CommandError):
    """The audit found a violation or a difference (exit 1, after printing the report)."""


#: What a table or CSV names unfunded use by (JSON keeps null: nobody pays).
UNFUNDED = "(unfunded)"

_SUM_COLUMNS: list[Column] = [
    Col("GPU-HOURS", lambda r: hours(r["gpuHours"])),
    Col("CHARGED", lambda r: hours(r["chargedGPUHours"])),
    Col("OWNED", lambda r: hours(r["ownedGPUHours"]), priority=1),
    Col("SHARED", lambda r: hours(r["sharedGPUHours"]), priority=2),
    Col("BORROWED", lambda r: hours(r["borrowedGPUHours"]), priority=1),
    Col("UNFUNDED", lambda r: hours(r["unfundedGPUHours"]), priority=1),
    Col("SPARE", lambda r: hours(r["spareGPUHours"]), priority=3),
]
_GROUP_COLUMNS: dict[str, list[Column]] = {
    "envelope": [("ENVELOPE", lambda r: r["envelope"]), ("PAYER", lambda r: r["owner"])],
    "owner": [("PAYER", lambda r: r["owner"] or UNFUNDED)],
    "submitter": [("SUBMITTER", lambda r: r["submitter"])],
    "class": [("CLASS", lambda r: r["class"])],
    "run": [("RUN", lambda r: r["run"]), ("OWNER", lambda r: r["owner"])],
}


@app.command("gpu-hours")
def gpu_hours(
    by: Annotated[
        str, typer.Option("--by", help="envelope | owner (the payer) | submitter (who submitted the run) | class | run")
    ] = "envelope",
    start: Annotated[str | None, typer.Option("--from", help="Period start, RFC 3339 (inclusive)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Period end, RFC 3339 (exclusive)")] = None,
) -> None:
    """GPU-hours in [--from, --to): metered, charged (spares at the spare rate), and by class."""
    if by not in accounting.GROUPINGS:
        raise BadInput("--by", f"must be one of {', '.join(accounting.GROUPINGS)} (got {by!r})")
    try:
        period = accounting.make_period(start, end)
    except ValueError as exc:
        field, _, rule = str(exc).partition(": ")
        raise BadInput(field if rule else "--from/--to", rule or str(exc)) from None
    service = open_app()
    service.sync()
    rows = [r | period.as_row() for r in accounting.gpu_hours(service.engine, by, period, service.now)]
    if context.GLOBALS.output == "csv":  # a flat file names unfunded use instead of leaving a blank
        rows = [r | {k: UNFUNDED for k in ("owner", "envelope") if k in r and r[k] is None} for r in rows]
    if not emit_data(rows, context.GLOBALS.output):
        table(rows, [*_GROUP_COLUMNS[by], *_SUM_COLUMNS], empty="No leases in the period.")


@app.command("verify")
def verify() -> None:
    """Check the hash chain, the invariants over the whole history, and the projections."""
    report = audit.verify(open_ledger())
    if not emit_data(report.as_row(), context.GLOBALS.output):
        table([c.as_row() for c in report.checks],
              [("CHECK", lambda r: r["check"]), ("OK", lambda r: "yes" if r["ok"] else "NO"),
               ("RESULT", lambda r: r["message"])])  # fmt: skip
        if report.violations:
            first = report.violations[0]
            where = f"event {first['position']} ({first['type']})" if first.get("position") else "the ledger"
            console.print(f"first violation at {where}: {first['message']}")
    if not report.ok:
        raise AuditFailed(
            f"audit verify: {len(report.violations)} violation(s); first: {report.violations[0]['message']}"
        )


@app.command("replay")
def replay_cmd() -> None:
    """Re-fold the ledger and re-run the planner at every decision point; report differences."""
    result = replay(open_ledger().read())
    data = {
        "events": result.events,
        "decisionPoints": result.decision_points,
        "decisions": result.decisions,
        "differences": [
            {"position": d.position, "at": d.at, "recorded": d.recorded, "replayed": d.replayed, "message": d.message}
            for d in result.differences
        ],
    }
    if not emit_data(data, context.GLOBALS.output):
        key_values([("events", result.events), ("decision points", result.decision_points),
                    ("decisions", result.decisions), ("differences", len(result.differences))])  # fmt: skip
        for d in result.differences[:20]:
            console.print(f"{d.at}: {d.message}", markup=False)
    if result.differences:
        raise AuditFailed(f"audit replay: {len(result.differences)} decision(s) differ; first: "
                          f"{result.differences[0].message}")  # fmt: skip


@app.command("history")
def history(run: RunArg) -> None:
    """A run's full timeline, every incarnation: submitted, admitted, leases with reasons and seeds."""
    namespace, name = split_run(run)
    rows = audit.run_timeline(open_ledger(), run_key(namespace, name))
    if not rows:
        raise NotFound(f"no events mention run {namespace}/{name}")
    if not emit_data(rows, context.GLOBALS.output):
        table(rows, [("#", lambda r: r["incarnation"]), ("POS", lambda r: r["position"]),
                     ("AT", lambda r: r["at"]), ("EVENT", lambda r: r["type"]),
                     ("ACTOR", lambda r: r["actor"]), ("WHAT", lambda r: r["summary"])])  # fmt: skip


_PERIOD_COLUMNS: list[Column] = [
    Col("ENVELOPE", lambda r: r["envelope"] or f"{UNFUNDED} nobody pays"),
    Col("GPU", lambda r: r["gpuType"], priority=4),
    Col("CAP", lambda r: r["concurrency"], priority=3),
    Col("MAX GPU-H", lambda r: hours(r["maxGPUHours"]), priority=2),
    Col("OWNED", lambda r: hours(r["ownedGPUHours"])),
    Col("SHARED", lambda r: hours(r["sharedGPUHours"]), priority=1),
    Col("BORROWED", lambda r: hours(r["borrowedGPUHours"]), priority=1),
    Col("UNFUNDED", lambda r: hours(r["unfundedGPUHours"])),
    Col("SPARE", lambda r: hours(r["spareGPUHours"]), priority=2),
    Col("CHARGED", lambda r: hours(r["chargedGPUHours"])),
]


def budget_period_usage(owner: str | None, period: str) -> None:
    """`budgets usage --period P`: GPU-hours per envelope in the period (owned / shared /
    borrowed charged, spares at the spare rate) and the unfunded hours metered for nobody."""
    service = open_app()
    service.sync()
    try:
        parsed = accounting.parse_period(period, service.now)
    except ValueError as exc:
        raise BadInput("--period", str(exc)) from None
    rows = accounting.envelope_period_usage(service.engine, parsed, service.now, owner)
    if context.GLOBALS.output == "csv":
        rows = [r | {"envelope": r["envelope"] or UNFUNDED} for r in rows]
    if not emit_data(rows, context.GLOBALS.output):
        span = f"{parsed.as_row()['from'] or 'the beginning'} .. {parsed.as_row()['to'] or 'now'}"
        table(rows, _PERIOD_COLUMNS, title=f"GPU-hours {span}")
