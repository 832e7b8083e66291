"""`jobtree report --png FILE`: GPUs in use per fabric domain over time, and reservations.

The picture is ``cli.plots``' (the one module that imports matplotlib), loaded only when this command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import context
from cli.context import open_app
from cli.errors import BadInput
from cli.render import console, emit_data
from ledger import accounting, queries


def report(
    png: Annotated[Path, typer.Option("--png", metavar="FILE", help="Write the picture to this PNG file")],
) -> None:
    """Draw GPUs in use per fabric domain over time (by class) and the reservation timeline."""
    if png.suffix.lower() != ".png":
        raise BadInput("--png", f"the file name must end in .png (got {png.name})")
    if not png.parent.is_dir():
        raise BadInput("--png", f"directory {png.parent} does not exist")
    service = open_app()
    service.sync()
    nodes = queries.list_nodes(service.pg.engine)
    leases = accounting.lease_hours(service.pg.engine, accounting.Period(), service.now)
    reservations = accounting.reservation_timeline(service.pg.engine)
    from cli.plots import draw

    domains = draw(png, nodes, leases, reservations, service.now)
    summary = {"file": str(png), "domains": domains, "leases": len(leases), "reservations": len(reservations)}
    if not emit_data(summary, context.options().output):
        console.print(f"wrote {png}: {domains} domain(s), {len(leases)} lease(s), {len(reservations)} reservation(s)")
