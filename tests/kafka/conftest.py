"""Suites on Postgres + a Kafka-protocol broker; the tier is chosen in tests/backends.py."""

from tests.backends import backend, container_pg, kafka_bootstrap, stream_db, tansu_broker

__all__ = ["backend", "container_pg", "kafka_bootstrap", "stream_db", "tansu_broker"]
