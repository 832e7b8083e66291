"""`jobtree` and `kubectl-runs`: the same typer app.

Global options (`--db`, `-o`, `--as`, `--now`, `-n`) may stand anywhere on the
command line, kubectl-style; they are lifted out before typer parses the rest.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import typer

from cli import context
from cli.commands import audit, budgets, db, demo, metrics, nodes, report, runs, sim, up, workers
from cli.commands import plan as plan_cmd
from cli.errors import CommandError
from cli.render import errors
from ledger.errors import DATABASE_ERRORS, one_line

app = typer.Typer(
    name="jobtree",
    help="Jobtree: GPU runs, budgets, leases and reservations on a shared fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs.register(app)
app.command("plan")(plan_cmd.plan)
app.add_typer(budgets.app, name="budgets")
app.add_typer(nodes.app, name="nodes")
app.add_typer(db.app, name="db")
app.add_typer(workers.app, name="workers")
app.add_typer(sim.app, name="sim")
app.command("demo")(demo.demo)
app.add_typer(audit.app, name="audit")
app.command("report")(report.report)
app.command("metrics")(metrics.metrics_cmd)
app.command("up")(up.up)


@functools.cache
def click_command() -> Any:
    """The click command tree, built once per process (building it costs ~50 ms per invocation)."""
    return typer.main.get_command(app)


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point. Exits 0, 1 (failure) or 2 (bad input / usage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name if argv is None else "jobtree"
    if prog == "kubectl-runs":
        prog = "kubectl runs"
    try:
        context.GLOBALS = context.split_globals(args)
        # standalone mode: typer prints usage errors itself and exits 2
        click_command().main(args=context.GLOBALS.rest, prog_name=prog)
    except CommandError as exc:
        errors.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except DATABASE_ERRORS as exc:  # undecodable rows, timeouts, a lost race: one line, exit 1
        errors.print(f"error: {one_line(exc)}", markup=False)
        sys.exit(1)
    finally:
        context.close()


if __name__ == "__main__":
    run()
