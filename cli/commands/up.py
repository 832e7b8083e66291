"""`jobtree up`: run the planner and the simulated-cluster binder continuously.

For a shared deployment on the embedded default or ``--db``. Every process
competes for leadership of the planner (``ledger.leader``, a session advisory
lock); the leader catches up at wall-clock "now" (plans, binds on the simulated
cluster when the policy's binder is ``sim``), then sleeps until an append
NOTIFYs (``ledger.listen``) or ``--interval`` passes (time alone moves windows
and activations). The others stand by and say who leads. Ctrl-C / SIGTERM stop
between passes; ``--once`` runs one pass (tests, cron). See docs/workers.md.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Annotated, Any

import typer

from binder.sim import SimulatedCluster
from binder.worker import bind_pending
from cli import context
from cli.app import JobtreeApp
from cli.errors import CommandError
from cli.render import console, emit_data, errors
from ledger.errors import ConcurrencyError, LedgerError
from ledger.events import POLICY_STREAM, PolicyChanged
from ledger.leader import Leadership, default_name
from ledger.listen import Listener
from ledger.model import PolicySpec
from ledger.store import Ledger
from planner.worker import CatchUp, catch_up

Clock = Callable[[], datetime]
PassFn = Callable[[Ledger, datetime], CatchUp]


def wall_clock() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def binder_kind(ledger: Ledger) -> str:
    """The policy's binder (``sim`` unless a PolicyChanged says otherwise)."""
    for record in reversed(ledger.read_stream(POLICY_STREAM)):
        if isinstance(record.event, PolicyChanged):
            return PolicySpec.model_validate(record.event.spec).binder
    return PolicySpec().binder


def plan_and_bind(ledger: Ledger, now: datetime) -> CatchUp:
    """One catch-up: plan, and bind on the simulated cluster when the policy says ``sim``."""
    if binder_kind(ledger) != "sim":
        return catch_up(ledger, now)  # Kubernetes: `jobtree workers binder` binds
    backend = SimulatedCluster()
    return catch_up(ledger, now, bind=lambda at: bind_pending(ledger, backend, at))


@dataclass
class Pass:
    """What one pass did, as a status line and as ``-o json``."""

    role: str  # leader | standby | fenced
    leader: str | None
    at: datetime
    position: int
    decisions: int = 0
    bound: int = 0
    message: str = ""

    def row(self) -> dict[str, Any]:
        return {"role": self.role, "leader": self.leader, "at": self.at.isoformat().replace("+00:00", "Z"),
                "position": self.position, "decisions": self.decisions, "bound": self.bound,
                "message": self.message}  # fmt: skip

    def line(self) -> str:
        stamp = self.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.role == "standby":
            return f"{stamp} standby: the planner is led by {self.leader or 'nobody (retrying)'}"
        if self.role == "fenced":
            return f"{stamp} fenced: {self.message}"
        return (f"{stamp} leader: {self.decisions} decision(s), {self.bound} lease(s) bound; "
                f"ledger at position {self.position}")  # fmt: skip


@dataclass
class Up:
    """The leader/stand-by loop body; ``step`` is one pass."""

    ledger: Ledger
    leadership: Leadership
    clock: Clock = wall_clock
    work: PassFn = plan_and_bind
    passes: list[Pass] = field(default_factory=list)

    def step(self) -> Pass:
        now = JobtreeApp.resolve_now(self.ledger, None, self.clock())
        if not self.leadership.try_acquire():
            done = Pass("standby", self.leadership.holder(), now, self.ledger.last_position())
        else:
            done = self._lead(now)
        self.passes.append(done)
        return done

    def _lead(self, now: datetime) -> Pass:
        try:
            result = self.work(self.ledger, now)
        except ConcurrencyError as exc:
            # Another planner appended since we read: our decisions were planned from a
            # stale state and nothing was written. Never re-send them: step down, and the
            # next pass re-reads the ledger (and competes for leadership) from scratch.
            self.leadership.release()
            message = f"{exc}; dropped the stale decisions, stepped down, re-reading next pass"
            return Pass("fenced", None, now, self.ledger.last_position(), message=message)
        position = self.ledger.last_position()
        return Pass("leader", self.leadership.name, now, position, result.decisions, result.bound)


class Stop:
    """Set by SIGINT/SIGTERM; the loop stops between passes."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


@contextmanager
def stop_on_signals() -> Iterator[Stop]:
    stop = Stop()
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(ValueError):  # not the main thread: the caller stops us some other way
            previous[sig] = signal.signal(sig, stop)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait(listener: Listener | None, after: int, interval: float, stop: Stop) -> None:
    """Until an append beyond ``after``, ``interval`` seconds, or a stop request (checked often)."""
    deadline = time.monotonic() + interval
    while not stop.requested and (left := deadline - time.monotonic()) > 0:
        slice_ = min(left, 0.5)
        if listener is None:
            time.sleep(slice_)
        elif listener.wait(after, slice_) is not None:
            return


def up(
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="longest wait between passes (seconds)")] = 5.0,
    name: Annotated[str | None, typer.Option("--name", help="this process's name as leader")] = None,
) -> None:
    """Run the planner and the simulated-cluster binder until Ctrl-C (one leader per database)."""
    ledger = context.open_ledger()
    service = Up(ledger, Leadership(ledger, name=name or default_name()))
    output = context.GLOBALS.output
    if once:
        with service.leadership:
            done = _guarded(service.step, once=True)
        if done is not None and not emit_data(done.row(), output):
            console.print(done.line(), markup=False)
        return
    _serve(service, interval)


def _serve(service: Up, interval: float) -> None:
    errors.print(f"jobtree up: {service.leadership.name}; Ctrl-C to stop", markup=False)
    previous: Pass | None = None
    with stop_on_signals() as stop, service.leadership, Listener(service.ledger) as listener:
        while not stop.requested:
            done = _guarded(service.step, once=False)
            if done is not None:
                if news(previous, done):
                    console.print(done.line(), markup=False)
                previous = done
            _wait(listener, service.ledger.last_position(), interval, stop)
    errors.print("jobtree up: stopped", markup=False)


def news(previous: Pass | None, done: Pass) -> bool:
    """Print a pass that did something, changed role, or saw another leader; stay quiet otherwise."""
    if previous is None or done.role != previous.role or done.role == "fenced":
        return True
    if done.role == "standby":
        return done.leader != previous.leader
    return bool(done.decisions or done.bound)


def _guarded(step: Callable[[], Pass], once: bool) -> Pass | None:
    try:
        return step()
    except LedgerError as exc:
        if once:
            raise CommandError(f"up: {exc}") from None
        errors.print(f"up: {exc}; retrying", markup=False)
        return None
