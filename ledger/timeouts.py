"""Database timeouts (SPEC §12): how long to wait for a connection and for each statement.

Standard library only, so the CLI can parse ``--db-timeout`` before it imports any
database library. ``ledger.embedded.engine_options`` applies them to every engine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

#: seconds to wait for a connection, and for each statement, unless configured
CONNECT_TIMEOUT = 5.0
STATEMENT_TIMEOUT = 30.0
TIMEOUT_ENV = "JOBTREE_DB_TIMEOUT"
_MAX_TIMEOUT = 86400.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long to wait for a connection and for each statement, in seconds."""

    connect: float = CONNECT_TIMEOUT
    statement: float = STATEMENT_TIMEOUT


_configured: Timeouts | None = None


def parse_timeouts(value: str | None) -> Timeouts:
    """``STATEMENT`` (connect waits the lesser of it and 5 s) or ``CONNECT:STATEMENT``, in seconds."""
    if value is None or not value.strip():
        return Timeouts()
    parts = value.strip().split(":")
    if len(parts) > 2:
        raise ValueError(f"{value!r} must be SECONDS or CONNECT:STATEMENT seconds (e.g. 30 or 5:30)")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"{value!r} must be SECONDS or CONNECT:STATEMENT seconds (e.g. 30 or 5:30)") from None
    if not all(0 < n <= _MAX_TIMEOUT for n in numbers):  # also refuses nan and inf
        raise ValueError(f"{value!r}: each timeout must be more than 0 and at most {_MAX_TIMEOUT:.0f} seconds")
    if len(numbers) == 1:
        return Timeouts(connect=min(CONNECT_TIMEOUT, numbers[0]), statement=numbers[0])
    return Timeouts(connect=numbers[0], statement=numbers[1])


def set_timeouts(value: Timeouts | None) -> None:
    """Use ``value`` for every engine created from now on (None: back to ``$JOBTREE_DB_TIMEOUT``)."""
    global _configured
    _configured = value


def timeouts() -> Timeouts:
    """The configured timeouts: ``set_timeouts`` (the CLI's ``--db-timeout``), else the environment."""
    return _configured if _configured is not None else parse_timeouts(os.environ.get(TIMEOUT_ENV))


def connect_args(statement_timeout: bool = True) -> dict[str, Any]:
    """psycopg connection arguments: UTC sessions, the connect timeout, the statement timeout."""
    limits = timeouts()
    options = "-c timezone=UTC"
    if statement_timeout:
        options += f" -c statement_timeout={max(1, round(limits.statement * 1000))}"
    # libpq semantics: whole seconds, and psycopg waits at least 2
    return {"connect_timeout": max(1, math.ceil(limits.connect)), "options": options}


