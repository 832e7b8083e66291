"""Events can evolve: stored payloads are never rewritten, older versions are upcast on read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from ledger import event_codec
from ledger import events as ev
from ledger.errors import UndecodableEvent
from ledger.projections import _decode

AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def sample(monkeypatch: pytest.MonkeyPatch) -> type[ev.Event]:
    """A test-only event at version 3: v1 had ``gpus``; v2 renamed it ``width``; v3 added ``unit``."""
    monkeypatch.setattr(event_codec, "_REGISTRY", dict(event_codec._REGISTRY))
    monkeypatch.setattr(event_codec, "_UPCASTERS", dict(event_codec._UPCASTERS))

    @ev.event("TestWidthRecorded", version=3)
    @dataclass(frozen=True, slots=True)
    class TestWidthRecorded(ev.Event):
        run: str
        width: int
        unit: str

    @ev.upcaster("TestWidthRecorded", 1)
    def _renamed(data: ev.JSON) -> ev.JSON:
        rest = {k: v for k, v in data.items() if k != "gpus"}
        return {**rest, "width": data["gpus"]}

    @ev.upcaster("TestWidthRecorded", 2)
    def _unit_added(data: ev.JSON) -> ev.JSON:
        return {**data, "unit": "GPU"}

    return TestWidthRecorded


def test_an_old_payload_is_upcast_step_by_step(sample: type[ev.Event]) -> None:
    assert ev.from_data("TestWidthRecorded", {"run": "ns/a", "gpus": 8}) == sample("ns/a", 8, "GPU")  # type: ignore[call-arg]
    assert ev.from_data("TestWidthRecorded", {"run": "ns/a", "width": 4, "_v": 2}) == sample("ns/a", 4, "GPU")  # type: ignore[call-arg]


def test_the_current_version_is_stored_with_its_number_and_round_trips(sample: type[ev.Event]) -> None:
    current = sample("ns/a", 16, "GPU")  # type: ignore[call-arg]
    data = ev.to_data(current)
    assert data == {"run": "ns/a", "width": 16, "unit": "GPU", "_v": 3}
    assert ev.from_data("TestWidthRecorded", data) == current
    assert "_v" not in ev.to_data(ev.RunDeferred("ns/a", "short")), "version 1 payloads are unchanged"


def test_the_fast_page_decoder_upcasts_too(sample: type[ev.Event]) -> None:
    rows = [(1, "run:ns/a", 1, "TestWidthRecorded", json.dumps({"run": "ns/a", "width": 2, "unit": "GPU"}), "x", AT)]
    # a v1 payload whose fields happen to fit the v3 class must still go through the upcasters
    rows.append((2, "run:ns/a", 2, "TestWidthRecorded", json.dumps({"run": "ns/a", "gpus": 2}), "x", AT))
    with pytest.raises(UndecodableEvent, match="cannot upcast from version 1"):
        list(_decode(rows[:1]))  # no _v: read as version 1, which had no ``width``
    assert [r.event for r in _decode(rows[1:])] == [sample("ns/a", 2, "GPU")]  # type: ignore[call-arg]


@pytest.mark.parametrize("version", [4, 0, "3", True, None])
def test_a_version_the_code_does_not_know_is_undecodable_not_a_crash(sample: type[ev.Event], version: object) -> None:
    with pytest.raises(UndecodableEvent, match="schema version"):
        ev.from_data("TestWidthRecorded", {"run": "ns/a", "width": 1, "unit": "GPU", "_v": version}, position=7)


def test_a_missing_step_or_a_second_upcaster_is_refused(
    sample: type[ev.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(event_codec._UPCASTERS, ("TestWidthRecorded", 2))
    with pytest.raises(UndecodableEvent, match="no upcaster from version 2"):
        ev.from_data("TestWidthRecorded", {"run": "ns/a", "gpus": 1})
    with pytest.raises(ValueError, match="duplicate upcaster"):
        ev.upcaster("TestWidthRecorded", 1)(lambda data: data)
