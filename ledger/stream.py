"""The wire format of the event stream (topic ``jobtree.events``): a stable contract.

One Kafka record per committed ledger event, published in position order by the relay
(``ledger.relay``). Pure: no Kafka and no SQL here, so outside consumers, ``jobtree
events tail`` and the binder group all decode the same way. docs/events.md is the
reference; changing a field name here is a breaking change for every consumer.

- key: ``node:<name>`` for lease facts (so one node's facts reach one partition, in
  order), else the event's stream (``run:<ns>/<name>``, ``budget:<owner>``, ``plan:0``…);
- headers: ``position`` (decimal), ``type``, ``hash`` (64 hex digits, the ledger's chain),
  and ``cluster`` for lease facts when the node carries a cluster label;
- value: UTF-8 JSON ``{position, stream, version, type, data, actor, occurred_at, hash,
  prev_hash, node, cluster, run}`` (``node``/``cluster`` empty when not a lease fact;
  ``run`` names the run of run events and lease facts, else empty).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

DEFAULT_TOPIC = "jobtree.events"
BOOTSTRAP_ENV = "JOBTREE_KAFKA_BOOTSTRAP"
TOPIC_ENV = "JOBTREE_KAFKA_TOPIC"
DEFAULT_PARTITIONS = 6
#: Events that concern one node's pods; they are keyed by node so one binder sees them in order.
LEASE_FACTS = frozenset({"LeaseStarted", "LeaseEnded", "PodBound", "PodBindFailed"})


@dataclass(frozen=True, slots=True)
class StreamRecord:
    position: int
    stream: str
    version: int
    type: str
    data: dict[str, Any]
    actor: str
    occurred_at: str  # ISO 8601, UTC, microseconds
    hash: str
    prev_hash: str
    node: str = ""
    cluster: str = ""
    run: str = ""  # the run an event concerns (lease facts name it through their lease), else ""

    @property
    def key(self) -> str:
        return f"node:{self.node}" if self.type in LEASE_FACTS and self.node else self.stream

    def headers(self) -> list[tuple[str, bytes]]:
        found = [("position", str(self.position).encode()), ("type", self.type.encode()), ("hash", self.hash.encode())]
        if self.cluster:
            found.append(("cluster", self.cluster.encode()))
        return found

    def value(self) -> bytes:
        body = {
            "position": self.position,
            "stream": self.stream,
            "version": self.version,
            "type": self.type,
            "data": self.data,
            "actor": self.actor,
            "occurred_at": self.occurred_at,
            "hash": self.hash,
            "prev_hash": self.prev_hash,
            "node": self.node,
            "cluster": self.cluster,
            "run": self.run,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def row(self) -> dict[str, Any]:
        return json.loads(self.value())  # type: ignore[no-any-return]


class UndecodableRecord(ValueError):
    """A record on the topic that is not a Jobtree event (wrong JSON, missing field)."""


def decode(value: bytes) -> StreamRecord:
    try:
        body = json.loads(value)
        return StreamRecord(
            position=int(body["position"]),
            stream=str(body["stream"]),
            version=int(body["version"]),
            type=str(body["type"]),
            data=dict(body["data"]),
            actor=str(body["actor"]),
            occurred_at=str(body["occurred_at"]),
            hash=str(body["hash"]),
            prev_hash=str(body["prev_hash"]),
            node=str(body.get("node") or ""),
            cluster=str(body.get("cluster") or ""),
            run=str(body.get("run") or ""),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UndecodableRecord(f"not a jobtree event record: {exc}") from None


@dataclass(frozen=True, slots=True)
class BusConfig:
    bootstrap: str
    topic: str = DEFAULT_TOPIC
    partitions: int = DEFAULT_PARTITIONS
    timeout: float = 10.0  # seconds for one request (connect, ack, metadata)

    @classmethod
    def resolve(cls, bootstrap: str | None, topic: str | None = None) -> BusConfig | None:
        """From the option, else the environment; None when no broker is configured."""
        found = (bootstrap or os.environ.get(BOOTSTRAP_ENV, "")).strip()
        if not found:
            return None
        return cls(found, topic or os.environ.get(TOPIC_ENV, "").strip() or DEFAULT_TOPIC)

    @property
    def ms(self) -> int:
        return int(self.timeout * 1000)
