"""Wait for new events: LISTEN on the channel every append NOTIFYs (``ledger.store``).

A ``Listener`` keeps one autocommit psycopg connection that LISTENs on a channel
(``EVENTS_CHANNEL`` by default; ``ledger.status`` listens on the planner's);
``wait(after, timeout)`` returns as soon as an append beyond position ``after``
commits, or when the timeout passes; ``next(timeout)`` waits for any notification. Notifications are hints:
the caller always re-reads the ledger, so a lost or merged notification only
delays the next pass until the timeout.

A dropped connection (a server restart, a terminated backend) is not an error: the
listener reconnects and reports a wake-up (something may have been appended meanwhile),
or, while the server is still down, keeps trying until the timeout passes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg

from ledger.appending import EVENTS_CHANNEL
from ledger.embedded import libpq_url
from ledger.errors import LedgerError
from ledger.store import Ledger
from ledger.timeouts import connect_args


class Listener:
    def __init__(self, ledger: Ledger, channel: str = EVENTS_CHANNEL) -> None:
        self._url = libpq_url(ledger.engine.url.render_as_string(hide_password=False))
        self._channel = channel
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._url, autocommit=True, **connect_args(statement_timeout=False))
            conn.execute(f"LISTEN {self._channel}")
        except psycopg.Error as exc:
            raise LedgerError(f"cannot LISTEN on {self._channel}: {exc}") from exc
        return conn

    def _reconnected(self, left: float) -> bool:
        """After the connection dropped: LISTEN again (True), or pause briefly while the server is down."""
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
        try:
            self._conn = self._connect()
        except LedgerError:
            time.sleep(max(0.0, min(left, 0.5)))
            return False
        return True

    def next(self, timeout: float) -> str | None:
        """The payload of the next notification, or None when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                for note in self._conn.notifies(timeout=left, stop_after=1):
                    return note.payload
                return None
            except psycopg.Error:
                if self._reconnected(left):
                    return ""  # something may have happened while the connection was down
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
            except psycopg.Error:
                if self._reconnected(left):
                    return after + 1  # appends while the connection was down sent no notification here
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
