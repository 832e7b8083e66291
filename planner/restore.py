"""Planner startup: the latest usable snapshot plus the tail (ARCHITECTURE §4).

Like ``planner.worker``, this is an I/O edge of the planner package: it reads the
ledger and writes snapshots; ``plan``/``fold`` stay pure. ``load_state`` returns
exactly ``fold(ledger.read())`` (tests/unit/test_snapshot_properties.py), only
cheaper: it restores the newest snapshot written by this code (same fingerprint)
and folds the events after it. When that tail is ``every`` events or longer, it
saves a new snapshot of the state it just built — a state read in one piece from
the ledger, never one the worker patched up after its own appends.

Snapshots never decide correctness: an unreadable or foreign snapshot is skipped
(the next older one is tried, then the whole ledger), and a failed save is logged.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from pathlib import Path

from ledger import snapshots
from ledger.store import Ledger
from planner import snapshot
from planner.fold import fold
from planner.state import ClusterState

log = logging.getLogger("jobtree.planner")
SNAPSHOT_EVERY = 500
"""Default: save a snapshot once the tail past the latest one is this long (0 = snapshots off)."""
_ROOT = Path(snapshot.__file__).resolve().parents[1]


@cache
def code_fingerprint() -> str:
    """The fingerprint of this process's planner code (read once per process)."""
    return snapshot.fingerprint(snapshots.read_sources(_ROOT, snapshot.SOURCES), snapshot.runtime_tag())


def snapshot_every() -> int:
    """``$JOBTREE_SNAPSHOT_EVERY`` (0 turns snapshots off), else ``SNAPSHOT_EVERY``."""
    raw = os.environ.get("JOBTREE_SNAPSHOT_EVERY", "").strip()
    return int(raw) if raw.isdigit() else SNAPSHOT_EVERY


def restore(ledger: Ledger, fingerprint: str) -> ClusterState | None:
    """The newest readable snapshot written by ``fingerprint`` code, or None."""
    for found in snapshots.candidates(ledger, fingerprint):
        if not found.intact:
            log.warning("planner snapshot at position %d fails its checksum; skipped", found.position)
            continue
        try:
            return snapshot.decode(found.state, found.position)
        except snapshot.SnapshotUnreadable as exc:
            log.warning("planner snapshot skipped: %s", exc)
    return None


def load_state(ledger: Ledger, every: int | None = None) -> ClusterState:
    """``fold(ledger.read())``, from the latest snapshot plus the tail; snapshot a long tail."""
    every = snapshot_every() if every is None else every
    if every <= 0:
        return fold(ledger.iter_read())
    fingerprint = code_fingerprint()
    state = restore(ledger, fingerprint) or ClusterState()
    start = state.last_position
    state = fold(ledger.iter_read(after=start), state)  # a page at a time: memory stays O(live + page)
    if state.last_position - start >= every:
        save(ledger, state, fingerprint)
    return state


def save(ledger: Ledger, state: ClusterState, fingerprint: str | None = None) -> bool:
    """Write a snapshot of ``state`` (which must be a fold of the ledger up to its last position)."""
    blob = snapshot.encode(state)
    meta = {"format": snapshot.FORMAT, "runs": len(state.runs), "leases": len(state.leases)}
    return snapshots.save(ledger, state.last_position, fingerprint or code_fingerprint(), blob, meta)
