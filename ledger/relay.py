"""The relay: committed events, in position order, onto the Kafka topic (ARCHITECTURE §4).

One pass reads the events after the published position (``relay_position``), publishes
them with the idempotent producer, waits for the broker's acknowledgement, and only then
records the new published position. A crash anywhere loses nothing: the next relay
starts at the recorded position and republishes whatever was not recorded
(at-least-once; consumers de-duplicate by the ``position`` header). Several relay
processes may run; one publishes at a time (an advisory lock), the others stand by.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ledger import relay_store
from ledger.bus import BusError, Publisher
from ledger.leader import Leadership, default_name
from ledger.store import Ledger
from ledger.stream import BusConfig

#: Advisory-lock key of the relay's leadership (planner shards use small keys).
RELAY_SHARD = 2_000_000_001
BATCH = 500


@dataclass
class RelayPass:
    role: str  # publishing | standby
    published: int  # records sent this pass
    position: int  # the recorded published position after the pass
    holder: str | None = None

    def line(self) -> str:
        if self.role == "standby":
            return f"relay: standby, {self.holder or 'another relay'} publishes"
        return f"relay: {self.published} event(s) published; stream at position {self.position}"


class Relay:
    def __init__(self, ledger: Ledger, config: BusConfig, name: str | None = None) -> None:
        self.ledger = ledger
        self.config = config
        self.leadership = Leadership(ledger, RELAY_SHARD, name or default_name("jobtree-relay"))
        self._publisher: Publisher | None = None

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.config)
        return self._publisher

    def step(self, batch: int = BATCH) -> RelayPass:
        """Publish everything committed (in batches); returns what it did."""
        if not self.leadership.try_acquire():
            return RelayPass("standby", 0, relay_store.published(self.ledger), self.leadership.holder())
        position = relay_store.published(self.ledger)
        sent = 0
        while records := relay_store.records_after(self.ledger, position, batch):
            self.publisher.publish(records)  # raises unless every record is acknowledged
            position = records[-1].position
            relay_store.record_published(self.ledger, position, self.config.topic)
            sent += len(records)
        return RelayPass("publishing", sent, position)

    def reset(self) -> None:
        """Drop the producer (after a broker error): the next pass reconnects and re-creates the topic."""
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            with contextlib.suppress(BusError):
                publisher.close()

    def close(self) -> None:
        self.reset()
        self.leadership.release()
