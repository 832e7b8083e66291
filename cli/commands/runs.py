"""Run commands: submit, get, watch, explain, leases, shrink, cancel, complete."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from cli import context, kubeswitch
from cli.context import open_app
from cli.errors import BadInput
from cli.render import (
    LEASE_COLUMNS,
    RUN_COLUMNS,
    Row,
    console,
    emit_data,
    key_values,
    run_settled,
    run_summary,
    short_time,
    table,
)
from cli.story import story, width_history
from ledger import manifest_yaml
from ledger.errors import ManifestError
from ledger.model import Manifest, parse_manifests

FileOption = Annotated[Path, typer.Option("-f", "--filename", help="Manifest file (YAML or JSON; '-' for stdin)")]
RunArg = Annotated[str, typer.Argument(help="Run name, or NAMESPACE/NAME", metavar="RUN")]


def split_run(ref: str) -> tuple[str, str]:
    if "/" in ref:
        namespace, _, name = ref.partition("/")
        return namespace, name
    return context.GLOBALS.ns, ref


def read_manifest_text(path: Path) -> tuple[str, str]:
    """The file's text: at most 10 MiB (never more is read), UTF-8 (SPEC §12)."""
    limit = manifest_yaml.MAX_FILE_BYTES + 1
    source = "<stdin>" if str(path) == "-" else str(path)
    try:
        if str(path) == "-":
            stream = getattr(sys.stdin, "buffer", None)
            text = sys.stdin.read(limit) if stream is None else None
            data = stream.read(limit) if stream is not None else str(text).encode("utf-8", "surrogateescape")
        else:
            with path.open("rb") as handle:
                data = handle.read(limit)
        return manifest_yaml.decode(data, source), source
    except OSError as exc:
        raise BadInput("-f", f"cannot read {path}: {exc.strerror}") from None
    except ManifestError as exc:
        raise BadInput(f"{source}: {exc.field}", exc.rule) from None


def read_manifests(path: Path) -> list[Manifest]:
    """Read and validate a manifest file before any database is touched: bad input never waits on one."""
    text_value, source = read_manifest_text(path)
    try:
        return parse_manifests(text_value, source)
    except ManifestError as exc:
        raise BadInput(f"{source}: {exc.field}", exc.rule) from None


def submit(file: FileOption, wait: Annotated[bool, typer.Option(help="Wait until the run settles")] = False) -> None:
    """Submit Run manifests (Budget, Cluster and Policy documents are applied too, admins only)."""
    if kubeswitch.active():
        from cli import kubemode

        kubemode.submit(*read_manifest_text(file), wait)
        return
    manifests = read_manifests(file)
    app = open_app()
    applied = app.apply(manifests)
    states = app.runs_named([a.name for a in applied if a.kind == "Run"])
    rows = [a.as_row() | _run_state(states.get(a.name)) for a in applied]
    if emit_data(rows, context.GLOBALS.output):
        return
    for row in rows:
        phase = f" — {row['phase']}" if row.get("phase") else ""
        message = f": {row['message']}" if row.get("message") else ""
        console.print(f"{row['kind'].lower()}/{row['name']} {row['action']}{phase}{message}")
    if wait:
        for a in applied:
            if a.kind == "Run":
                _watch(*split_run(a.name), timeout=None)


def _run_state(found: Row | None) -> Row:
    return {} if found is None else {"phase": found["phase"], "message": found["message"]}


def get(
    what: Annotated[str, typer.Argument(help="What to list: runs")],
    all_namespaces: Annotated[bool, typer.Option("-A", "--all-namespaces")] = False,
    selector: Annotated[str | None, typer.Option("-l", "--selector", help="owner=OWNER")] = None,
) -> None:
    """List runs (`get runs`)."""
    if what not in ("runs", "run"):
        raise BadInput("WHAT", f"can list 'runs' (got {what!r})")
    owner = None
    if selector:
        key, _, value = selector.partition("=")
        if key != "owner" or not value:
            raise BadInput("-l", "the only selector is owner=OWNER")
        owner = value
    if kubeswitch.active():
        from cli import kubemode

        kubemode.get(all_namespaces, owner)
        return
    rows = open_app().runs(None if all_namespaces else context.GLOBALS.ns, owner)
    if not emit_data(rows, context.GLOBALS.output):
        table(rows, RUN_COLUMNS, empty="No runs.")


def _watch(namespace: str, name: str, timeout: float | None, interval: float = 2.0) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    while True:
        app = open_app()
        run = app.run(namespace, name)
        line = run_summary(run)
        if line != last:
            if context.GLOBALS.output == "table":
                console.print(line)
            else:
                emit_data(run, context.GLOBALS.output)
            last = line
        if run_settled(run) or (deadline is not None and time.monotonic() >= deadline):
            return
        time.sleep(interval)


def watch(
    run: RunArg,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes")] = 2.0,
) -> None:
    """Follow a run until it settles (Running at its desired width, or finished) or Ctrl-C."""
    try:
        if kubeswitch.active():
            from cli import kubemode

            kubemode.watch(run, timeout, interval)
            return
        _watch(*split_run(run), timeout=timeout, interval=interval)
    except KeyboardInterrupt:
        return


def explain(run: RunArg) -> None:
    """Why the run is where it is: width, funding split, leases and its history."""
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
    if emit_data(data, context.GLOBALS.output):
        return
    width, funding = found["width"], found["funding"]
    payers = [f"{p['envelope'] or 'nobody'} {p['class']} {p['gpus']}" for p in split]
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
        console.print(f"  {short_time(event['at'])}  {event['type']:<20} {_describe(event)}", markup=False)


def funding_split(leases: list[Row]) -> list[Row]:
    """GPUs held now (Active and Spare) per payer envelope and class: who pays for the run."""
    split: dict[tuple[str | None, str | None, str], int] = {}
    for lease in leases:
        if lease["end"] is None and lease["role"] != "Fill":
            key = (lease["envelope"], lease["payerOwner"], lease["class"])
            split[key] = split.get(key, 0) + lease["gpus"]
    order = {"owned": 0, "shared": 1, "borrowed": 2, "unfunded": 3}
    return [
        {"envelope": e, "payerOwner": o, "class": c, "gpus": g}
        for (e, o, c), g in sorted(split.items(), key=lambda kv: (order.get(kv[0][2], 4), kv[0][0] or ""))
    ]


def _describe(event: Row) -> str:
    data = event["data"]
    kind = event["type"]
    if kind == "LeaseStarted":
        payer = data["envelope"] or "nobody"
        return (
            f"{data['lease_id']} group {data['group']} {data['role']} on {data['node']} "
            f"GPUs {data['slots']} paid by {payer} ({data['payer_class']}), {data['reason']}"
        )
    if kind == "LeaseEnded":
        seed = f" seed {data['seed']}" if data.get("seed") else ""
        return f"{data['lease_id']} ended: {data['reason']}{seed}"
    if kind == "RunSubmitted":
        return f"by {data['submitter']}"
    if kind == "PodBound":
        return f"{data['lease_id']} pods {', '.join(data['pods'])} on {data['node']}"
    return ", ".join(f"{k}={v}" for k, v in data.items() if k not in ("run", "spec"))


def leases(
    run: Annotated[str | None, typer.Argument(help="Run name, or NAMESPACE/NAME", metavar="[RUN]")] = None,
    owner: Annotated[str | None, typer.Option(help="All leases of runs of this owner")] = None,
) -> None:
    """Who paid for each lease of a run (or of every run of an owner)."""
    if run is None and owner is None:
        raise BadInput("RUN", "name a run or pass --owner OWNER")
    kubeswitch.refuse("leases")
    app = open_app()
    rows = app.leases(*split_run(run)) if run is not None else app.leases(None, None, owner=owner)
    if not emit_data(rows, context.GLOBALS.output):
        table(rows, LEASE_COLUMNS, empty="No leases.")


def _act(action: str, run: str, **kwargs: int) -> None:
    if action == "cancel" and kubeswitch.active():
        from cli import kubemode

        kubemode.cancel(run)
        return
    kubeswitch.refuse(action)
    app = open_app()
    namespace, name = split_run(run)
    result = getattr(app, action)(namespace, name, **kwargs)
    if not emit_data(result, context.GLOBALS.output):
        console.print(run_summary(result))


def shrink(run: RunArg, by: Annotated[int, typer.Option("--by", help="GPUs to give back")]) -> None:
    """Lower a malleable run's desired width and end its highest groups now."""
    _act("shrink", run, by=by)


def cancel(run: RunArg) -> None:
    """Cancel a run: every lease ends (Cancelled)."""
    _act("cancel", run)


def complete(run: RunArg) -> None:
    """Mark a run's workload finished: every lease ends (Completed)."""
    _act("complete", run)


def register(app: typer.Typer) -> None:
    for command in (submit, get, watch, explain, leases, shrink, cancel, complete):
        app.command()(command)
