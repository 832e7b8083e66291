"""The ledger's error tree and the mapping from driver errors onto it."""

from __future__ import annotations

import re

import psycopg
from sqlalchemy.exc import DBAPIError

# SQLSTATE raised by the events immutability trigger (see migration 0001).
IMMUTABLE_SQLSTATE = "JT001"
# SQLSTATE raised by the chain trigger (migration 0007): a wrong hash, link or type.
CHAIN_SQLSTATE = "JT002"
# SQLSTATE raised by the authorize trigger (migration 0012): the session may not record the row.
AUTHZ_SQLSTATE = "JT003"
_EXCLUSION_SQLSTATE = "23P01"
_UNIQUE_SQLSTATE = "23505"
_CANCELED_SQLSTATE = "57014"
_SLOT_KEY = re.compile(r"\(node, gpu, during\)=\((?P<node>[^,]+), (?P<gpu>\d+),")


class LedgerError(Exception):
    """Base of every error the ledger raises."""


class ConcurrencyError(LedgerError):
    """A stream moved on since the caller read it (expected version mismatch)."""


class SlotConflictError(LedgerError):
    """A GPU slot would be held by two Active/Spare leases at once."""

    def __init__(self, message: str, node: str | None = None, gpu: int | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.gpu = gpu


class ImmutableLedgerError(LedgerError):
    """Someone tried to UPDATE, DELETE or TRUNCATE the events table."""


class ChainRefused(LedgerError):
    """The database refused a row: its hash, its link or its type is wrong (migration 0007)."""


class RecordForbidden(LedgerError):
    """The database refused a row its session may not record (migration 0012, docs/identity.md)."""


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error wrapped by SQLAlchemy, if any."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(orig, "sqlstate", None)


def _detail(exc: DBAPIError) -> str:
    diag = getattr(exc.orig, "diag", None)
    return str(getattr(diag, "message_detail", None) or "")


def slot_conflict(exc: DBAPIError, lease_id: str, node: str, slots: tuple[int, ...]) -> SlotConflictError:
    """Describe an EXCLUDE violation on lease_slots, naming the node and GPU."""
    match = _SLOT_KEY.search(_detail(exc))
    gpu = int(match.group("gpu")) if match else None
    where = f"GPU {gpu} of node {node}" if gpu is not None else f"GPUs {list(slots)} of node {node}"
    return SlotConflictError(
        f"lease {lease_id}: {where} is already held by another Active or Spare lease at that time",
        node=node,
        gpu=gpu,
    )


def translate(exc: DBAPIError) -> LedgerError:
    """Map a driver error onto the ledger's error tree (the caller raises it ``from exc``)."""
    state = sqlstate(exc)
    message = str(exc.orig) if exc.orig is not None else str(exc)
    if state == IMMUTABLE_SQLSTATE:
        return ImmutableLedgerError(message.strip())
    if state == CHAIN_SQLSTATE:
        return ChainRefused(message.strip().splitlines()[0])
    if state == AUTHZ_SQLSTATE:
        return RecordForbidden(message.strip().splitlines()[0])
    if state == _EXCLUSION_SQLSTATE:
        return SlotConflictError(f"slot conflict: {_detail(exc) or message}")
    if state == _UNIQUE_SQLSTATE:
        return ConcurrencyError(f"concurrent append: {_detail(exc) or message}")
    unavailable = database_unavailable(exc.orig if exc.orig is not None else exc)
    if unavailable is not None:
        return unavailable
    return LedgerError(message.strip())


def database_unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """A timeout or a failed connection as one clear line, or None for any other error."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    hint = "(raise the limit with --db-timeout or $JOBTREE_DB_TIMEOUT)"
    if getattr(exc, "sqlstate", None) == _CANCELED_SQLSTATE and "statement timeout" in str(exc):
        return DatabaseUnavailable(f"the database did not finish a statement within the statement timeout {hint}")
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return DatabaseUnavailable(f"the database did not accept a connection within the connect timeout {hint}")
    if isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None:
        return DatabaseUnavailable(f"cannot reach the database: {first}")
    return None


class ManifestError(ValueError):
    """Bad input: names the field and the rule that was broken."""

    def __init__(self, field: str, rule: str, source: str = "") -> None:
        self.field = field
        self.rule = rule
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {rule}")


class UndecodableEvent(LedgerError):
    """A stored event row that no event class can be rebuilt from (an unknown type, a
    missing or extra field, a payload that is not an object): forged, or written by a
    newer version. Never a traceback: ``audit verify`` reports it with its position."""

    def __init__(self, position: int | None, type_name: str, reason: str) -> None:
        self.position = position
        self.type_name = type_name
        self.reason = reason
        where = f"event {position}" if position is not None else "an event"
        hint = "" if position is not None else " (`jobtree audit verify` names its position)"
        super().__init__(f"the ledger holds an undecodable row: {where} ({type_name!r}): {reason}{hint}")


class DatabaseUnavailable(LedgerError):
    """The database did not answer in time, or could not be reached."""


#: what the CLI turns into one line and exit 1: the ledger's errors and the drivers' own
DATABASE_ERRORS = (LedgerError, DBAPIError, psycopg.Error)


def one_line(exc: BaseException) -> str:
    """A ledger or driver error as one line for the CLI (driver errors are translated first)."""
    if isinstance(exc, DBAPIError):
        error: BaseException = translate(exc)
    elif isinstance(exc, psycopg.Error):
        error = database_unavailable(exc) or exc
    else:
        error = exc
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
