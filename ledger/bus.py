"""Kafka, and only here: the producer the relay uses, the readers of ``events tail``, the binder group.

Everything else speaks ``ledger.stream.StreamRecord``; this module turns those into
Kafka records and back (kafka-python). Postgres stays the source of truth: what is on
the topic is a copy, published at least once, in position order per partition.

Settings (every worker and ``events tail``): ``--kafka HOST:PORT`` or
``$JOBTREE_KAFKA_BOOTSTRAP``; the topic ``$JOBTREE_KAFKA_TOPIC`` (default
``jobtree.events``); consumer-group timeouts ``$JOBTREE_KAFKA_SESSION_MS`` (default
6000) and ``$JOBTREE_KAFKA_MAX_POLL_MS`` (default 10000), short so that a killed binder's
partitions move to a live one within seconds.

Signed checkpoints (``ledger.anchors``) go to their own topic,
``$JOBTREE_KAFKA_CHECKPOINT_TOPIC`` (default ``jobtree.checkpoints``, one partition: a total
order), one record per checkpoint: the checkpoint file's JSON as the value, the ledger's
first hash as the key, headers ``type: Checkpoint`` and ``position``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from ledger.stream import BusConfig, StreamRecord, UndecodableRecord, decode


class BusError(Exception):
    """The broker cannot be reached, refused a request, or did not acknowledge in time."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else default


def partition_for(key: str, partitions: int) -> int:
    """The partition of a key: Kafka's default (murmur2) so any client agrees with the relay."""
    return int((murmur2(key.encode()) & 0x7FFFFFFF) % partitions)


def _guard(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except KafkaError as exc:
        raise BusError(f"{what}: {exc}") from exc
    except (OSError, ValueError, AssertionError) as exc:  # kafka-python raises these for bad addresses
        raise BusError(f"{what}: {exc}") from exc


def ensure_topic(config: BusConfig) -> int:
    """Create the topic if it is missing; return its partition count."""

    def create() -> int:
        admin = KafkaAdminClient(bootstrap_servers=config.bootstrap, request_timeout_ms=config.ms)
        try:
            if config.topic not in admin.list_topics():
                with contextlib.suppress(TopicAlreadyExistsError):  # a racing creator
                    admin.create_topics([NewTopic(config.topic, config.partitions, 1)])
        finally:
            admin.close()
        return config.partitions

    _guard(f"creating topic {config.topic} on {config.bootstrap}", create)
    return partition_count(config)


def partition_count(config: BusConfig) -> int:
    def count() -> int:
        consumer = KafkaConsumer(bootstrap_servers=config.bootstrap, request_timeout_ms=max(config.ms, 11000))
        try:
            deadline = time.monotonic() + config.timeout
            while time.monotonic() < deadline:
                found = consumer.partitions_for_topic(config.topic)
                if found:
                    return len(found)
                time.sleep(0.1)
        finally:
            consumer.close()
        raise BusError(f"topic {config.topic} has no partitions on {config.bootstrap}")

    return int(_guard(f"reading topic {config.topic}", count))


class Publisher:
    """An idempotent producer (acks=all): ``publish`` returns once every record is acknowledged."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.partitions = ensure_topic(config)
        self.idempotent = True
        self._producer: KafkaProducer = _guard("connecting the producer", self._connect)

    def _connect(self) -> KafkaProducer:
        common: dict[str, Any] = {
            "bootstrap_servers": self.config.bootstrap,
            "acks": "all",
            "request_timeout_ms": self.config.ms,
            "max_in_flight_requests_per_connection": 1,
        }
        try:
            return KafkaProducer(enable_idempotence=True, **common)
        except KafkaError:
            # A broker without InitProducerId: still acks=all with one request in flight, so
            # order holds; a retried batch may be duplicated, which consumers absorb by position.
            self.idempotent = False
            return KafkaProducer(enable_idempotence=False, retries=5, **common)

    def publish(self, records: Sequence[StreamRecord]) -> None:
        def send() -> None:
            futures = [
                self._producer.send(
                    self.config.topic,
                    key=r.key.encode(),
                    value=r.value(),
                    headers=r.headers(),
                    partition=partition_for(r.key, self.partitions),
                )
                for r in records
            ]
            self._producer.flush(timeout=self.config.timeout)
            for future in futures:
                future.get(timeout=self.config.timeout)

        _guard(f"publishing to {self.config.topic}", send)

    def close(self) -> None:
        self._producer.close(timeout=self.config.timeout)


@dataclass(frozen=True, slots=True)
class Delivered:
    """One record as a consumer received it."""

    partition: int
    offset: int
    record: StreamRecord


def _delivered(batch: dict[Any, list[Any]]) -> list[Delivered]:
    found: list[Delivered] = []
    for tp, messages in batch.items():
        for m in messages:
            try:
                found.append(Delivered(tp.partition, m.offset, decode(m.value)))
            except UndecodableRecord:
                continue  # not ours (someone else wrote to the topic): skipped, never fatal
    return found


def tail(config: BusConfig, after: int, idle: float, follow: bool) -> Iterator[StreamRecord]:
    """Every record with position > ``after``, de-duplicated; stops after ``idle`` quiet seconds unless ``follow``."""

    def open_reader() -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=config.bootstrap, enable_auto_commit=False, request_timeout_ms=max(config.ms, 11000)
        )
        parts = [TopicPartition(config.topic, p) for p in range(partition_count(config))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        return consumer

    consumer: KafkaConsumer = _guard(f"reading {config.topic}", open_reader)
    seen: set[int] = set()
    quiet_since = time.monotonic()
    try:
        while follow or time.monotonic() - quiet_since < idle:
            batch = _guard("polling", lambda: consumer.poll(timeout_ms=200))
            fresh = sorted(
                (d.record for d in _delivered(batch) if d.record.position > after and d.record.position not in seen),
                key=lambda r: r.position,
            )
            if fresh:
                quiet_since = time.monotonic()
            for record in fresh:
                seen.add(record.position)
                yield record
    finally:
        consumer.close()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_assign: Callable[[set[int]], None]) -> None:
        self.on_assign = on_assign

    def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.on_assign({tp.partition for tp in assigned})


class GroupConsumer:
    """A member of consumer group ``group``: poll, then commit each partition's offset after applying."""

    def __init__(self, config: BusConfig, group: str, on_assign: Callable[[set[int]], None]) -> None:
        self.config = config
        self.partitions = ensure_topic(config)
        self._consumer: KafkaConsumer = _guard(f"joining group {group}", lambda: self._join(group, on_assign))

    def _join(self, group: str, on_assign: Callable[[set[int]], None]) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=_env_int("JOBTREE_KAFKA_SESSION_MS", 6000),
            heartbeat_interval_ms=1000,
            max_poll_interval_ms=_env_int("JOBTREE_KAFKA_MAX_POLL_MS", 10000),
            request_timeout_ms=max(self.config.ms, 11000),
        )
        consumer.subscribe([self.config.topic], listener=_Listener(on_assign))
        return consumer

    def poll(self, timeout: float) -> list[Delivered]:
        batch = _guard("polling", lambda: self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=200))
        return _delivered(batch)

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit ``offsets[partition]`` = the next offset to read (last applied + 1)."""
        if not offsets:
            return
        marks = {TopicPartition(self.config.topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        _guard("committing offsets", lambda: self._consumer.commit(marks))

    def close(self) -> None:
        self._consumer.close(autocommit=False)


# ---------------------------------------------------------------- checkpoints

CHECKPOINT_TOPIC_ENV = "JOBTREE_KAFKA_CHECKPOINT_TOPIC"
DEFAULT_CHECKPOINT_TOPIC = "jobtree.checkpoints"
CHECKPOINT_TYPE = "Checkpoint"


@dataclass(frozen=True, slots=True)
class PublishedCheckpoint:
    topic: str
    partition: int
    offset: int


def checkpoint_config(config: BusConfig) -> BusConfig:
    """The checkpoint topic on ``config``'s broker (one partition)."""
    topic = os.environ.get(CHECKPOINT_TOPIC_ENV, "").strip() or DEFAULT_CHECKPOINT_TOPIC
    return replace(config, topic=topic, partitions=1)


def publish_checkpoint(config: BusConfig, checkpoint: Mapping[str, Any]) -> PublishedCheckpoint:
    """Publish one signed checkpoint (acks=all) to the checkpoint topic; where it landed."""
    target = checkpoint_config(config)
    ensure_topic(target)
    ledger = checkpoint.get("ledger") or {}
    key = str(ledger.get("firstHash") or ledger.get("database") or "ledger").encode()
    value = json.dumps(checkpoint, sort_keys=True, separators=(",", ":")).encode()
    headers = [("type", CHECKPOINT_TYPE.encode()), ("position", str(checkpoint.get("position", "")).encode())]

    def send() -> PublishedCheckpoint:
        producer = KafkaProducer(bootstrap_servers=target.bootstrap, acks="all", request_timeout_ms=target.ms)
        try:
            meta = producer.send(target.topic, key=key, value=value, headers=headers, partition=0).get(
                timeout=target.timeout
            )
        finally:
            producer.close(timeout=target.timeout)
        return PublishedCheckpoint(target.topic, int(meta.partition), int(meta.offset))

    result: PublishedCheckpoint = _guard(f"publishing the checkpoint to {target.topic}", send)
    return result


def read_checkpoints(config: BusConfig, idle: float = 2.0) -> list[tuple[int, Any]]:
    """Every record on the checkpoint topic as (offset, parsed JSON or None), oldest first."""
    target = checkpoint_config(config)

    def read() -> list[tuple[int, Any]]:
        consumer = KafkaConsumer(
            bootstrap_servers=target.bootstrap, enable_auto_commit=False, request_timeout_ms=max(target.ms, 11000)
        )
        try:
            part = TopicPartition(target.topic, 0)
            consumer.assign([part])
            consumer.seek_to_beginning(part)
            found: list[tuple[int, Any]] = []
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < idle:
                for messages in consumer.poll(timeout_ms=200).values():
                    quiet_since = time.monotonic()
                    found.extend((int(m.offset), _parsed(m.value)) for m in messages)
            return found
        finally:
            consumer.close()

    result: list[tuple[int, Any]] = _guard(f"reading {target.topic}", read)
    return result


def _parsed(value: bytes | None) -> Any:
    try:
        return json.loads(value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
