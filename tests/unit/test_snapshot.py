"""planner.snapshot: fingerprint, encode/decode round trips, and what decode refuses."""

from __future__ import annotations

import os
import pickle

import pytest
from planner_fakes import T0, FakeLedger, budget, envelope, fleet, run

from ledger import events as ev
from planner import snapshot
from planner.fold import fold
from planner.plan import plan
from planner.state import ClusterState


def busy_state() -> ClusterState:
    ledger = FakeLedger()
    state = fold(ledger.append([*fleet({"A": 2, "B": 2}), budget("org:a", envelope("e0", 16))], T0))
    state = fold(ledger.append([run("r1", 8, group=4, spares=1), run("r2", 4, malleable=(2, 8, 2))], T0), state)
    state = fold(ledger.append([run("r3", 64)], T0), state)
    for _ in range(5):  # until quiet
        state, decided = ledger.decide(state, T0)
        if not decided:
            break
    return state


def test_round_trip_is_equal_and_plans_the_same() -> None:
    state = busy_state()
    assert state.leases and state.reservations, "the fixture should have leases and a reservation"
    restored = snapshot.decode(snapshot.encode(state), state.last_position)
    assert restored == state and restored is not state
    assert plan(restored, T0) == plan(state, T0) == []


def test_encode_does_not_change_the_state() -> None:
    state = busy_state()
    before = state.copy()
    snapshot.encode(state)
    assert state == before


def test_fingerprint_depends_on_every_source_and_the_runtime() -> None:
    sources = {"planner/state.py": b"a = 1\n", "ledger/model.py": b"b = 2\n"}
    base = snapshot.fingerprint(sources, "rt")
    assert base == snapshot.fingerprint(dict(reversed(list(sources.items()))), "rt")
    assert base != snapshot.fingerprint({**sources, "planner/state.py": b"a = 2\n"}, "rt")
    assert base != snapshot.fingerprint({**sources, "planner/new.py": b""}, "rt")
    assert base != snapshot.fingerprint(sources, "rt2")
    # the path/content framing keeps a byte moved across the boundary from colliding
    assert snapshot.fingerprint({"a": b"bc"}, "rt") != snapshot.fingerprint({"ab": b"c"}, "rt")


def test_decode_refuses_a_snapshot_of_another_position() -> None:
    state = busy_state()
    with pytest.raises(snapshot.SnapshotUnreadable, match="covers the ledger up to"):
        snapshot.decode(snapshot.encode(state), state.last_position - 1)


@pytest.mark.parametrize("blob", [b"", b"not a pickle", pickle.dumps({"a": 1}), pickle.dumps([1, 2])[:-3]])
def test_decode_refuses_garbage(blob: bytes) -> None:
    with pytest.raises(snapshot.SnapshotUnreadable):
        snapshot.decode(blob, 0)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/jobtree-snapshot-pwned",))


@pytest.mark.parametrize(
    "payload",
    [
        _Evil(),
        ev.Recorded(1, "s", 1, ev.NodeFailed("n"), "a", T0),  # an allowed module, but planner.state has no Recorded
    ],
)
def test_decode_resolves_only_planner_and_ledger_classes(payload: object) -> None:
    blob = pickle.dumps(payload, protocol=5)
    with pytest.raises(snapshot.SnapshotUnreadable):
        snapshot.decode(blob, 1)


def _global(module: str, name: str) -> bytes:
    """A pickle that only looks up ``module.name`` (PROTO 4, two strings, STACK_GLOBAL, STOP)."""
    strings = b"".join(b"\x8c" + bytes([len(x)]) + x.encode() for x in (module, name))
    return b"\x80\x04" + strings + b"\x93."


def test_decode_refuses_functions_and_imported_names_in_allowed_modules() -> None:
    assert pickle.loads(_global("planner.fold", "fold")) is fold  # the probe pickles are well formed
    # planner.fold defines `fold` (a function) and imports `bisect` (a module); planner.state has no `copy`
    for module, name in (("planner.fold", "fold"), ("planner.fold", "bisect"), ("planner.state", "copy"),
                         ("planner.state", "ev"), ("planner.fold", "ClusterState"),
                         ("planner.state", "ClusterState.copy"), ("builtins", "eval"), ("os", "system")):  # fmt: skip
        with pytest.raises(snapshot.SnapshotUnreadable, match=r"may not contain|not a class defined there"):
            snapshot.decode(_global(module, name), 0)


def test_runtime_tag_names_python_and_pydantic() -> None:
    tag = snapshot.runtime_tag()
    assert tag.startswith(snapshot.FORMAT) and "python3." in tag and "pydantic2." in tag


def test_empty_state_round_trips() -> None:
    empty = ClusterState()
    assert snapshot.decode(snapshot.encode(empty), 0) == empty
