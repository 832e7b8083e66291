"""The hash chain's rules, in Python: what ``verify_chain`` recomputes (SPEC §7).

Rule 1 (rows before migration 0007) hashed canonical JSON in the application; rules 2
and 3 are the database trigger's (``jobtree_event_text``, ``jobtree_event_text3``), and
``event_text_v2``/``event_text_v3`` build the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of recomputing the hash chain."""

    ok: bool
    checked: int
    first_bad_position: int | None
    message: str


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def utc(at: datetime) -> datetime:
    """``at`` in UTC; naive datetimes are refused (ledger time is always zone-aware)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"ledger times must be timezone-aware, got naive {at.isoformat()}")
    return at.astimezone(UTC)


def event_hash_v1(
    prev_hash: str,
    *,
    position: int,
    stream: str,
    version: int,
    type_name: str,
    data: Any,
    actor: str,
    occurred_at: datetime,
) -> str:
    """Rule 1 (rows written before migration 0007): sha256(prev_hash || canonical JSON of
    {position, stream, version, type, data, actor, occurred_at}), computed by the application."""
    stamp = utc(occurred_at).isoformat(timespec="microseconds")
    return rule1_digest(prev_hash, rule1_body(position, stream, version, type_name, data, actor, stamp))


@dataclass(frozen=True, slots=True)
class StoredRow:
    """An event row as the chain covers it; ``data_text`` is Postgres' rendering, ``data::text``."""

    position: int
    stream: str
    version: int
    type: str
    data_text: str
    actor: str
    idempotency_key: str | None
    occurred_at: datetime
    recorded_at: datetime
    #: the inserting ``session_user`` (migration 0012); None on rows recorded before it
    recorded_by: str | None = None


def _stamp(at: datetime) -> str:
    """``to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')``."""
    return utc(at).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _field(value: str | None) -> str:
    if value is None:
        return "|-"
    return f"|{len(value.encode('utf-8'))}:{value}"


def _common_text(prev_hash: str, row: StoredRow) -> str:
    """The fields rules 2 and 3 share, from ``prev_hash`` through ``recorded_at``."""
    return (
        f"{_field(prev_hash)}|{row.position}{_field(row.stream)}|{row.version}"
        f"{_field(row.type)}{_field(row.actor)}{_field(row.idempotency_key)}"
        f"|{_stamp(row.occurred_at)}|{_stamp(row.recorded_at)}"
    )


def event_text_v2(prev_hash: str, row: StoredRow) -> str:
    """Rule 2's canonical text: exactly what SQL ``jobtree_event_text`` (migration 0007) builds."""
    return f"jobtree-event/2{_common_text(prev_hash, row)}|{row.data_text}"


def event_hash_v2(prev_hash: str, row: StoredRow) -> str:
    """Rule 2 (migrations 0007-0011): sha256 of ``event_text_v2``, as the database's trigger computed it."""
    return hashlib.sha256(event_text_v2(prev_hash, row).encode("utf-8")).hexdigest()


def event_text_v3(prev_hash: str, row: StoredRow) -> str:
    """Rule 3's canonical text: rule 2's with ``recorded_by`` before the data (SQL ``jobtree_event_text3``, 0012)."""
    return f"jobtree-event/3{_common_text(prev_hash, row)}{_field(row.recorded_by)}|{row.data_text}"


def event_hash_v3(prev_hash: str, row: StoredRow) -> str:
    """Rule 3 (migration 0012 onwards): sha256 of ``event_text_v3``, as the database's trigger computes it."""
    return hashlib.sha256(event_text_v3(prev_hash, row).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainRules:
    """The first position each database-side hashing rule covers (``event_chain_rules``)."""

    rule2: int
    rule3: int | None


def chain_problem(row: Any, prev: str, position: int, rules: ChainRules) -> str | None:
    """What is wrong with ``row`` as the event at ``position`` after a row hashed ``prev``, if anything."""
    if row.position != position:
        missing = str(position) if row.position == position + 1 else f"{position}..{row.position - 1}"
        return f"position {row.position}: the event(s) at position {missing} are missing (an event was removed)"
    if row.prev_hash != prev:
        return (
            f"position {row.position}: prev_hash does not match the previous event's hash "
            "(an event was removed, inserted or reordered)"
        )
    if row.hash != stored_hash(row, prev, rules):
        return f"position {row.position}: hash does not match its contents (the event was altered)"
    return None


def stored_hash(row: Any, prev: str, rules: ChainRules) -> str:
    """The hash ``row`` (a ``_CHAIN_ROWS`` row) must carry, under the rule of its position."""
    if row.position < rules.rule2:
        return event_hash_v1(prev, position=row.position, stream=row.stream, version=row.version,
                             type_name=row.type, data=json.loads(row.data_text), actor=row.actor,
                             occurred_at=row.occurred_at)  # fmt: skip
    stored = StoredRow(row.position, row.stream, row.version, row.type, row.data_text, row.actor,
                       row.idempotency_key, row.occurred_at, row.recorded_at, row.recorded_by)  # fmt: skip
    if rules.rule3 is not None and row.position >= rules.rule3:
        return event_hash_v3(prev, stored)
    return event_hash_v2(prev, stored)


def rule1_body(position: int, stream: str, version: int, kind: str, data: Any, actor: str, at: str) -> str:
    """Rule 1's canonical JSON of an event (``at`` already in its ISO form)."""
    return canonical_json(
        {
            "position": position,
            "stream": stream,
            "version": version,
            "type": kind,
            "data": data,
            "actor": actor,
            "occurred_at": at,
        }
    )


def rule1_digest(prev: str, body: str) -> str:
    return hashlib.sha256((prev + body).encode("utf-8")).hexdigest()
