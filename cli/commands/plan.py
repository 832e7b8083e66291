"""`jobtree plan RUN`: the run's reservation (researcher guide §4, SPEC §5).

Prints earliestStart, the deficit per domain, the conflict set, the remedies in the order
they will be applied and each conflicting run's kill probability. ``-o json`` gives the
reservation as ``sim run`` does: ``{id, run, state, earliestStart, deficitGPUs, deficit,
conflictSet, remedies, killProbability, confidence, seed, ...}`` (or ``null`` when the run
never had one).
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli import context
from cli.context import open_app
from cli.render import Row, console, emit_data
from ledger.events import run_key
from ledger.vocabulary import Remedy

REMEDY_WORDS = {
    Remedy.RECLAIM_UNFUNDED: "reclaim unfunded",
    Remedy.DROP_SPARE: "drop spares",
    Remedy.SHRINK: "shrink malleable",
    Remedy.RANDOM_PREEMPT: "lottery",
}


def latest(rows: list[Row]) -> Row | None:
    """The open reservation, else the newest one."""
    open_rows = [r for r in rows if r["state"] == "Open"]
    if open_rows:
        return open_rows[-1]
    return max(rows, key=lambda r: int(str(r["id"]).rpartition("-")[2] or 0)) if rows else None


def lines(res: Row) -> list[str]:
    deficit = ", ".join(f"{n} GPUs in domain={d}" for d, n in res["deficit"].items()) or "0 GPUs (budget only)"
    remedies = ", ".join(f"{REMEDY_WORDS.get(r['action'], r['action'])} ({r['gpus']})" for r in res["remedies"])
    odds = ", ".join(f"{run} {p:g}" for run, p in res["killProbability"].items())
    shrink = ", ".join(f"{run} {n}" for run, n in (res.get("shrink") or {}).items())
    return [
        f"reservation: {res['id']} ({res['state']})",
        f"earliestStart: {res['earliestStart']}",
        f"deficit: {deficit}",
        f"conflictSet: [{', '.join(f'run/{r}' for r in res['conflictSet'])}]",
        f"remedies: {remedies or 'none'}",
        f"killProbability: {odds or '-'}",
        f"shrink: {shrink or '-'}",
        f"confidence: {res['confidence']}",
        f"seed: {res['seed']}",
    ]


def plan(run: Annotated[str, typer.Argument(help="Run name, or NAMESPACE/NAME", metavar="RUN")]) -> None:
    """The run's reservation: earliestStart, deficit, conflict set, remedies and kill odds."""
    from cli.commands.runs import split_run

    namespace, name = split_run(run)
    app = open_app()
    found = app.run(namespace, name)
    res = latest(app.reservations(run=run_key(namespace, name)))
    if emit_data(res, context.options().output):
        return
    if res is None:
        console.print(f"{namespace}/{name} is {found['phase']}: no reservation", markup=False)
        return
    for line in lines(res):
        console.print(line, markup=False)
