"""`jobtree demo`: the researcher guide, come alive, on throw-away ledgers.

Each chapter gets a fresh ledger, runs the guide's own commands through the real
CLI (real ledger, planner and simulated binder) and then checks what the guide
promises, printing a ✓ or ✗ for each. The demo exits non-zero if any promise is
broken. Chapters move the clock with ``--now +DURATION`` on a write, or ``clock advance``,
where the story needs time. Each chapter's ledger has its own planner service (a thread).
"""

from __future__ import annotations

import io
import json
import shlex
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.rule import Rule

from cli import context
from cli.background import planner_running
from cli.errors import NotSettled
from cli.render import console
from ledger.databases import drop_database, fresh_database
from ledger.embedded import migrate, resolve_database_url
from service.errors import ServiceError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
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
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            self._invoke(command, "json")
        return json.loads(buffer.getvalue())

    def _invoke(self, command: str, output: str) -> None:
        args = [*shlex.split(command), "--db", self.url, "-o", output]
        with context.invoked(context.split_globals(args)) as invocation:
            self._run(invocation)

    def _run(self, invocation: context.Invocation) -> None:
        from cli.main import app

        try:
            typer.main.get_command(app).main(args=invocation.options.rest, prog_name="jobtree", standalone_mode=False)
        except NotSettled as exc:  # `watch --timeout`: a malleable run below its maximum keeps growing
            console.print(f"(still changing: {exc})", markup=False)
        except ServiceError as exc:
            console.print(f"error: {exc}", markup=False)
        finally:
            invocation.close()

    def why(self, text_value: str) -> None:
        """One line on why the next step happens (or what it shows)."""
        console.print(f"[dim]# {text_value}[/dim]")

    def promise(self, text_value: str, holds: bool) -> None:
        mark = "[green]✓[/green]" if holds else "[red]✗[/red]"
        console.print(f"  {mark} {text_value}")
        if not holds:
            self.broken.append(text_value)

    def runs(self, namespace: str = "") -> dict[str, Any]:
        scope = f"-n {namespace}" if namespace else "-A"
        return {f"{r['namespace']}/{r['name']}": r for r in self.data(f"get runs {scope}")}


def ex(path: str) -> str:
    """An example file as the reader would type it (relative to the repository)."""
    return str((EXAMPLES / path).relative_to(Path.cwd())) if _under_cwd() else str(EXAMPLES / path)


def _under_cwd() -> bool:
    return EXAMPLES.is_relative_to(Path.cwd())


def chapter_quick_start(demo: Demo) -> None:
    console.print(Rule("Guide §2 — Quick start (8-GPU experiment)"))
    demo.show(f"nodes apply -f {ex('cluster.yaml')}")
    demo.show(f"budgets apply -f {ex('budget-rai-sys.yaml')}")
    demo.why("8 GPUs fit one NVLink island and the team's envelope has 64 free: it starts at once")
    demo.show(f"submit -f {ex('resnet-small.yaml')}")
    demo.why("no -n: the manifest's namespace is rai-sys, and resnet-small is the only run of that name")
    demo.show("watch resnet-small --timeout 5")
    demo.show("leases resnet-small")
    run = demo.runs("rai-sys").get("rai-sys/resnet-small", {})
    leases = demo.data("leases resnet-small")
    nodes = {n["name"]: n for n in demo.data("nodes list")}
    domains = {
        (nodes[lease["node"]]["labels"]["cluster"], nodes[lease["node"]]["labels"]["fabricDomain"]) for lease in leases
    }
    demo.promise("resnet-small was admitted at once (Running)", run.get("phase") == "Running")
    demo.promise("all 8 GPUs are allocated", sum(lease["gpus"] for lease in leases) == 8)
    demo.promise(f"all 8 GPUs sit in one NVLink island {sorted(domains)}", len(domains) == 1)
    demo.promise(
        "paid by the team's envelope org:ai:rai:sys/west-h100, class owned",
        bool(leases)
        and all(lease["envelope"] == "org:ai:rai:sys/west-h100" and lease["class"] == "owned" for lease in leases),
    )
    demo.promise("no reservation: nothing waits", run.get("message", "") == "")

    console.print(Rule("When a run does not fit now"))
    demo.why("64 GPUs in one group need one 64-GPU island; the largest has 48, so it can never start as asked")
    demo.show(f"submit -f {ex('wide-64.yaml')}")
    demo.why("64 more GPUs exceed the envelope's 64 while resnet-small holds 8: it waits for funding")
    demo.show(f"submit -f {ex('over-budget.yaml')}")
    demo.show("get runs -n rai-sys -o wide")
    demo.show("queue -A")
    runs = demo.runs("rai-sys")
    usage = demo.data("budgets usage --owner org:ai:rai:sys")
    demo.promise(
        "wide-64 does not start and says the island is too small",
        runs["rai-sys/wide-64"]["phase"] != "Running" and "domain" in runs["rai-sys/wide-64"]["message"],
    )
    demo.promise(
        "over-budget does not start and says the budget is short",
        runs["rai-sys/over-budget"]["phase"] != "Running" and "fund" in runs["rai-sys/over-budget"]["message"],
    )
    demo.promise(
        "nothing is over-allocated: the envelope holds 8 of 64",
        usage[0]["owned"] == 8 and usage[0]["headroom"] == 56,
    )
    demo.why("finishing resnet-small returns its 8 GPUs to the envelope, so the waiting run is funded")
    demo.show("complete resnet-small")
    demo.show("get runs -n rai-sys")
    runs = demo.runs("rai-sys")
    demo.promise(
        "once resnet-small completes, over-budget is funded and starts",
        runs["rai-sys/over-budget"]["phase"] == "Running",
    )


def chapter_scaling_up(demo: Demo) -> None:
    console.print(Rule("Guide §3 — Scaling up (128 GPUs in groups of 32, elastic 96..160, one spare per group)"))
    demo.show(f"nodes apply -f {ex('elastic/cluster-5x5.yaml')}")
    demo.show(f"budgets apply -f {ex('elastic/budgets.yaml')}")
    demo.show(f"submit -f {ex('elastic/islands-ab.yaml')}")
    demo.why("two islands are busy: 3 groups of 32 (+1 spare node each) fit now, so it starts at its minimum 96")
    demo.show(f"submit -f {ex('trainer-128.yaml')}")
    demo.show("watch trainer-128 --timeout 0")
    started = demo.runs()["rai-sys/trainer-128"]["width"]["allocated"]
    demo.promise("with two islands busy, trainer-128 starts at 96 (its minimum)", started == 96)
    spares = [lease for lease in demo.data("leases trainer-128") if lease["role"] == "Spare"]
    demo.promise("each of its 3 groups holds one spare node", len(spares) == 3)
    demo.why("when an island frees, a malleable run grows one step (32 GPUs) at a time")
    demo.show("complete vision/island-a --now +30m")
    grown = demo.runs()["rai-sys/trainer-128"]["width"]["allocated"]
    demo.promise("when an island frees, it grows by one step to 128 (Grow)", grown == 128)
    demo.show("complete vision/island-b --now +30m")
    demo.show("watch trainer-128 --timeout 0")
    full = demo.runs()["rai-sys/trainer-128"]["width"]["allocated"]
    demo.promise("and then to its desired 160", full == 160)
    demo.why("a voluntary shrink gives a group back now, for someone else to use")
    demo.show("shrink trainer-128 --by 32")
    after = demo.runs()["rai-sys/trainer-128"]["width"]
    demo.promise(
        "a voluntary shrink ends the highest group at once: 128 of desired 128",
        after["allocated"] == 128 and after["desired"] == 128,
    )


def chapter_reservations(demo: Demo) -> None:
    console.print(Rule("Guide §4 — Reservations when the cluster is busy"))
    demo.show(f"nodes apply -f {ex('reservations/cluster-b.yaml')}")
    demo.show(f"budgets apply -f {ex('reservations/budgets.yaml')}")
    demo.show(f"submit -f {ex('reservations/busy.yaml')}")
    demo.why("the cluster is full: the trainer gets a reservation 15 minutes out (the notice running runs get)")
    demo.show(f"submit -f {ex('reservations/trainer.yaml')} --now +10m")
    demo.show("plan trainer")
    reservation = demo.data("plan trainer")
    actions = [r["action"] for r in reservation["remedies"]]
    demo.promise(
        "the trainer gets a reservation: deficit 32 GPUs in c1/B, drop spares then shrink, no lottery",
        reservation["deficit"] == {"c1/B": 32}
        and actions == ["DropSpare", "Shrink"]
        and reservation["confidence"] == "firm",
    )
    demo.promise(
        "its conflict set names both running runs",
        sorted(reservation["conflictSet"]) == ["mm/mm1", "rai-demo/research-demo"],
    )
    demo.show("get runs -A")
    warned = demo.runs()["mm/mm1"]["message"]
    demo.promise("mm1 is warned in advance, with its shrink amount", "conflict set" in warned and "16" in warned)
    demo.why("at earliestStart the listed remedies free the deficit: drop spares, then shrink")
    demo.show("clock advance +20m")
    demo.show("get runs -A")
    runs = demo.runs()
    demo.promise("at earliestStart the trainer starts", runs["rai-sys/trainer"]["phase"] == "Running")
    demo.promise(
        "exactly the listed cuts happened: mm1 shrank to 16, research-demo kept running",
        runs["mm/mm1"]["width"]["allocated"] == 16 and runs["rai-demo/research-demo"]["phase"] == "Running",
    )
    demo.show("leases mm1")
    cut = [lease for lease in demo.data("leases mm1") if lease["endReason"] in ("Shrink", "DropSpare")]
    demo.promise("every lease the activation ended says why (DropSpare, Shrink)", len(cut) >= 2)


def chapter_borrowing(demo: Demo) -> None:
    console.print(Rule("Guide §5 — Borrowing GPUs to finish early"))
    demo.show(f"nodes apply -f {ex('cluster.yaml')}")
    demo.show(f"budgets apply -f {ex('funding/budgets-borrow.yaml')}")
    demo.why("the team's envelope covers 96 of 128; vision lends the rest, as the run's sponsors allow")
    demo.show(f"submit -f {ex('funding/trainer-borrow.yaml')}")
    demo.show("budgets usage")
    run = demo.runs()["rai-sys/trainer-borrow"]
    demo.promise(
        "trainer-borrow runs with 96 owned + 32 borrowed from vision",
        run["phase"] == "Running" and run["funding"]["owned"] == 96 and run["funding"]["borrowed"] == 32,
    )
    lender = {u["envelope"]: u for u in demo.data("budgets usage")}.get("org:ai:mm:vision/west-h100", {})
    demo.promise("the lender's envelope shows the 32 GPUs it lent", lender.get("lent") == 32)
    demo.show("cancel trainer-borrow")
    demo.why("maxBorrowGPUs 8 caps the loan below the 32 it needs: it waits, and says so")
    demo.show(f"submit -f {ex('funding/trainer-borrow-8.yaml')}")
    capped = demo.runs()["rai-sys/trainer-borrow-8"]
    demo.promise(
        "with maxBorrowGPUs 8 the run waits, and says the borrow limit is short",
        capped["phase"] != "Running" and "borrow" in capped["message"],
    )


def chapter_spares(demo: Demo) -> None:
    console.print(Rule("Guide §6 — Productive spares and opportunistic fill"))
    demo.show(f"nodes apply -f {ex('elastic/cluster-spares.yaml')}")
    demo.show(f"budgets apply -f {ex('elastic/budgets.yaml')}")
    demo.show(f"submit -f {ex('elastic/trainer-32.yaml')}")
    demo.why("the spare node's GPUs are idle until a failure: short unfunded work may fill them")
    demo.show(f"submit -f {ex('elastic/opportunistic-2.yaml')}")
    demo.show("leases --owner org:ai:scratch")
    fill = [lease for lease in demo.data("leases --owner org:ai:scratch") if lease["end"] is None]
    demo.promise("sweep-2 runs unfunded on the spare node's GPUs (Fill)", [f["role"] for f in fill] == ["Fill"])
    leases = demo.data("leases trainer-32")
    victim = next(lease for lease in leases if lease["role"] == "Active" and lease["end"] is None)
    spare = next(lease for lease in leases if lease["role"] == "Spare" and lease["end"] is None)
    demo.why("a node fails: its ranks move onto the group's spare, and the fill there gives way")
    demo.show(f"nodes fail {victim['node']} --now +1h")
    demo.show("leases trainer-32")
    after = demo.data("leases trainer-32")
    swapped = [lease for lease in after if lease["reason"] == "Swap" and lease["end"] is None]
    demo.promise(
        f"the failed node's ranks resume on the spare {spare['node']}: same group, same payer",
        len(swapped) == 1
        and swapped[0]["node"] == spare["node"]
        and swapped[0]["group"] == victim["group"]
        and swapped[0]["envelope"] == victim["envelope"],
    )
    ended = {lease["id"]: lease for lease in demo.data("leases --owner org:ai:scratch")}
    demo.promise(
        "the opportunistic lease ended with ReclaimedBySpare",
        any(lease["endReason"] == "ReclaimedBySpare" for lease in ended.values()),
    )
    node = {n["name"]: n for n in demo.data("nodes list")}[victim["node"]]
    demo.promise(f"{victim['node']} is cordoned for repair", node["cordoned"] or node["failed"])


CHAPTERS: list[Callable[[Demo], None]] = [
    chapter_quick_start,
    chapter_scaling_up,
    chapter_reservations,
    chapter_borrowing,
    chapter_spares,
]


def demo(
    keep: Annotated[bool, typer.Option(help="Keep the last chapter's database afterwards")] = False,
) -> None:
    """Run the researcher guide end to end, each chapter on a throw-away ledger."""
    base_url, embedded = resolve_database_url(context.options().db)
    where = "the embedded PostgreSQL" if embedded else "your PostgreSQL"
    console.print(f"[bold]Jobtree demo[/bold] — each chapter on a throw-away ledger ({DEMO_DB}) on {where}")
    broken: list[str] = []
    try:
        for chapter in CHAPTERS:
            runner = Demo(fresh_database(base_url, DEMO_DB))
            migrate(runner.url)
            with planner_running(runner.url, simulated=False):  # the chapter's planner service
                chapter(runner)
            broken.extend(runner.broken)
    finally:
        if not keep:
            drop_database(base_url, DEMO_DB)
    console.print()
    if broken:
        console.print(f"[red]{len(broken)} promise(s) broken[/red]")
        raise typer.Exit(1)
    console.print("[green]Every promise of the guide's chapters held.[/green]")
