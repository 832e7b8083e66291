"""A planner service in a background thread of this process, for one database (the demo, tests).

Commands wait for it exactly as they wait for `jobtree up` in production
(``planner_status``); only the process boundary is missing. Simulated clock by
default (tests move time with ``--now`` on writes); the demo uses the wall clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cli.commands.up import Up
from ledger.errors import LedgerError
from ledger.leader import Leadership
from ledger.listen import Listener
from ledger.store import Ledger


class PlannerThread:
    def __init__(self, url: str, simulated: bool = True, name: str = "test-planner") -> None:
        self.ledger = Ledger.from_url(url)
        self.up = Up(self.ledger, Leadership(self.ledger, name=name), simulated=simulated)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> PlannerThread:
        self.up.step()  # the first pass (and status) before any command runs
        self._thread.start()
        return self

    def _run(self) -> None:
        with Listener(self.ledger) as listener:
            while not self._stop.is_set():
                try:
                    self.up.step()
                except LedgerError:  # as `jobtree up` does: said in planner_status, retried next pass
                    self._stop.wait(0.2)
                    continue
                except Exception as exc:  # surfaced by stop(): a test must not pass on a dead planner
                    self.errors.append(exc)
                    return
                service = self.up.service
                after = service.state.last_position if service else self.ledger.last_position()
                listener.wait(after, 0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.up.leadership.release()
        self.ledger.dispose()
        if self.errors:
            raise self.errors[0]


@contextmanager
def planner_running(url: str, simulated: bool = True) -> Iterator[PlannerThread]:
    thread = PlannerThread(url, simulated=simulated).start()
    try:
        yield thread
    finally:
        thread.stop()
