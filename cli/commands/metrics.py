"""`jobtree metrics [--serve PORT]`: Prometheus metrics computed from the ledger."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli.context import open_app
from cli.errors import BadInput
from cli.render import errors
from ledger import metrics


def metrics_cmd(
    serve: Annotated[
        int | None, typer.Option("--serve", metavar="PORT", help="Serve /metrics on 127.0.0.1:PORT until Ctrl-C")
    ] = None,
) -> None:
    """Print the Prometheus exposition text (admission latency, queue, reservations, GPUs, events)."""
    service = open_app()
    service.sync()
    if serve is None:
        print(metrics.exposition(service.pg.engine, service.now), end="")
        return
    if not 0 < serve < 65536:
        raise BadInput("--serve", f"must be a TCP port in 1..65535 (got {serve})")
    try:
        server = metrics.serve(service.pg.engine, serve)
    except OSError as exc:
        raise BadInput("--serve", f"cannot listen on 127.0.0.1:{serve}: {exc.strerror}") from None
    errors.print(f"serving http://127.0.0.1:{serve}/metrics (Ctrl-C to stop)", markup=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
