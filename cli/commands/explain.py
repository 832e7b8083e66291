"""`explain` / `describe`: why a run is where it is — width, funding split, leases, its story and history."""

from __future__ import annotations

from cli import context, kubeswitch
from cli.commands.runs import RunArg, split_run
from cli.context import open_app
from cli.render import LEASE_COLUMNS, Row, console, emit_data, key_values, short_time, table
from cli.story import story, width_history
from ledger.audit import summarize


def explain(run: RunArg) -> None:
    """Why the run is where it is: width, funding split, leases and its history."""
    _explain(run)


def _explain(run: str) -> None:
    if kubeswitch.active():
        from cli import kubemode

        kubemode.explain(run)
        return
    namespace, name = split_run(run)
    app = open_app()
    found = app.run(namespace, name)
    leases = app.leases(namespace, name)
    history = app.history(namespace, name)
    told, widths = story(history), width_history(history)
    split = funding_split(leases)
    data = {
        "run": found, "leases": leases, "history": history, "story": told, "widthHistory": widths, "payers": split,
    }  # fmt: skip
    if emit_data(data, context.options().output):
        return
    width, funding = found["width"], found["funding"]
    payers = [_payer(p) for p in split]
    lenders = [f"{p['payerOwner']} ({p['envelope']}, {p['gpus']} GPUs)" for p in split if p["class"] == "borrowed"]
    key_values(
        [
            ("Run", f"{namespace}/{name}"),
            ("Owner", found["owner"]),
            ("Submitted by", found["submitter"]),
            ("Phase", found["phase"]),
            (
                "Width",
                f"{width['allocated']} allocated / {width['desired']} desired (min {width['min']}, max {width['max']})",
            ),
            ("Funding", ", ".join(f"{k} {v}" for k, v in funding.items())),
            ("Queue", _queue_line(found)),
            ("Paid by", ", ".join(payers) or "-"),
            ("Lenders", ", ".join(lenders) or "-"),
            ("Message", found["message"] or "-"),
        ]
    )
    console.print()
    table(leases, LEASE_COLUMNS, title="Leases", empty="No leases.")
    console.print()
    console.print("[bold]Width[/bold]  " + (" → ".join(f"{w['width']} ({w['reason']})" for w in widths) or "-"))
    console.print("[bold]Story[/bold]")
    for line in told:
        console.print(f"  {short_time(line['at'])}  {line['text']}", markup=False)
    console.print()
    console.print("[bold]History[/bold]")
    for event in history:
        console.print(
            f"  {short_time(event['at'])}  {event['type']:<20} {summarize(event['type'], event['data'])}", markup=False
        )


def funding_split(leases: list[Row]) -> list[Row]:
    """GPUs held now per payer envelope and class, counted as ``Funding`` counts them: ``gpus`` are the
    workload's (Active; a Fill lease is unfunded), ``spareGPUs`` the hot spares the same payer holds."""
    split: dict[tuple[str | None, str | None, str], list[int]] = {}
    for lease in leases:
        if lease["end"] is not None:
            continue
        payer_class = "unfunded" if lease["role"] == "Fill" else lease["class"]
        envelope = None if lease["role"] == "Fill" else lease["envelope"]
        owner = None if lease["role"] == "Fill" else lease["payerOwner"]
        counts = split.setdefault((envelope, owner, payer_class), [0, 0])
        counts[1 if lease["role"] == "Spare" else 0] += lease["gpus"]
    order = {"owned": 0, "shared": 1, "borrowed": 2, "unfunded": 3}
    return [
        {"envelope": e, "payerOwner": o, "class": c, "gpus": g, "spareGPUs": sp}
        for (e, o, c), (g, sp) in sorted(split.items(), key=lambda kv: (order.get(kv[0][2], 4), kv[0][0] or ""))
    ]


def _payer(p: Row) -> str:
    spares = f" (+{p['spareGPUs']} spare)" if p["spareGPUs"] else ""
    return f"{p['envelope'] or 'nobody'} {p['class']} {p['gpus']}{spares}"


def _queue_line(run: Row) -> str:
    if run.get("queuePosition") is None:
        return "-"
    res = run.get("reservation")
    where = f"position {run['queuePosition']}"
    if res is None:
        return f"{where}, no reservation yet"
    return f"{where}, ETA {res['earliestStart']} ({res['confidence']}), reservation {res['id']}"
