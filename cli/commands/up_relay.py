"""The relay inside `jobtree up` when a broker is configured (``--kafka`` / ``$JOBTREE_KAFKA_BOOTSTRAP``).

A thread next to the planner loop publishes what the ledger committed (``ledger.relay``);
a broker error is printed and retried; stopping `up` stops it. Kafka is imported only here
and only when a broker is configured, so `jobtree up` without one never loads it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cli.render import errors
from ledger.errors import LedgerError
from ledger.leader import default_name
from ledger.store import Ledger
from ledger.stream import BusConfig

POLL = 0.5


def start_relay(ledger: Ledger, config: BusConfig | None) -> Callable[[], None]:
    """Start publishing in the background; returns the function that stops it (a no-op without a broker)."""
    if config is None:
        return lambda: None
    from ledger.bus import BusError
    from ledger.relay import Relay

    stop = threading.Event()
    relay = Relay(ledger, config, name=default_name("jobtree-up relay"))

    def loop() -> None:
        try:
            while not stop.is_set():
                try:
                    relay.step()
                except (BusError, LedgerError) as exc:
                    errors.print(f"relay: retrying: {exc}", markup=False)
                    relay.reset()
                    stop.wait(2.0)
                    continue
                stop.wait(POLL)
        finally:
            relay.close()

    thread = threading.Thread(target=loop, name="jobtree-relay", daemon=True)
    thread.start()
    errors.print(f"jobtree up: relaying events to {config.bootstrap} topic {config.topic}", markup=False)

    def halt() -> None:
        stop.set()
        thread.join(timeout=10)

    return halt
