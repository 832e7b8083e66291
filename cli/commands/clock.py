"""`jobtree clock`: the ledger's clock — show it, or move it ahead (time is an input, ARCHITECTURE §4)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import context
from cli.render import console, emit_data, key_values
from ledger import queries
from ledger import status as planner_status

app = typer.Typer(help="The ledger's clock: show it, or move it ahead (admins, on a wall-clock ledger).")


@app.command("show")
def show() -> None:
    """The ledger's time, and where the planner service stands."""
    ledger = context.open_ledger(services=True)
    status = planner_status.read(ledger)
    row = {
        "ledgerTime": queries.iso_utc(ledger.latest_time()),
        "position": ledger.last_position(),
        "planner": status.leader if status else None,
        "plannerClock": status.data.get("clock") if status else None,
        "plannedTo": status.position if status else None,
        "nextWake": queries.iso_utc(status.next_wake) if status else None,
        "alive": status.alive() if status else False,
    }
    if not emit_data(row, context.options().output):
        key_values(list(row.items()))


@app.command("advance")
def advance(
    when: Annotated[str, typer.Argument(help="RFC 3339 time, or +DURATION from now (e.g. +20m)", metavar="WHEN")],
) -> None:
    """Move the ledger's clock to WHEN (a ClockAdvanced event) and let the planner act on it."""
    context.options().now = when
    app_ = context.open_app()
    app_.sync()
    row = {"ledgerTime": queries.iso_utc(app_.ledger.latest_time()), "position": app_.ledger.last_position()}
    if not emit_data(row, context.options().output):
        console.print(f"clock at {row['ledgerTime']}", markup=False)
