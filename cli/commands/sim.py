"""`jobtree sim run SCENARIO.yaml`: what-if on a throw-away ledger; `sim check` only validates."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from cli import context
from cli.errors import BadInput, CommandError
from cli.render import LEASE_COLUMNS, RUN_COLUMNS, Column, console, emit_data, errors, short_time, table
from ledger import manifest_yaml
from ledger.databases import drop_database, fresh_database, shown_url
from ledger.embedded import migrate, resolve_database_url
from ledger.errors import LedgerError, ManifestError
from ledger.fields import format_duration
from ledger.store import Ledger
from service import generate, sacct
from service.scenario import Scenario, load_scenario
from service.simmetrics import Collector
from service.simulate import Chapter, SimResult, simulate

app = typer.Typer(help="What-if: run a scenario through the real planner on a virtual clock.", no_args_is_help=True)
ScenarioArg = Annotated[Path, typer.Argument(help="Scenario file (YAML or JSON)", metavar="SCENARIO")]

#: Binder acknowledgements: in the JSON timeline, left out of the story for readability.
QUIET_TYPES = frozenset({"PodBound"})

RESERVATION_COLUMNS: list[Column] = [
    ("ID", lambda r: r["id"]),
    ("RUN", lambda r: r["run"]),
    ("STATE", lambda r: r["state"]),
    ("EARLIEST START", lambda r: short_time(r["earliestStart"])),
    ("DEFICIT", lambda r: ", ".join(f"{d}: {n}" for d, n in r["deficit"].items()) or r["deficitGPUs"]),
    ("CONFLICT SET", lambda r: r["conflictSet"]),
    ("REMEDIES", lambda r: ", ".join(f"{x['action']} {x['gpus']}" for x in r["remedies"])),
    ("CONFIDENCE", lambda r: r["confidence"]),
]


def read_scenario(path: Path) -> Scenario:
    try:
        with path.open("rb") as handle:
            text_value = manifest_yaml.decode(handle.read(manifest_yaml.MAX_FILE_BYTES + 1), str(path))
    except OSError as exc:
        raise BadInput("SCENARIO", f"cannot read {path}: {exc.strerror}") from None
    except ManifestError as exc:
        raise BadInput(f"{path}: {exc.field}", exc.rule) from None
    return load_scenario(text_value)


@app.command("check")
def check(scenario: ScenarioArg) -> None:
    """Validate a scenario file without running it."""
    parsed = read_scenario(scenario)
    end = _offset(parsed.end - parsed.start)
    summary = {"name": parsed.name, "start": _iso(parsed), "steps": len(parsed.steps), "end": end}
    if not emit_data(summary, context.options().output):
        console.print(f"scenario {parsed.name}: valid, {len(parsed.steps)} steps, ends at +{summary['end']}")


@app.command("generate")
def generate_command(
    days: Annotated[float, typer.Option(help="How long the scenario lasts")] = 30.0,
    nodes: Annotated[int, typer.Option(help="Nodes in the fleet")] = 160,
    runs: Annotated[int, typer.Option(help="Runs submitted over the whole span")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same file")] = 1,
    mix: Annotated[Path | None, typer.Option(help="Workload mix (YAML; docs/simulator.md)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout")] = None,
) -> None:
    """Write a synthetic scenario: a fleet, 8 teams' budgets and a workload (Poisson arrivals, daily cycle)."""
    mix_text = None
    if mix is not None:
        try:
            mix_text = mix.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput("--mix", f"cannot read {mix}: {exc}") from None
    text_value = generate.dump(generate.generate(days, nodes, runs, seed, generate.load_mix(mix_text)))
    _write(text_value, out)


def _write(text_value: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text_value, nl=False)
        return
    try:
        out.write_text(text_value, encoding="utf-8")
    except OSError as exc:
        raise BadInput("--out", f"cannot write {out}: {exc.strerror}") from None
    errors.print(f"wrote {out}", markup=False)


@app.command("run")
def run(
    scenario: ScenarioArg,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="One progress line per step on stderr")] = False,
    keep: Annotated[bool, typer.Option(help="Keep the simulation's database and print its URL")] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write report.json and PNG plots into this directory")
    ] = None,
) -> None:
    """Run a scenario (nodes, budgets, timed steps) on a throw-away ledger; print the story and final state."""
    if context.options().now is not None:
        raise BadInput("--now", "a scenario runs on its own clock (spec.start plus each step's `at`)")
    parsed = read_scenario(scenario)  # before any database is touched
    collector = Collector(parsed) if report is not None else None
    result, kept = _simulate_in_throwaway(parsed, verbose, keep, collector)
    if collector is not None and report is not None:
        _report(collector.report(parsed.end), report, result)
    elif not emit_data(result.as_json(), context.options().output):
        render_story(result)
    if kept:
        shown = shown_url(kept)
        errors.print(f"kept the simulation's ledger: --db {shown}", markup=False)


def _report(data: dict[str, Any], directory: Path, result: SimResult) -> None:
    from cli.plots import write_report  # matplotlib only when a report is asked for

    try:
        files = write_report(data, directory)
    except OSError as exc:
        raise BadInput("--report", f"cannot write into {directory}: {exc.strerror}") from None
    if emit_data(data, context.options().output):
        return
    waits = data["waitMinutes"]["overall"]
    console.print(
        f"{data['scenario']}: {data['runs']['submitted']} runs, {result.events} events; "
        f"wait p50 {waits['p50']} min, p90 {waits['p90']} min, p99 {waits['p99']} min; "
        f"{data['runs']['stillWaiting']} still waiting at the end",
        markup=False,
    )
    for path in files:
        console.print(f"wrote {path}", markup=False)


@app.command("import-sacct")
def import_sacct(
    export: Annotated[Path, typer.Argument(help="sacct --parsable2 --allocations export", metavar="FILE")],
    nodes: Annotated[
        int | None, typer.Option(help="Fleet size (default: the fewest nodes that held Slurm's peak)")
    ] = None,
    gpus_per_node: Annotated[int, typer.Option(help="GPUs per node")] = 8,
    gpu_type: Annotated[str, typer.Option(help="GPU type of the fleet and every run")] = "H100-80GB",
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout")] = None,
) -> None:
    """Turn a Slurm accounting export into a scenario: each GPU job a run, its account the owner."""
    if gpus_per_node <= 0 or (nodes is not None and nodes <= 0):
        raise BadInput("--nodes/--gpus-per-node", "must be positive")
    try:
        text_value = export.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput("FILE", f"cannot read {export}: {exc}") from None
    imported = sacct.read_sacct(text_value, str(export))
    name = f"sacct-{sacct.label(export.stem) or 'import'}"
    document = sacct.scenario_from(imported, name, gpu_type, gpus_per_node, nodes)
    _write(generate.dump(document), out)
    errors.print(f"{len(imported.jobs)} GPU jobs imported, {imported.skipped} skipped (no GPUs or never started)",
                 markup=False)  # fmt: skip


def _simulate_in_throwaway(
    parsed: Scenario, verbose: bool, keep: bool, collector: Collector | None = None
) -> tuple[SimResult, str | None]:
    base_url, _embedded = resolve_database_url(context.options().db)
    name = f"jobtree_sim_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        url = fresh_database(base_url, name)
    except LedgerError as exc:
        raise CommandError(f"the simulation's ledger: {exc}") from exc
    ok = False
    try:
        migrate(url)
        ledger = Ledger.from_url(url)
        try:
            with _progress(verbose) as report:
                watchers = [collector.watch] if collector is not None else []
                result = simulate(parsed, ledger, report, watchers=watchers, tables=collector is None)
        finally:
            ledger.dispose()
        ok = True
    finally:
        if not (ok and keep):
            drop_database(base_url, name)
    return result, url if keep else None


@contextmanager
def _progress(verbose: bool) -> Iterator[Any]:
    """Per-step lines with --verbose; a progress bar when stderr is a terminal; else silence."""
    if verbose:
        yield _line
        return
    if not errors.is_terminal or context.options().output != "table":
        yield None
        return
    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=errors, transient=True) as bar:
        task = bar.add_task("", total=None)

        def report(chapter: Chapter, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=chapter.describe())

        yield report


def _line(chapter: Chapter, done: int, total: int) -> None:
    when = _offset(chapter.step.at if chapter.step else None)
    errors.print(
        f"[{done}/{total}] +{when}: {chapter.describe()} ({chapter.last - chapter.after} events)", markup=False
    )


# ---------------------------------------------------------------- the story


def render_story(result: SimResult) -> None:
    scenario = result.scenario
    console.print(
        f"[bold]Scenario {scenario.name}[/bold] — starts {short_time(_iso(scenario))}, "
        f"{len(scenario.steps)} steps, ends at +{_offset(scenario.end - scenario.start)}"
    )
    events = {e["position"]: e for e in result.timeline}
    for chapter in result.chapters:
        label = f"step {chapter.step.index}" if chapter.step else ("then" if chapter.what else "start")
        when = _offset(chapter.at - scenario.start)
        console.print(f"\n[bold]+{when:<8}[/bold] [cyan]{label}: {chapter.describe()}[/cyan]")
        for position in range(chapter.after + 1, chapter.last + 1):
            event = events[position]
            if event["type"] not in QUIET_TYPES:
                console.print(f"  {event['type']:<22} {describe_event(event)}", markup=False)
    console.print()
    table(result.runs, RUN_COLUMNS, title="Runs at the end", empty="No runs.")
    console.print()
    table(result.leases, LEASE_COLUMNS, title="Leases", empty="No leases.")
    console.print()
    table(result.reservations, RESERVATION_COLUMNS, title="Reservations", empty="No reservations.")


def describe_event(event: dict[str, Any]) -> str:
    """One line about an event, for people (the JSON timeline carries the full data)."""
    data = event["data"]
    try:
        return _describe(event["type"], data)
    except (KeyError, TypeError, AttributeError):  # a payload shape this story does not know yet
        return _generic(data)


def _generic(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, dict | list)) or "-"


def _describe(kind: str, data: dict[str, Any]) -> str:
    simple = _SIMPLE.get(kind)
    if simple is not None:
        return simple.format(**data)
    if kind == "LeaseStarted":
        return (
            f"{data['lease_id']} {data['run']} group {data['group']} {data['role']} on {data['node']} "
            f"GPUs {data['slots']}, paid by {data['envelope'] or 'nobody'} ({data['payer_class']}), {data['reason']}"
        )
    if kind == "LeaseEnded":
        return f"{data['lease_id']} ended: {data['reason']}" + (f" (seed {data['seed']})" if data.get("seed") else "")
    if kind == "RunSubmitted":
        resources = data["spec"]["resources"]
        return f"{data['run']}: {resources['totalGPUs']} x {resources['gpuType']} for {data['spec']['owner']}"
    if kind == "BudgetApplied":
        envelopes = ", ".join(f"{e['name']} {e['concurrency']} {e['gpuType']}" for e in data["spec"]["envelopes"])
        return f"{data['owner']}: {envelopes or 'no envelopes'}"
    if kind == "PolicyChanged":
        spec = data["spec"]
        settings = ", ".join(f"{k} {v}" for k, v in spec.items() if not isinstance(v, dict | list))
        return f"admins {', '.join(spec.get('admins', [])) or '-'}; {settings}"
    if kind == "NodeRegistered":
        where = f"{data['labels'].get('cluster')}/{data['labels'].get('fabricDomain')}"
        return f"{data['name']}: {data['gpus']} x {data['gpu_type']} in {where}"
    return _generic(data)


_SIMPLE = {
    "RunAdmitted": "{run} admitted at {width} GPUs",
    "RunDeferred": "{run} waits: {message}",
    "RunFinished": "{run} {phase} ({reason})",
    "RunShrinkRequested": "{run} asked to shrink by {by} GPUs",
    "RunCancelRequested": "{run} cancel requested",
    "RunCompleted": "{run} workload finished",
    "NodeFailed": "{name} failed ({reason})",
    "NodeRecovered": "{name} recovered",
    "NodeCordoned": "{name} cordoned ({reason})",
    "NodeUncordoned": "{name} uncordoned",
}


def _iso(scenario: Scenario) -> str:
    return scenario.start.isoformat().replace("+00:00", "Z")


def _offset(delta: timedelta | None) -> str:
    """``1h30m``-style offset from spec.start (``0s`` for the setup)."""
    return format_duration(delta or timedelta(0))
