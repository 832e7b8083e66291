"""Node commands: apply, list, fail, recover, cordon, uncordon."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import context, slotmap
from cli.commands.runs import FileOption, read_manifests
from cli.context import open_app
from cli.render import NODE_COLUMNS, console, emit_data, table

app = typer.Typer(help="The GPU node inventory.", no_args_is_help=True)
NodeArg = Annotated[str, typer.Argument(help="Node name", metavar="NODE")]


@app.command("apply")
def apply(file: FileOption) -> None:
    """Add or update nodes from a Cluster manifest (admins only)."""
    manifests = read_manifests(file)
    service = open_app()
    applied = service.apply(manifests, allowed=("Cluster",))
    if not emit_data([a.as_row() for a in applied], context.options().output):
        registered = sum(a.action == "registered" for a in applied)
        unchanged = len(applied) - registered
        console.print(f"{registered} node(s) registered" + (f", {unchanged} unchanged" if unchanged else ""))


@app.command("list")
def list_nodes(
    show_map: Annotated[bool, typer.Option("--map", help="Map each domain's GPU slots by run")] = False,
) -> None:
    """Every node with its location, GPUs used and free (--map: one character per GPU slot)."""
    service = open_app()
    rows = service.nodes()
    if show_map:
        slotmap.show(rows, service.pg, context.options().output)
        return
    if not emit_data(rows, context.options().output):
        table(rows, NODE_COLUMNS, empty="No nodes. Apply a Cluster manifest: jobtree nodes apply -f cluster.yaml")


def _node_action(action: str, node: str) -> None:
    row = open_app().node_action(node, action)
    if not emit_data(row, context.options().output):
        table([row], NODE_COLUMNS)


@app.command("fail")
def fail(node: NodeArg) -> None:
    """Report a node as failed (admins only)."""
    _node_action("fail", node)


@app.command("recover")
def recover(node: NodeArg) -> None:
    """Return a failed node to service (admins only)."""
    _node_action("recover", node)


@app.command("cordon")
def cordon(node: NodeArg) -> None:
    """Keep new work off a node (admins only)."""
    _node_action("cordon", node)


@app.command("uncordon")
def uncordon(node: NodeArg) -> None:
    """Allow new work on a node again (admins only)."""
    _node_action("uncordon", node)
