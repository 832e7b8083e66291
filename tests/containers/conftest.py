"""The Docker-based tier: the same fixtures as tests/kafka, on testcontainers (tests/backends.py)."""

from tests.backends import backend, container_pg, kafka_bootstrap, stream_db, tansu_broker

__all__ = ["backend", "container_pg", "kafka_bootstrap", "stream_db", "tansu_broker"]
