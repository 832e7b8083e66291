"""`jobtree workers relay` and `jobtree workers binder --kafka`: the Kafka side of a cluster install.

The relay copies committed events onto the topic (``ledger.relay``); binder workers
with ``--kafka`` form one consumer group over the lease facts (``binder.group``). Both
loop until SIGTERM/Ctrl-C; a broker or database error is printed and retried (with
``--once``: exit 1). See docs/workers.md and docs/events.md.
"""

from __future__ import annotations

from binder.group import BinderGroup
from binder.worker import Backend
from cli.commands.stream_options import Wall, clock_for, forever
from cli.render import errors
from ledger.bus import BusError
from ledger.listen import Listener
from ledger.relay import Relay
from ledger.store import Ledger
from ledger.stream import BusConfig


def run_relay(ledger: Ledger, config: BusConfig, once: bool, interval: float, name: str | None) -> None:
    relay = Relay(ledger, config, name=name)
    listener = Listener(ledger)
    errors.print(f"jobtree relay: {relay.leadership.name} -> {config.bootstrap} topic {config.topic}", markup=False)

    def step(wait: float) -> str:
        try:
            done = relay.step()
        except BusError:
            relay.reset()  # reconnect (and re-create the topic) on the next pass
            raise
        if not once:
            listener.wait(done.position, wait)
        return done.line()

    try:
        forever(step, once, interval, retry=(BusError,))
    finally:
        listener.close()
        relay.close()


def run_binder_group(
    ledger: Ledger, backend: Backend, config: BusConfig, group: str, cluster: str, once: bool, wall: Wall
) -> None:
    worker = BinderGroup(ledger, backend, config, group, clock_for(ledger, wall), cluster=cluster)
    errors.print(f"jobtree binder: group {group} on {config.bootstrap} topic {config.topic}", markup=False)
    try:
        forever(lambda wait: worker.step(min(wait, 1.0)).line(), once, 1.0, retry=(BusError,))
    finally:
        worker.close()
