"""`jobtree up`: the planner service, with the simulated-cluster binder.

The embedded default starts it in the background by itself (``service.daemon``);
a shared deployment runs it on ``--db``. Every process competes for leadership
of the planner (``ledger.leader``, a session advisory lock); the leader keeps the
planner state in memory (``planner.worker.PlannerService``), folds only new
events, plans at "now" (binding on the simulated cluster when the policy's
binder is ``sim``), publishes ``planner_status`` and sleeps until an append
NOTIFYs (``ledger.listen``), its next due time comes, or a heartbeat is due.
The others stand by and say who leads. Ctrl-C / SIGTERM stop between passes;
``--once`` runs one pass (tests, cron). See docs/workers.md.

``--checkpoint-every DURATION`` makes the leader sign the chain's head (``jobtree audit
checkpoint``, ``ledger.anchors``) after its first pass and then every DURATION, into
``--checkpoint-dir`` (default ``$JOBTREE_HOME/checkpoints``) with ``--checkpoint-key``
(default ``$JOBTREE_HOME/audit/checkpoint.key``, created on first use).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from binder.sim import SimulatedCluster
from binder.worker import bind_pending
from cli import context
from cli.errors import BadInput, CommandError
from cli.render import console, emit_data, errors
from ledger.errors import ConcurrencyError, LedgerError
from ledger.leader import Leadership, default_name
from ledger.listen import Listener
from ledger.status import HEARTBEAT
from ledger.store import Ledger
from planner.worker import CatchUp, PlannerService
from service.app import JobtreeApp

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ledger.stream import BusConfig

Clock = Callable[[], datetime]
PassFn = Callable[[Ledger, datetime], CatchUp]


def wall_clock() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


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
    next_wake: datetime | None = None

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


def sim_binder(ledger: Ledger, service: PlannerService) -> Callable[[datetime], int]:
    """Bind on the simulated cluster while the policy's binder is ``sim`` (else the binder workers bind)."""
    backend = SimulatedCluster()

    def bind(at: datetime) -> int:
        return bind_pending(ledger, backend, at) if service.state.policy.binder == "sim" else 0

    return bind


@dataclass
class Up:
    """The leader/stand-by loop body; ``step`` is one pass.

    The leader runs a ``PlannerService`` (state in memory, restored once when it takes
    the lead). ``work`` replaces it with a one-shot pass (tests of fencing).
    """

    ledger: Ledger
    leadership: Leadership
    clock: Clock | None = None
    work: PassFn | None = None
    simulated: bool = False
    binds: bool = True  # the simulated binder runs in the planner's passes (policy binder: sim)
    passes: list[Pass] = field(default_factory=list)
    service: PlannerService | None = None

    def step(self) -> Pass:
        if not self.leadership.try_acquire():
            self.service = None  # a stand-by keeps no state: it restores when it takes over
            now = JobtreeApp.resolve_now(self.ledger, None, (self.clock or wall_clock)())
            done = Pass("standby", self.leadership.holder(), now, self.ledger.last_position())
        else:
            done = self._lead()
        self.passes.append(done)
        return done

    def _planner(self) -> PlannerService:
        if self.service is None:
            clock = None if self.simulated else (self.clock or wall_clock)
            service = PlannerService(self.ledger, name=self.leadership.name, clock=clock)
            service.bind = sim_binder(self.ledger, service) if self.binds else None
            service.start()
            self.service = service
        return self.service

    def _lead(self) -> Pass:
        now = JobtreeApp.resolve_now(self.ledger, None, (self.clock or wall_clock)())
        try:
            if self.work is not None:
                result = self.work(self.ledger, now)
                return Pass("leader", self.leadership.name, now, self.ledger.last_position(),
                            result.decisions, result.bound)  # fmt: skip
            done = self._planner().step()
        except ConcurrencyError as exc:
            # Another planner appended decisions since we folded: ours were never written.
            # Step down; the next pass competes again and restores from the ledger.
            self.leadership.release()
            self.service = None
            message = f"{exc}; dropped the stale decisions, stepped down, re-reading next pass"
            return Pass("fenced", None, now, self.ledger.last_position(), message=message)
        return Pass("leader", self.leadership.name, done.at or now, done.position, done.decisions, done.bound,
                    next_wake=done.next_wake)  # fmt: skip

    def wait_seconds(self, interval: float, wall: datetime) -> float:
        """Until the next due time (reservation ETA, window edge, ...), a heartbeat, or ``interval``."""
        wake = self.service.next_wake() if self.service is not None else None
        longest = min(interval, HEARTBEAT)
        if wake is None or self.simulated:
            return longest
        return max(0.05, min(longest, (wake - wall).total_seconds()))


@dataclass
class Checkpoints:
    """The leader's scheduled anchors: one after its first pass, then one every ``every`` seconds."""

    every: float
    directory: Path
    key: Ed25519PrivateKey
    last: float | None = None
    #: also publish each checkpoint on this broker's checkpoint topic (``up --kafka``)
    bus: BusConfig | None = None

    def after(self, ledger: Ledger, done: Pass | None) -> Path | None:
        """Write a checkpoint if this pass led and one is due; its file, else None."""
        from ledger import anchors

        if done is None or done.role != "leader":
            return None
        if self.last is not None and time.monotonic() - self.last < self.every:
            return None
        try:
            data = anchors.make_checkpoint(ledger, self.key)
            path = anchors.default_checkpoint_path(self.directory, data)
            anchors.write_checkpoint(path, data)
        except (LedgerError, OSError) as exc:
            errors.print(f"up: checkpoint failed: {exc}; retrying after the next pass", markup=False)
            return None
        self.last = time.monotonic()
        errors.print(f"checkpoint: {path} (position {data['position']}, key {data['keyId']})", markup=False)
        if self.bus is not None:
            self._publish(data)
        return path

    def _publish(self, data: dict[str, Any]) -> None:
        from ledger.bus import BusError, publish_checkpoint

        assert self.bus is not None
        try:
            done = publish_checkpoint(self.bus, data)
        except BusError as exc:  # the file is written; the next checkpoint is published again
            errors.print(f"up: publishing the checkpoint failed: {exc}", markup=False)
            return
        errors.print(f"checkpoint published: {done.topic}@{done.offset}", markup=False)


def checkpoints(every: str | None, directory: Path | None, key: Path | None) -> Checkpoints | None:
    """The ``--checkpoint-*`` options checked before the loop starts (exit 2 on a bad one)."""
    if every is None:
        if directory is not None or key is not None:
            raise BadInput("--checkpoint-every", "is needed with --checkpoint-dir or --checkpoint-key")
        return None
    from ledger import anchors
    from ledger.embedded import default_home
    from ledger.fields import parse_duration

    try:
        seconds = parse_duration(every).total_seconds()
    except ValueError as exc:
        raise BadInput("--checkpoint-every", str(exc)) from None
    if seconds < 1:
        raise BadInput("--checkpoint-every", f"must be at least 1s (got {every!r})")
    try:
        signer, _, _ = anchors.load_or_create_key(key)
    except anchors.AnchorError as exc:
        raise BadInput("--checkpoint-key", str(exc)) from None
    return Checkpoints(seconds, directory or default_home() / "checkpoints", signer)


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
    clock: Annotated[
        str, typer.Option("--clock", help="wall: plan at the wall clock; simulated: time moves only by events")
    ] = "wall",
    checkpoint_every: Annotated[
        str | None,
        typer.Option(
            "--checkpoint-every",
            help="Sign the chain's head (audit checkpoint) after the first pass and then every DURATION",
        ),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option("--checkpoint-dir", help="Where scheduled checkpoints go (default $JOBTREE_HOME/checkpoints)"),
    ] = None,
    checkpoint_key: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint-key",
            help="Their signing key (default $JOBTREE_HOME/audit/checkpoint.key, created on first use)",
        ),
    ] = None,
    kafka: Annotated[
        str | None,
        typer.Option("--kafka", envvar="JOBTREE_KAFKA_BOOTSTRAP", help="also relay events to Kafka HOST:PORT"),
    ] = None,
) -> None:
    """Run the planner service and the simulated-cluster binder until Ctrl-C (one leader per database)."""
    if clock not in ("wall", "simulated"):
        raise BadInput("--clock", f"must be wall or simulated (got {clock!r})")
    from cli.commands.stream_options import bus_config
    from cli.commands.up_relay import start_relay

    anchoring = checkpoints(checkpoint_every, checkpoint_dir, checkpoint_key)
    bus = bus_config(kafka, None)
    if anchoring is not None:
        anchoring.bus = bus
    ledger = context.open_ledger()
    service = Up(ledger, Leadership(ledger, name=name or default_name()), simulated=clock == "simulated")
    output = context.options().output
    if once:
        with service.leadership:
            done = _guarded(service.step, once=True)
        if done is not None and not emit_data(done.row(), output):
            console.print(done.line(), markup=False)
        if anchoring is not None:
            anchoring.after(ledger, done)
        return
    halt = start_relay(ledger, bus)
    try:
        serve(service, interval, anchoring)
    finally:
        halt()


def serve(service: Up, interval: float, anchoring: Checkpoints | None = None) -> None:
    errors.print(f"jobtree up: {service.leadership.name}; Ctrl-C to stop", markup=False)
    previous: Pass | None = None
    with stop_on_signals() as stop, service.leadership, Listener(service.ledger) as listener:
        while not stop.requested:
            done = _guarded(service.step, once=False)
            if done is not None:
                if news(previous, done):
                    console.print(done.line(), markup=False)
                previous = done
            if anchoring is not None:
                anchoring.after(service.ledger, done)
            _wait(listener, _position(service), service.wait_seconds(interval, wall_clock()), stop)
    errors.print("jobtree up: stopped", markup=False)


def _position(service: Up) -> int:
    """Where the next wait starts: the leader's state, else the ledger's tip (0 while the database is away)."""
    if service.service:
        return service.service.state.last_position
    try:
        return service.ledger.last_position()
    except LedgerError:
        return 0  # a restart: wake on the next notification, retry the pass


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
