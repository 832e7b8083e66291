"""`jobtree events tail`: the event stream as an outside consumer sees it (docs/events.md).

With a broker configured (``--kafka`` / ``$JOBTREE_KAFKA_BOOTSTRAP``) it reads the topic
(de-duplicated by position); without one it reads the ledger itself, in the same shape.
``-o json`` prints one JSON object per line (JSON Lines), the topic's value format.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated

import typer

from cli import context
from cli.commands.stream_options import KafkaOption, TopicOption, bus_config
from cli.context import open_ledger
from cli.errors import BadInput
from cli.render import console
from ledger import relay_store
from ledger.events import event_types
from ledger.listen import Listener
from ledger.store import Ledger
from ledger.stream import BusConfig, StreamRecord

app = typer.Typer(help="The event stream: what the relay publishes to Kafka.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """The event stream: what the relay publishes to Kafka."""


def from_ledger(ledger: Ledger, after: int, follow: bool, seconds: float | None) -> Iterator[StreamRecord]:
    deadline = None if seconds is None else time.monotonic() + seconds
    with Listener(ledger) as listener:
        while True:
            records = relay_store.records_after(ledger, after)
            yield from records
            after = records[-1].position if records else after
            if records:
                continue
            if not follow or (deadline is not None and time.monotonic() >= deadline):
                return
            left = 1.0 if deadline is None else max(0.05, min(1.0, deadline - time.monotonic()))
            listener.wait(after, left)


def from_stream(
    config: BusConfig, after: int, follow: bool, seconds: float | None, idle: float
) -> Iterator[StreamRecord]:
    from ledger.bus import tail  # Kafka only when a broker is configured

    deadline = None if seconds is None else time.monotonic() + seconds
    for record in tail(config, after, idle=idle, follow=follow):
        yield record
        if deadline is not None and time.monotonic() >= deadline:
            return


def _run_ref(run: str) -> str:
    return run if "/" in run else f"{context.options().ns}/{run}"


def _summary(record: StreamRecord) -> str:
    data = record.data
    keys = ("run", "lease_id", "node", "reason", "phase", "owner", "name")
    return " ".join(f"{k}={data[k]}" for k in keys if k in data and data[k] not in (None, ""))


@app.command("tail")
def tail_cmd(
    types: Annotated[list[str] | None, typer.Option("--type", help="only this event type (repeatable)")] = None,
    run: Annotated[str | None, typer.Option("--run", help="only events of this run (NS/NAME or NAME)")] = None,
    start: Annotated[int, typer.Option("--from", min=0, help="events after this position")] = 0,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="keep waiting for new events")] = False,
    seconds: Annotated[float | None, typer.Option("--for", min=0.1, help="stop following after SECONDS")] = None,
    idle: Annotated[float, typer.Option("--idle", min=0.1, help="Kafka, --no-follow: stop after SECONDS quiet")] = 2.0,
    kafka: KafkaOption = None,
    topic: TopicOption = None,
) -> None:
    """Print committed events in position order (from Kafka when configured, else from the ledger)."""
    known = event_types()
    for name in types or []:
        if name not in known:
            raise BadInput("--type", f"unknown event type {name!r} (known: {', '.join(sorted(known))})")
    config = bus_config(kafka, topic)
    wanted_run = _run_ref(run) if run else None
    if config is None:
        records = from_ledger(open_ledger(), start, follow, seconds)
    else:
        records = from_stream(config, start, follow, seconds, idle)
    output = context.options().output
    for record in records:
        if types and record.type not in types:
            continue
        if wanted_run and record.run != wanted_run:
            continue
        if output == "json":
            print(json.dumps(record.row(), sort_keys=True), flush=True)
        else:
            stamp = record.occurred_at[:19] + "Z"
            line = f"{record.position:>8}  {stamp}  {record.type:<22} {record.key:<28} {_summary(record)}"
            console.print(line.rstrip(), markup=False)
