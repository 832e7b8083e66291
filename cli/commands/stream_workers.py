"""`jobtree workers relay` and `jobtree workers binder --kafka`: the Kafka side of a cluster install.

The relay copies committed events onto the topic (``ledger.relay``); binder workers
with ``--kafka`` form one consumer group over the lease facts (``binder.group``). Both
loop until SIGTERM/Ctrl-C; a broker or database error is printed and retried (with
``--once``: exit 1). See docs/workers.md and docs/events.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from binder.group import BinderGroup
from binder.sim import SimulatedCluster
from binder.sim_journal import JournalCluster
from binder.worker import Backend, bind_pending
from cli.commands.up import stop_on_signals
from cli.context import open_ledger
from cli.errors import BadInput, CommandError
from cli.render import console, errors
from ledger.bus import BusConfig, BusError
from ledger.errors import LedgerError
from ledger.listen import Listener
from ledger.relay import Relay
from ledger.store import Ledger
from service.app import JobtreeApp

log = logging.getLogger("jobtree.workers")
KafkaOption = Annotated[
    str | None,
    typer.Option("--kafka", envvar="JOBTREE_KAFKA_BOOTSTRAP", help="Kafka bootstrap HOST:PORT (none: no stream)"),
]
TopicOption = Annotated[str | None, typer.Option("--topic", envvar="JOBTREE_KAFKA_TOPIC", help="topic name")]


def bus_config(kafka: str | None, topic: str | None) -> BusConfig | None:
    config = BusConfig.resolve(kafka, topic)
    if config is not None and (":" not in config.bootstrap or not config.bootstrap.rsplit(":", 1)[1].isdigit()):
        raise BadInput("--kafka", f"must be HOST:PORT (got {config.bootstrap!r})")
    return config


def _forever(step: Callable[[float], str], once: bool, interval: float) -> None:
    """Run ``step(wait)`` until a stop signal; print lines that differ from the previous one."""
    previous = ""
    with stop_on_signals() as stop:
        while not stop.requested:
            try:
                line = step(interval)
            except (BusError, LedgerError) as exc:
                if once:
                    raise CommandError(str(exc)) from None
                errors.print(f"retrying: {exc}", markup=False)
                stop_wait(stop, interval)
                continue
            if line != previous or once:
                console.print(line, markup=False)
                previous = line
            if once:
                return


def stop_wait(stop: object, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not getattr(stop, "requested", False) and time.monotonic() < deadline:
        time.sleep(0.1)


def run_relay(ledger: Ledger, config: BusConfig, once: bool, interval: float, name: str | None) -> None:
    relay = Relay(ledger, config, name=name)
    listener = Listener(ledger)
    errors.print(f"jobtree relay: {relay.leadership.name} -> {config.bootstrap} topic {config.topic}", markup=False)

    def step(wait: float) -> str:
        done = relay.step()
        if not once:
            listener.wait(done.position, wait)
        return done.line()

    try:
        _forever(step, once, interval)
    finally:
        listener.close()
        relay.close()


def relay(
    kafka: KafkaOption = None,
    topic: TopicOption = None,
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="longest wait between passes")] = 1.0,
    name: Annotated[str | None, typer.Option("--name", help="this relay's name")] = None,
) -> None:
    """Publish committed events in position order to the Kafka topic (at-least-once, resumes where it stopped)."""
    config = bus_config(kafka, topic)
    if config is None:
        raise BadInput("--kafka", "the relay needs a broker: --kafka HOST:PORT or $JOBTREE_KAFKA_BOOTSTRAP")
    run_relay(open_ledger(), config, once, interval, name)


def sim_backend(sim_dir: Path | None) -> Backend:
    return JournalCluster(sim_dir) if sim_dir is not None else SimulatedCluster()


def clock_for(ledger: Ledger, wall: Callable[[], datetime]) -> Callable[[], datetime]:
    return lambda: JobtreeApp.resolve_now(ledger, None, wall())


def run_binder_group(
    ledger: Ledger,
    backend: Backend,
    config: BusConfig,
    group: str,
    cluster: str,
    once: bool,
    wall: Callable[[], datetime],
) -> None:
    worker = BinderGroup(ledger, backend, config, group, clock_for(ledger, wall), cluster=cluster)
    errors.print(f"jobtree binder: group {group} on {config.bootstrap} topic {config.topic}", markup=False)
    try:
        _forever(lambda wait: worker.step(min(wait, 1.0)).line(), once, 1.0)
    finally:
        worker.close()


def run_sim_binder(ledger: Ledger, backend: Backend, once: bool, interval: float, wall: Callable[[], datetime]) -> None:
    """Without Kafka: tail the ledger (bind every open, unbound lease each pass)."""
    now = clock_for(ledger, wall)
    listener = Listener(ledger)

    def step(wait: float) -> str:
        bound = bind_pending(ledger, backend, now())
        if not once:
            listener.wait(ledger.last_position(), wait)
        return f"binder: {bound} lease(s) bound"

    try:
        _forever(step, once, interval)
    finally:
        listener.close()
