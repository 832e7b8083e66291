"""`jobtree demo`: the researcher guide, come alive, on a throw-away ledger.

Each chapter runs the guide's own commands through the real CLI (real ledger,
planner and simulated binder) and then checks what the guide promises, printing
a ✓ or ✗ for each promise. The demo exits non-zero if any promise is broken.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.rule import Rule

from cli import context
from cli.errors import CommandError
from cli.render import console
from ledger.databases import drop_database, fresh_database
from ledger.embedded import resolve_database_url

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_DB = "jobtree_demo"


@dataclass(slots=True)
class Demo:
    url: str
    broken: list[str] = field(default_factory=list)

    def show(self, command: str) -> None:
        """Print a command as the guide writes it, then run it through the CLI."""
        console.print(f"\n[bold cyan]$ kubectl runs {command}[/bold cyan]")
        self._invoke(command, "table")

    def data(self, command: str) -> Any:
        """Run a command with -o json and return what it printed, parsed."""
        import io
        import json
        from contextlib import redirect_stdout

        buffer = io.StringIO()
        with redirect_stdout(buffer):
            self._invoke(command, "json")
        return json.loads(buffer.getvalue())

    def _invoke(self, command: str, output: str) -> None:
        from cli.main import app

        args = [*shlex.split(command), "--db", self.url, "-o", output]
        context.GLOBALS = context.split_globals(args)
        try:
            typer.main.get_command(app).main(args=context.GLOBALS.rest, prog_name="jobtree", standalone_mode=False)
        except CommandError as exc:
            console.print(f"error: {exc}", markup=False)
        finally:
            context.close()

    def promise(self, text_value: str, holds: bool) -> None:
        mark = "[green]✓[/green]" if holds else "[red]✗[/red]"
        console.print(f"  {mark} {text_value}")
        if not holds:
            self.broken.append(text_value)


def chapter_setup(demo: Demo) -> None:
    console.print(Rule("Setup: an admin registers the fleet and the team's budget"))
    demo.show(f"nodes apply -f {EXAMPLES / 'cluster.yaml'}")
    demo.show(f"budgets apply -f {EXAMPLES / 'budget-rai-sys.yaml'}")
    demo.show("budgets list")


def chapter_quick_start(demo: Demo) -> None:
    console.print(Rule("Guide §2 — Quick start (8-GPU experiment)"))
    demo.show(f"submit -f {EXAMPLES / 'resnet-small.yaml'}")
    demo.show("watch resnet-small -n rai-sys --timeout 5")
    demo.show("leases resnet-small -n rai-sys")
    runs = {r["name"]: r for r in demo.data("get runs -n rai-sys")}
    leases = demo.data("leases resnet-small -n rai-sys")
    nodes = {n["name"]: n for n in demo.data("nodes list")}
    run = runs.get("resnet-small", {})
    domains = {
        (nodes[lease["node"]]["labels"]["cluster"], nodes[lease["node"]]["labels"]["fabricDomain"]) for lease in leases
    }
    demo.promise("resnet-small was admitted at once (Running)", run.get("phase") == "Running")
    demo.promise("all 8 GPUs are allocated", sum(lease["gpus"] for lease in leases) == 8)
    demo.promise(f"all 8 GPUs sit in one NVLink island {sorted(domains)}", len(domains) == 1)
    demo.promise(
        "paid by the team's envelope org:ai:rai:sys/west-h100, class owned",
        all(lease["envelope"] == "org:ai:rai:sys/west-h100" and lease["class"] == "owned" for lease in leases)
        and bool(leases),
    )
    demo.promise("no reservation: nothing waits", run.get("message", "") == "")


def chapter_when_it_does_not_fit(demo: Demo) -> None:
    console.print(Rule("When a run does not fit now"))
    demo.show(f"submit -f {EXAMPLES / 'wide-64.yaml'}")
    demo.show(f"submit -f {EXAMPLES / 'over-budget.yaml'}")
    demo.show("get runs -n rai-sys")
    runs = {r["name"]: r for r in demo.data("get runs -n rai-sys")}
    usage = demo.data("budgets usage --owner org:ai:rai:sys")
    demo.promise(
        "wide-64 stays Pending and says the island is too small",
        runs["wide-64"]["phase"] == "Pending" and "domain" in runs["wide-64"]["message"],
    )
    demo.promise(
        "over-budget stays Pending and says the budget is short",
        runs["over-budget"]["phase"] == "Pending" and "fund" in runs["over-budget"]["message"],
    )
    demo.promise(
        "nothing is over-allocated: the envelope holds 8 of 64", usage[0]["owned"] == 8 and usage[0]["headroom"] == 56
    )
    demo.show("complete resnet-small -n rai-sys")
    demo.show("get runs -n rai-sys")
    runs = {r["name"]: r for r in demo.data("get runs -n rai-sys")}
    demo.promise(
        "once resnet-small completes, over-budget is funded and starts", runs["over-budget"]["phase"] == "Running"
    )


CHAPTERS: list[Callable[[Demo], None]] = [chapter_setup, chapter_quick_start, chapter_when_it_does_not_fit]


def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo database afterwards")] = False,
) -> None:
    """Run the researcher guide end to end on a throw-away ledger."""
    base_url, embedded = resolve_database_url(context.GLOBALS.db)
    where = "the embedded PostgreSQL" if embedded else "your PostgreSQL"
    console.print(f"[bold]Jobtree demo[/bold] — a throw-away ledger ({DEMO_DB}) on {where}")
    url = fresh_database(base_url, DEMO_DB)
    runner = Demo(url)
    try:
        for chapter in CHAPTERS:
            chapter(runner)
    finally:
        if not keep:
            drop_database(base_url, DEMO_DB)
    console.print()
    if runner.broken:
        console.print(f"[red]{len(runner.broken)} promise(s) broken[/red]")
        raise typer.Exit(1)
    console.print("[green]Every promise of the guide's chapters held.[/green]")
