"""Run commands: submit, get, watch, explain, leases, shrink, cancel, complete."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from cli import context, kubeswitch
from cli.context import open_app
from cli.errors import BadInput, NotSettled
from cli.render import (
    LEASE_COLUMNS,
    RUN_COLUMNS,
    Col,
    Column,
    Row,
    age,
    console,
    emit_data,
    format_table,
    output_width,
    run_settled,
    run_summary,
    table,
)
from ledger import manifest_yaml
from ledger.errors import ManifestError
from ledger.model import Manifest
from ledger.parsing import parse_manifests

FileOption = Annotated[Path, typer.Option("-f", "--filename", help="Manifest file (YAML or JSON; '-' for stdin)")]
RunArg = Annotated[
    str, typer.Argument(help="Run: NAMESPACE/NAME, or NAME (-n, the configured namespace, else the one run so named)",
                        metavar="RUN"),
]  # fmt: skip
RunsArg = Annotated[list[str] | None, typer.Argument(help="Runs: NAMESPACE/NAME or NAME", metavar="RUN")]
SelectorOption = Annotated[str | None, typer.Option("-l", "--selector", help="owner=OWNER")]
AllNamespaces = Annotated[bool, typer.Option("-A", "--all-namespaces", help="Every namespace")]


def split_run(ref: str) -> tuple[str, str]:
    """(namespace, name) of a RUN argument, resolved as SPEC §8 says (``cli.context``, ``JobtreeApp.resolve``)."""
    ref = ref.removeprefix("runs/").removeprefix("run/")
    if "/" in ref:
        namespace, _, name = ref.partition("/")
        return namespace, name
    g = context.options()
    if g.namespace is not None:
        return g.namespace, ref
    return open_app().resolve(ref, g.configured_ns, explicit=False)


def owner_selector(selector: str | None) -> str | None:
    if not selector:
        return None
    key, _, value = selector.partition("=")
    if key != "owner" or not value:
        raise BadInput("-l", "the only selector is owner=OWNER")
    return value


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
    if emit_data(rows, context.options().output):
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
    names: RunsArg = None,
    all_namespaces: AllNamespaces = False,
    selector: SelectorOption = None,
    follow: Annotated[bool, typer.Option("-w", "--watch", help="After the list, print each run that changes")] = False,
    timeout: Annotated[float | None, typer.Option(help="With -w: stop after this many seconds")] = None,
    interval: Annotated[float, typer.Option(min=0.0, help="With -w: seconds between refreshes")] = 2.0,
) -> None:
    """List runs (`get runs`)."""
    if what not in ("runs", "run"):
        raise BadInput("WHAT", f"can list 'runs' (got {what!r})")
    owner = owner_selector(selector)
    if kubeswitch.active():
        from cli import kubemode

        kubemode.get(all_namespaces, owner)
        return
    listed = _lister(list(names or []), all_namespaces, owner)
    rows = listed()
    columns = run_columns(all_namespaces or bool(names and any("/" in n for n in names)))
    data = rows[0] if names and len(names) == 1 else rows  # kubectl: one name, one object
    if not emit_data(data, context.options().output, kind="run"):
        table(_aged(rows), columns, empty=_no_runs(all_namespaces))
    if follow:
        _follow(listed, columns, timeout, interval)


def _lister(names: list[str], all_namespaces: bool, owner: str | None) -> Callable[[], list[Row]]:
    """What `get runs` lists, as a function: -w calls it again on each refresh (one app, one engine)."""
    app = open_app()
    if names:
        refs = [split_run(n) for n in names]
        return lambda: [app.run(ns, name) for ns, name in refs]
    namespace = None if all_namespaces else context.options().ns
    return lambda: app.runs(namespace, owner)


def _no_runs(all_namespaces: bool) -> str:
    if all_namespaces:
        return "No runs."
    return f"No runs in namespace {context.options().ns} (every namespace: `get runs -A`)."


def run_columns(with_namespace: bool) -> list[Column]:
    return [c for c in RUN_COLUMNS if with_namespace or not (isinstance(c, Col) and c.header == "NAMESPACE")]


def _aged(rows: list[Row]) -> list[Row]:
    """Rows with their AGE (from submission to the ledger's now), for tables only."""
    now = open_app().now
    return [r | {"age": age(r.get("submittedAt"), now)} for r in rows]


def _follow(listed: Callable[[], list[Row]], columns: list[Column], timeout: float | None, interval: float) -> None:
    """kubectl get -w: one line (or one document) per run whose row changed, until Ctrl-C or --timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = {row_key(r): _fingerprint(r) for r in listed()}
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
            rows = listed()
            changed = [r for r in rows if seen.get(row_key(r)) != _fingerprint(r)]
            seen |= {row_key(r): _fingerprint(r) for r in changed}
            output = context.options().output
            if changed and not emit_data(changed, output, kind="run"):
                for line in format_table(_aged(changed), columns, output_width(), output == "wide")[1:]:
                    print(line, flush=True)
    except KeyboardInterrupt:
        return


def row_key(row: Row) -> str:
    return f"{row['namespace']}/{row['name']}"


def _fingerprint(row: Row) -> str:
    return run_summary(row)


def _watch(namespace: str, name: str, timeout: float | None, interval: float = 2.0) -> bool:
    """Print each change of the run until it settles (True) or ``timeout`` passes (False).

    One application (one engine, one connection pool) for every refresh."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    app = open_app()
    while True:
        run = app.run(namespace, name)
        line = run_summary(run)
        if line != last:
            if context.options().output in ("table", "wide"):
                console.print(line, markup=False)
            else:
                emit_data(run, context.options().output, kind="run")
            last = line
        if run_settled(run):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))


def watch(
    run: RunArg,
    timeout: Annotated[
        float | None, typer.Option(help="Stop after this many seconds; exit 1 if the run has not settled by then")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.0, help="Seconds between refreshes")] = 2.0,
) -> None:
    """Follow a run until it settles (Running at its desired width, or finished) or Ctrl-C."""
    try:
        if kubeswitch.active():
            from cli import kubemode

            kubemode.watch(run, timeout, interval)
            return
        namespace, name = split_run(run)
        if not _watch(namespace, name, timeout=timeout, interval=interval):
            raise NotSettled(f"run {namespace}/{name} did not settle within {timeout:g}s")
    except KeyboardInterrupt:
        return


def leases(
    run: Annotated[str | None, typer.Argument(help="Run: NAMESPACE/NAME or NAME", metavar="[RUN]")] = None,
    owner: Annotated[str | None, typer.Option(help="All leases of runs of this owner")] = None,
) -> None:
    """Who paid for each lease of a run (or of every run of an owner)."""
    if run is None and owner is None:
        raise BadInput("RUN", "name a run or pass --owner OWNER")
    kubeswitch.refuse("leases")
    app = open_app()
    rows = app.leases(*split_run(run)) if run is not None else app.leases(None, None, owner=owner)
    if not emit_data(rows, context.options().output, kind="lease"):
        table(rows, LEASE_COLUMNS, empty="No leases.")


def shrink(run: RunArg, by: Annotated[int, typer.Option("--by", help="GPUs to give back")]) -> None:
    """Lower a malleable run's desired width and end its highest groups now."""
    kubeswitch.refuse("shrink")
    result = open_app().shrink(*split_run(run), by=by)
    if not emit_data(result, context.options().output, kind="run"):
        console.print(run_summary(result), markup=False)


AllOption = Annotated[bool, typer.Option("--all", help="Every unfinished run in the namespace (with -A: everywhere)")]


def _end(action: str, names: list[str] | None, selector: str | None, every: bool, all_namespaces: bool) -> None:
    """cancel / complete / delete: the runs named, or selected (-l owner=O, --all), in one append."""
    owner = owner_selector(selector)
    names = list(names or [])
    if not names and owner is None and not every:
        raise BadInput("RUN", "name one or more runs, or select them with -l owner=OWNER or --all")
    if names and (owner is not None or every):
        raise BadInput("RUN", "name runs or select them (-l, --all), not both")
    if action == "cancel" and kubeswitch.active():
        from cli import kubemode

        for name in names:
            kubemode.cancel(name)
        return
    kubeswitch.refuse(action)
    app = open_app()
    if names:
        targets = [split_run(n) for n in names]
    else:
        targets = app.active_runs(None if all_namespaces else context.options().ns, owner)
    results = app.end_runs(action, targets)
    one = len(names) == 1  # kubectl: one name, one object; several or a selection, a list
    if emit_data(results[0] if one else results, context.options().output, kind="run"):
        return
    if not results:
        console.print("No unfinished runs selected.", markup=False)
    for result in results:
        console.print(run_summary(result), markup=False)


def cancel(
    ctx: typer.Context,
    runs: RunsArg = None,
    selector: SelectorOption = None,
    every: AllOption = False,
    all_namespaces: AllNamespaces = False,
) -> None:
    """Cancel runs: every lease ends (Cancelled)."""
    # `delete` and `complete` are this command under another name (cli.main.COMMANDS)
    _end("complete" if ctx.info_name == "complete" else "cancel", runs, selector, every, all_namespaces)


def _short(message: str) -> str:
    """What is short, without the reservation's own words (its ETA has a column)."""
    return re.sub(r"(; )?reserved res-[0-9]+: earliest start \S+$", "", message)


def queue(all_namespaces: AllNamespaces = False) -> None:
    """Every waiting run in FIFO order: position, phase, ETA, confidence and what is short (`squeue --start`)."""
    kubeswitch.refuse("queue")
    app = open_app()
    rows = app.queue(None if all_namespaces else context.options().ns)
    if emit_data(rows, context.options().output, kind="run"):
        return
    columns: list[Column] = [
        Col("POS", lambda r: r["queuePosition"]),
        *([Col("NAMESPACE", lambda r: r["namespace"], priority=3)] if all_namespaces else []),
        Col("NAME", lambda r: r["name"]),
        Col("PHASE", lambda r: r["phase"]),
        Col("GPUS", lambda r: r["width"]["desired"], priority=2),
        Col("ETA", lambda r: r["eta"] or "unknown"),
        Col("CONFIDENCE", lambda r: (r["reservation"] or {}).get("confidence"), priority=1),
        Col("SHORT", lambda r: _short(r["message"]), free_text=True),
    ]
    table(_aged(rows), columns, empty=_no_runs(all_namespaces).replace("No runs", "No waiting runs"))
