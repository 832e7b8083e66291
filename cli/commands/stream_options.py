"""The broker options every worker and `events tail` share, and the sim binder without Kafka.

Nothing here imports Kafka (``ledger.bus``) or Kubernetes: a planner or a sim binder
worker starts without loading either; ``cli.commands.stream_workers`` does, when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from binder.sim import SimulatedCluster
from binder.sim_journal import JournalCluster
from binder.worker import Backend, bind_pending
from cli.commands.up import stop_on_signals
from cli.errors import BadInput, CommandError
from cli.render import console, errors
from ledger.errors import LedgerError
from ledger.listen import Listener
from ledger.store import Ledger
from ledger.stream import BusConfig
from service.app import JobtreeApp

KafkaOption = Annotated[
    str | None,
    typer.Option("--kafka", envvar="JOBTREE_KAFKA_BOOTSTRAP", help="Kafka bootstrap HOST:PORT (none: no stream)"),
]
TopicOption = Annotated[str | None, typer.Option("--topic", envvar="JOBTREE_KAFKA_TOPIC", help="topic name")]
Wall = Callable[[], datetime]


def bus_config(kafka: str | None, topic: str | None) -> BusConfig | None:
    config = BusConfig.resolve(kafka, topic)
    if config is not None and (":" not in config.bootstrap or not config.bootstrap.rsplit(":", 1)[1].isdigit()):
        raise BadInput("--kafka", f"must be HOST:PORT (got {config.bootstrap!r})")
    return config


def forever(step: Callable[[float], str], once: bool, interval: float, retry: tuple[type[Exception], ...] = ()) -> None:
    """Run ``step(wait)`` until a stop signal; print a line when it differs from the previous one.

    A database error (or one of ``retry``) is printed and retried after ``interval``; with
    ``once`` it is exit 1.
    """
    previous = ""
    caught: tuple[type[Exception], ...] = (LedgerError, *retry)
    with stop_on_signals() as stop:
        while not stop.requested:
            try:
                line = step(interval)
            except caught as exc:
                if once:
                    raise CommandError(str(exc)) from None
                errors.print(f"retrying: {exc}", markup=False)
                Listener.sleep(interval, lambda: stop.requested)
                continue
            if line != previous or once:
                console.print(line, markup=False)
                previous = line
            if once:
                return


def sim_backend(sim_dir: Path | None) -> Backend:
    return JournalCluster(sim_dir) if sim_dir is not None else SimulatedCluster()


def clock_for(ledger: Ledger, wall: Wall) -> Wall:
    return lambda: JobtreeApp.resolve_now(ledger, None, wall())


def run_sim_binder(
    ledger: Ledger, backend: Backend, once: bool, interval: float, wall: Wall, cluster: str = ""
) -> None:
    """Without Kafka: tail the ledger (bind every open, unbound lease, of ``cluster``'s nodes if set, each pass)."""
    now = clock_for(ledger, wall)
    listener = Listener(ledger)

    def step(wait: float) -> str:
        bound = bind_pending(ledger, backend, now(), cluster)
        if not once:
            listener.wait(ledger.last_position(), wait)
        return f"binder: {bound} lease(s) bound"

    try:
        forever(step, once, interval)
    finally:
        listener.close()
