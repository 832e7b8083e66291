"""How events are registered and stored: ``@event``, the payload codec and upcasting (ARCHITECTURE §7.1).

``ledger.events`` defines the catalog with ``@event``; ``to_data``/``from_data``
round-trip a payload; ``upcaster`` registers how an older payload version becomes
the next. ``ledger.events`` re-exports all of it, so callers write ``ev.from_data``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from ledger.errors import UndecodableEvent

JSON = dict[str, Any]

_REGISTRY: dict[str, type[Event]] = {}

E = TypeVar("E", bound="type[Event]")


class Event:
    """Base of every event. Subclasses set TYPE and VERSION via ``@event``."""

    __slots__ = ()
    TYPE: ClassVar[str]
    VERSION: ClassVar[int]


def event(type_name: str, version: int = 1) -> Any:
    """Register a frozen dataclass as an event with a stable type string.

    A new type also needs a migration that INSERTs it into ``event_types`` (the database's
    catalog, migration 0007), or the chain trigger refuses it; a test compares the two.
    """

    def register(cls: E) -> E:
        if type_name in _REGISTRY:
            raise ValueError(f"duplicate event type {type_name}")
        cls.TYPE = type_name
        cls.VERSION = version
        _REGISTRY[type_name] = cls
        return cls

    return register


def event_types() -> dict[str, type[Event]]:
    return dict(_REGISTRY)


#: the payload key that carries an event's schema version when it is above 1
VERSION_KEY = "_v"

Upcaster = Callable[[JSON], JSON]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register how a stored ``type_name`` payload of ``from_version`` becomes ``from_version + 1``.

    Stored events are never rewritten (the hash chain forbids it): when an event's
    payload changes shape, bump its ``@event(..., version=N)`` and register one upcaster
    per step; ``from_data`` applies them in order to every older row it reads.
    """

    def register(function: Upcaster) -> Upcaster:
        key = (type_name, from_version)
        if key in _UPCASTERS:
            raise ValueError(f"duplicate upcaster for {type_name} version {from_version}")
        _UPCASTERS[key] = function
        return function

    return register


def to_data(ev: Event) -> JSON:
    """The event's JSON payload (tuples become lists); version 2 and later carry ``_v``."""
    data: JSON = {}
    for f in dataclasses.fields(ev):  # type: ignore[arg-type]
        value = getattr(ev, f.name)
        data[f.name] = list(value) if isinstance(value, tuple) else value
    if ev.VERSION > 1:
        data[VERSION_KEY] = ev.VERSION
    return data


def upcast(cls: type[Event], data: JSON, position: int | None = None) -> JSON:
    """``data`` as the current version of ``cls`` expects it (without ``_v``)."""
    if cls.VERSION == 1 and VERSION_KEY not in data:
        return data
    stored = data.get(VERSION_KEY, 1)
    if not isinstance(stored, int) or isinstance(stored, bool) or not 1 <= stored <= cls.VERSION:
        raise UndecodableEvent(position, cls.TYPE, f"schema version {stored!r} is not one of 1..{cls.VERSION} "
                               "(written by a newer Jobtree?)")  # fmt: skip
    current = {k: v for k, v in data.items() if k != VERSION_KEY}
    for version in range(stored, cls.VERSION):
        step = _UPCASTERS.get((cls.TYPE, version))
        if step is None:
            raise UndecodableEvent(position, cls.TYPE, f"no upcaster from version {version}")
        try:
            current = step(current)
        except (KeyError, TypeError, ValueError) as exc:  # an old row that does not fit its own version
            raise UndecodableEvent(position, cls.TYPE, f"cannot upcast from version {version}: {exc!r}") from None
    return current


_FIELDS: dict[type[Event], tuple[frozenset[str], frozenset[str]]] = {}


def fields_of(cls: type[Event]) -> tuple[frozenset[str], frozenset[str]]:
    """(all field names, required field names) of an event class, cached."""
    known = _FIELDS.get(cls)
    if known is None:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        names = frozenset(f.name for f in fields)
        required = frozenset(
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        known = _FIELDS[cls] = (names, required)
    return known


def from_data(type_name: str, data: JSON, position: int | None = None) -> Event:
    """Rebuild an event from its type string and payload.

    An older schema version is upcast first (``upcaster``). A row no event class fits
    (an unknown type, a payload that is not an object, a missing or unknown field, a
    version newer than the code) raises ``UndecodableEvent`` naming ``position``.
    """
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise UndecodableEvent(position, type_name, "unknown event type")
    if not isinstance(data, dict):
        raise UndecodableEvent(position, type_name, f"the payload is {type(data).__name__}, not a JSON object")
    data = upcast(cls, data, position)
    names, required = fields_of(cls)
    problems = []
    missing = sorted(required - data.keys())
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    unknown = sorted(str(k) for k in data.keys() - names)
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}")
    if problems:
        raise UndecodableEvent(position, type_name, "; ".join(problems))
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UndecodableEvent(position, type_name, str(exc)) from None
