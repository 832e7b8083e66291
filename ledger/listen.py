"""Wait for new events: LISTEN on the channel every append NOTIFYs (``ledger.store``).

A ``Listener`` keeps one autocommit psycopg connection that LISTENs on a channel
(``EVENTS_CHANNEL`` by default; ``ledger.status`` listens on the planner's);
``wait(after, timeout)`` returns as soon as an append beyond position ``after``
commits, or when the timeout passes; ``next(timeout)`` waits for any notification. Notifications are hints:
the caller always re-reads the ledger, so a lost or merged notification only
delays the next pass until the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from ledger.embedded import libpq_url
from ledger.errors import LedgerError
from ledger.store import EVENTS_CHANNEL, Ledger
from ledger.timeouts import connect_args


class Listener:
    def __init__(self, ledger: Ledger, channel: str = EVENTS_CHANNEL) -> None:
        url = libpq_url(ledger.engine.url.render_as_string(hide_password=False))
        try:
            self._conn = psycopg.connect(url, autocommit=True, **connect_args(statement_timeout=False))
            self._conn.execute(f"LISTEN {channel}")
        except psycopg.Error as exc:
            raise LedgerError(f"cannot LISTEN on {channel}: {exc}") from exc

    def next(self, timeout: float) -> str | None:
        """The payload of the next notification, or None when ``timeout`` passes first."""
        try:
            for note in self._conn.notifies(timeout=timeout, stop_after=1):
                return note.payload
        except psycopg.Error as exc:
            raise LedgerError(f"lost the LISTEN connection: {exc}") from exc
        return None

    def wait(self, after: int, timeout: float) -> int | None:
        """The newest notified position once one is beyond ``after``; None on timeout."""
        deadline = time.monotonic() + timeout
        newest: int | None = None
        while (left := deadline - time.monotonic()) > 0:
            try:
                for note in self._conn.notifies(timeout=left, stop_after=1):
                    position = int(note.payload) if note.payload.isdigit() else after + 1
                    newest = max(newest or 0, position)
            except psycopg.Error as exc:
                raise LedgerError(f"lost the LISTEN connection: {exc}") from exc
            if newest is not None and newest > after:
                return newest
        return None

    def close(self) -> None:
        self._conn.close()

    @staticmethod
    def sleep(seconds: float, stopped: Callable[[], bool]) -> None:
        """Sleep ``seconds`` in short slices, returning early once ``stopped()``."""
        deadline = time.monotonic() + seconds
        while not stopped() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
