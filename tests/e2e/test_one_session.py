"""One session per process: `watch` refreshes on the invocation's one engine, so the
server's connection count stays flat however long it watches (the embedded server allows 100)."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from ledger.embedded import libpq_url
from service.app import JobtreeApp
from tests.e2e.conftest import CLI

BIG = """apiVersion: rq.davidlangworthy.io/v1
kind: Run
metadata: {name: never-fits, namespace: rai-sys}
spec:
  owner: org:ai:rai:sys
  resources: {gpuType: H100-80GB, totalGPUs: 512}
"""
COUNT = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"


class Sampler:
    """The database's connection count, sampled every 20 ms from a connection of its own."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(libpq_url(url), autocommit=True)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        row = self.conn.execute(COUNT).fetchone()
        assert row is not None
        return int(row[0])

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append(self.now())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


def test_watch_keeps_the_number_of_server_connections_flat(
    fleet: CLI, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "big.yaml"
    manifest.write_text(BIG)
    assert fleet("submit", "-f", str(manifest)).code == 0
    refreshes = []
    real_run = JobtreeApp.run

    def counted(self: JobtreeApp, namespace: str, name: str) -> dict[str, object]:
        refreshes.append(name)
        return real_run(self, namespace, name)

    monkeypatch.setattr(JobtreeApp, "run", counted)
    with Sampler(database_url) as sampler:
        before = sampler.now()
        out = fleet("watch", "rai-sys/never-fits", "--interval", "0.05", "--timeout", "3")
        after = sampler.now()
    assert out.code == 1 and "did not settle within 3s" in out.err
    # the planner thread, the sampler and the watch's pool: a few connections, never one per refresh
    assert max(sampler.samples) - before <= 4, (before, max(sampler.samples))
    assert after <= before + 1
    assert len(refreshes) >= 25  # up to 60 refreshes of one run (fewer on a loaded machine), on one application
    assert len(sampler.samples) >= 25
