"""Budget commands: apply, list, usage."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import context
from cli.commands import audit
from cli.commands.runs import FileOption, read_manifests
from cli.context import open_app
from cli.render import Col, Column, Row, console, emit_data, hours, table


def _hours(row: Row) -> str:
    used = hours(row["gpuHoursUsed"])
    return f"{used}/{hours(row['maxGPUHours'])}" if row.get("maxGPUHours") is not None else used


def _relations(row: Row) -> str:
    parts = [f"lent {r['gpus']} to {r['owner']}" for r in row["lentTo"]]
    parts += [f"shared {r['gpus']} with {r['owner']}" for r in row["sharedWith"]]
    parts += [f"borrows {r['gpus']} from {r['envelope']}" for r in row["borrowedFrom"]]
    parts += [f"uses {r['gpus']} of {r['envelope']}" for r in row["sharedFrom"]]
    if not row["windowOpen"]:
        parts.append("window closed")
    return "; ".join(parts) or "-"


FUNDING_USAGE_COLUMNS: list[Column] = [
    Col("ENVELOPE", lambda r: r["envelope"]),
    Col("GPU", lambda r: r["gpuType"], priority=4),
    Col("CAP", lambda r: r["concurrency"]),
    Col("OWNED", lambda r: r["owned"]),
    Col("SHARED", lambda r: r["shared"], priority=2),
    Col("LENT", lambda r: r["lent"], priority=1),
    Col("BORROWED", lambda r: r["borrowed"], priority=1),
    Col("UNFUNDED", lambda r: r["unfunded"], priority=2),
    Col("HEADROOM", lambda r: r["headroom"]),
    Col("GPU-HOURS", _hours, priority=3),
    Col("LENDING / BORROWING", _relations, wide=True),
]

app = typer.Typer(help="Team budgets: envelopes of GPU concurrency and GPU-hours.", no_args_is_help=True)


@app.command("apply")
def apply(file: FileOption) -> None:
    """Apply Budget manifests (admins only)."""
    manifests = read_manifests(file)
    service = open_app()
    applied = service.apply(manifests, allowed=("Budget",))
    if not emit_data([a.as_row() for a in applied], context.options().output):
        for a in applied:
            console.print(f"budget/{a.name} {a.action}")


@app.command("list")
def list_budgets() -> None:
    """List budgets and their envelopes."""
    rows = open_app().budgets()
    if emit_data(rows, context.options().output):
        return
    flat = [
        {
            "owner": b["owner"],
            "parents": b["spec"].get("parents", []),
            "envelope": e["name"],
            "gpuType": e["gpuType"],
            "selector": ",".join(f"{k}={v}" for k, v in e.get("selector", {}).items()) or "*",
            "concurrency": e["concurrency"],
            "maxGPUHours": e.get("maxGPUHours"),
            "sharing": e.get("sharing", "family"),
        }
        for b in rows
        for e in b["spec"].get("envelopes", [])
    ]
    columns = [
        (k.upper(), lambda r, k=k: r[k])
        for k in ("owner", "parents", "envelope", "gpuType", "selector", "concurrency", "maxGPUHours", "sharing")
    ]
    table(flat, columns, empty="No budgets.")


@app.command("usage")
def usage(
    owner: Annotated[str | None, typer.Option(help="Only this owner's envelopes")] = None,
    period: Annotated[
        str | None, typer.Option(help="GPU-hours in a period instead: YYYY-MM, YYYY-MM-DD, FROM/TO or e.g. 24h")
    ] = None,
) -> None:
    """GPUs in use now per envelope: owned / shared / borrowed, and headroom (--period: GPU-hours)."""
    if period is not None:
        audit.budget_period_usage(owner, period)
        return
    rows = open_app().usage(owner)
    if not emit_data(rows, context.options().output):
        table(rows, FUNDING_USAGE_COLUMNS, empty="No envelopes.")
