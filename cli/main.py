"""`jobtree` and `kubectl-runs`: the same typer app.

Global options (`--db`, `-o`, `--as`, `--now`, `-n`) may stand anywhere on the
command line, kubectl-style; they are lifted out before typer parses the rest.

Commands are loaded lazily (``LazyGroup``): the root knows each command's name,
module and one-line help, and imports a command's module only when that command
runs, so `jobtree --help` does not import SQLAlchemy, pydantic, Kubernetes or
matplotlib. tests/unit/test_cli_lazy.py keeps the one-line helps equal to the
commands' own.
"""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli import context


@dataclass(frozen=True, slots=True)
class Entry:
    module: str
    attr: str
    group: bool  # a typer sub-app (``budgets``, ``nodes`` ...) rather than one function
    help: str


def _cmd(module: str, attr: str, help_: str) -> Entry:
    return Entry(f"cli.commands.{module}", attr, False, help_)


def _grp(module: str, help_: str) -> Entry:
    return Entry(f"cli.commands.{module}", "app", True, help_)


COMMANDS: dict[str, Entry] = {
    "submit": _cmd(
        "runs", "submit",
        "Submit Run manifests (Budget, Cluster and Policy documents are applied too, admins only).",
    ),
    "get": _cmd("runs", "get", "List runs (`get runs`)."),
    "queue": _cmd(
        "runs", "queue",
        "Every waiting run in FIFO order: position, phase, ETA, confidence and what is short (`squeue --start`).",
    ),
    "watch": _cmd(
        "runs", "watch",
        "Follow a run until it settles (Running at its desired width, or finished) or Ctrl-C.",
    ),
    "explain": _cmd("explain", "explain", "Why the run is where it is: width, funding split, leases and its history."),
    "describe": _cmd("explain", "explain", "Why the run is where it is (the same as `explain`, for kubectl hands)."),
    "leases": _cmd("runs", "leases", "Who paid for each lease of a run (or of every run of an owner)."),
    "shrink": _cmd("runs", "shrink", "Lower a malleable run's desired width and end its highest groups now."),
    "cancel": _cmd("runs", "cancel", "Cancel runs: every lease ends (Cancelled)."),
    "delete": _cmd(
        "runs", "cancel", "Cancel runs (the same as `cancel`, for kubectl hands): every lease ends (Cancelled).",
    ),
    "complete": _cmd("runs", "cancel", "Mark runs' workloads finished: every lease ends (Completed)."),
    "plan": _cmd(
        "plan", "plan",
        "The run's reservation: earliestStart, deficit, conflict set, remedies and kill odds.",
    ),
    "budgets": _grp("budgets", "Team budgets: envelopes of GPU concurrency and GPU-hours."),
    "nodes": _grp("nodes", "The GPU node inventory."),
    "clock": _grp("clock", "The ledger's clock: show it, or move it ahead (admins, on a wall-clock ledger)."),
    "audit": _grp("audit", "Accounting and audit: GPU-hours, tamper and determinism checks, run history."),
    "report": _cmd(
        "report", "report",
        "Draw GPUs in use per fabric domain over time (by class) and the reservation timeline.",
    ),
    "metrics": _cmd(
        "metrics", "metrics_cmd",
        "Print the Prometheus exposition text (admission latency, queue, reservations, GPUs, events).",
    ),
    "sim": _grp("sim", "What-if: run a scenario through the real planner on a virtual clock."),
    "up": _cmd(
        "up", "up",
        "Run the planner service and the simulated-cluster binder until Ctrl-C (one leader per database).",
    ),
    "down": _cmd("db", "stop", "Stop the embedded planner service and database (same as `db stop`)."),
    "workers": _grp("workers", "Run the planner, intake and binder services (a cluster install)."),
    "db": _grp("db", "The ledger's database."),
    "events": _grp("events", "The event stream: what the relay publishes to Kafka."),
    "demo": _cmd("demo", "demo", "Run the researcher guide end to end, each chapter on a throw-away ledger."),
}  # fmt: skip


#: Commands that are another command under a new name: their help is the table's.
ALIASES = ("down", "describe", "delete", "complete")


def load(name: str) -> Any:
    """The click command for ``name`` (importing its module now)."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(entry.module), entry.attr)
    if entry.group:
        return _with_globals(typer.main.get_command(target))
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(name, help=entry.help if name in ALIASES else None)(target)
    return _with_globals(typer.main.get_command(single))


def _with_globals(command: Any) -> Any:
    """Every command's --help ends with the global options (and so does every subcommand's)."""
    command.epilog = GLOBAL_HELP
    for sub in getattr(command, "commands", {}).values():
        _with_globals(sub)
    return command


class LazyGroup(TyperGroup):
    """The root command group: lists every command, imports only the one that runs."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            self.commands[cmd_name] = load(cmd_name)
        return self.commands[cmd_name]

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, entry.help) for name, entry in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


#: Shown in `jobtree --help` and in every command's help (``_with_globals``).
GLOBAL_HELP = (
    "Global options, anywhere on the line: -n, --namespace NAMESPACE; "
    "-o, --output table|wide|name|json|yaml|csv; --db URL (default: the embedded ledger); --as USER (admins, "
    "and the intake); --now TIME|+DURATION (on a write: moves the ledger's clock; on a read: a what-if that writes "
    "nothing); --kubeconfig FILE, --context NAME (talk to a cluster); --db-timeout SECONDS. "
    "A bare RUN name resolves in -n, else $JOBTREE_NAMESPACE or the kubeconfig context's namespace, else to the "
    "one run of that name in any namespace."
)

app = typer.Typer(
    name="jobtree",
    cls=LazyGroup,
    help="Jobtree: GPU runs, budgets, leases and reservations on a shared fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    epilog=GLOBAL_HELP,
)


def _version(value: bool) -> None:
    if value:
        print(f"jobtree {version()}")
        raise typer.Exit()


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("jobtree")
    except PackageNotFoundError:
        return "0.1.0 (not installed)"


@app.callback()
def _root(
    _show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Jobtree: GPU runs, budgets, leases and reservations on a shared fleet."""


@functools.cache
def click_command() -> Any:
    """The root click command, built once per process (commands inside it load lazily)."""
    return typer.main.get_command(app)


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point. Exits 0, 1 (failure) or 2 (bad input / usage)."""
    from cli.errors import exit_code
    from service.errors import ServiceError

    args = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name if argv is None else "jobtree"
    if prog == "kubectl-runs":
        prog = "kubectl runs"
    invocation: context.Invocation | None = None
    try:
        with context.invoked(context.split_globals(args)) as invocation:
            # standalone mode: typer prints usage errors itself and exits 2
            click_command().main(args=invocation.options.rest, prog_name=prog)
    except ServiceError as exc:
        from cli.render import errors

        errors.print(as_invoked(f"error: {exc}", prog), markup=False)
        sys.exit(exit_code(exc))
    except Exception as exc:
        _database_error(exc)
    finally:
        if invocation is not None:
            _finish(invocation, prog)


def _finish(invocation: context.Invocation, prog: str) -> None:
    """Print the service's notices on stderr, then dispose of the invocation's ledger (its one engine)."""
    notices = invocation.notices()
    if notices:
        from cli.render import errors

        for notice in notices:
            errors.print(as_invoked(f"note: {notice}", prog), markup=False)
    invocation.close()


def as_invoked(message: str, prog: str) -> str:
    """Hints name the command as the user typed it: `kubectl runs nodes list` when run as kubectl-runs."""
    return message.replace("`jobtree ", f"`{prog} ")


def _database_error(exc: Exception) -> None:
    """Undecodable rows, timeouts, a lost race, a dead server: one line and exit 1; anything else re-raised."""
    if "ledger.errors" not in sys.modules and "psycopg" not in sys.modules:  # no database was touched
        raise exc
    from cli.render import errors
    from ledger.errors import DATABASE_ERRORS, one_line

    if not isinstance(exc, DATABASE_ERRORS):
        raise exc
    errors.print(f"error: {one_line(exc)}", markup=False)
    sys.exit(1)


if __name__ == "__main__":
    run()
