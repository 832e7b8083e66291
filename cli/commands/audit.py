"""Audit commands: gpu-hours, verify, replay, history."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli import context
from cli.commands.runs import RunArg, split_run
from cli.commands.stream_options import KafkaOption, bus_config
from cli.context import open_app, open_ledger
from cli.errors import BadInput, CommandError, NotFound
from cli.render import Col, Column, console, emit_data, hours, key_values, table
from ledger import accounting, audit
from ledger.events import run_key
from ledger.stream import BusConfig
from planner.replay import replay

app = typer.Typer(help="Accounting and audit: GPU-hours, tamper and determinism checks, run history.",
                  no_args_is_help=True)  # fmt: skip


class AuditFailed(CommandError):
    """The audit found a violation or a difference (exit 1, after printing the report)."""


#: What a table or CSV names unfunded use by (JSON keeps null: nobody pays).
UNFUNDED = "(unfunded)"

_SUM_COLUMNS: list[Column] = [
    Col("GPU-HOURS", lambda r: hours(r["gpuHours"])),
    Col("CHARGED", lambda r: hours(r["chargedGPUHours"])),
    Col("OWNED", lambda r: hours(r["ownedGPUHours"]), priority=1),
    Col("SHARED", lambda r: hours(r["sharedGPUHours"]), priority=2),
    Col("BORROWED", lambda r: hours(r["borrowedGPUHours"]), priority=1),
    Col("UNFUNDED", lambda r: hours(r["unfundedGPUHours"]), priority=1),
    Col("SPARE", lambda r: hours(r["spareGPUHours"]), priority=3),
]
_GROUP_COLUMNS: dict[str, list[Column]] = {
    "envelope": [("ENVELOPE", lambda r: r["envelope"]), ("PAYER", lambda r: r["owner"])],
    "owner": [("PAYER", lambda r: r["owner"] or UNFUNDED)],
    "submitter": [("SUBMITTER", lambda r: r["submitter"])],
    "class": [("CLASS", lambda r: r["class"])],
    "run": [("RUN", lambda r: r["run"]), ("OWNER", lambda r: r["owner"])],
}


@app.command("gpu-hours")
def gpu_hours(
    by: Annotated[
        str, typer.Option("--by", help="envelope | owner (the payer) | submitter (who submitted the run) | class | run")
    ] = "envelope",
    start: Annotated[str | None, typer.Option("--from", help="Period start, RFC 3339 (inclusive)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Period end, RFC 3339 (exclusive)")] = None,
) -> None:
    """GPU-hours in [--from, --to): metered, charged (spares at the spare rate), and by class."""
    if by not in accounting.GROUPINGS:
        raise BadInput("--by", f"must be one of {', '.join(accounting.GROUPINGS)} (got {by!r})")
    try:
        period = accounting.make_period(start, end)
    except ValueError as exc:
        field, _, rule = str(exc).partition(": ")
        raise BadInput(field if rule else "--from/--to", rule or str(exc)) from None
    service = open_app()
    service.sync()
    rows = [r | period.as_row() for r in accounting.gpu_hours(service.pg.engine, by, period, service.now)]
    if context.options().output == "csv":  # a flat file names unfunded use instead of leaving a blank
        rows = [r | {k: UNFUNDED for k in ("owner", "envelope") if k in r and r[k] is None} for r in rows]
    if not emit_data(rows, context.options().output):
        table(rows, [*_GROUP_COLUMNS[by], *_SUM_COLUMNS], empty="No leases in the period.")


@app.command("verify")
def verify(
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            help="A checkpoint file (`audit checkpoint`) the ledger must still extend; repeat for several",
        ),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key", help="Trust only checkpoints signed by this key (a PEM public or private key file)"
        ),
    ] = None,
    from_stream: Annotated[
        bool,
        typer.Option(
            "--checkpoints-from-stream",
            help="Also every checkpoint published on the stream's checkpoint topic (needs --kafka)",
        ),
    ] = False,
    kafka: KafkaOption = None,
) -> None:
    """Check the hash chain, the invariants over the whole history, and the projections (and checkpoints)."""
    config = bus_config(kafka, None)
    if from_stream and config is None:
        raise BadInput("--checkpoints-from-stream", "needs a broker: --kafka HOST:PORT or $JOBTREE_KAFKA_BOOTSTRAP")
    if from_stream and public_key is None:
        raise BadInput("--checkpoints-from-stream", "needs --public-key: anyone may write to a topic")
    checkpoints, pinned = _read_checkpoints(checkpoint or [], public_key, from_stream)
    if from_stream and config is not None:
        checkpoints += _stream_checkpoints(config)
    report = audit.verify(open_ledger(), checkpoints, pinned)
    if not emit_data(report.as_row(), context.options().output):
        table([c.as_row() for c in report.checks],
              [("CHECK", lambda r: r["check"]), ("OK", lambda r: "yes" if r["ok"] else "NO"),
               ("RESULT", lambda r: r["message"])])  # fmt: skip
        if report.violations:
            first = report.violations[0]
            console.print(f"first violation at {_where(first)}: {first['message']}", markup=False)
    if not report.ok:
        raise AuditFailed(
            f"audit verify: {len(report.violations)} violation(s); first: {report.violations[0]['message']}"
        )


def _where(violation: dict[str, Any]) -> str:
    if not violation.get("position"):
        return "the ledger"
    if violation.get("type") is None:  # e.g. a position a truncation removed
        return f"position {violation['position']}"
    return f"event {violation['position']} ({violation['type']})"


Checkpoints = list[tuple[str, dict[str, Any]]]


def _read_checkpoints(
    files: list[Path], public_key: Path | None, from_stream: bool = False
) -> tuple[Checkpoints, str | None]:
    """Every checkpoint file parsed (exit 2 naming the file on a bad one) and the pinned key, before any database."""
    if not files and not from_stream:
        if public_key is not None:
            rule = "pins the key of checkpoints: give them with --checkpoint FILE or --checkpoints-from-stream"
            raise BadInput("--public-key", rule)
        return [], None
    from ledger import anchors

    try:
        pinned = anchors.pinned_public_key(public_key) if public_key is not None else None
    except anchors.AnchorError as exc:
        raise BadInput("--public-key", str(exc)) from None
    try:
        return [(str(f), anchors.read_checkpoint(f)) for f in files], pinned
    except anchors.AnchorError as exc:
        raise BadInput(exc.field, exc.rule) from None


def _stream_checkpoints(config: BusConfig) -> Checkpoints:
    """Every checkpoint on the checkpoint topic; a record that is not one is a bad input (exit 2)."""
    from ledger import anchors
    from ledger.bus import BusError, checkpoint_config, read_checkpoints

    topic = checkpoint_config(config).topic
    try:
        records = read_checkpoints(config)
    except BusError as exc:
        raise CommandError(f"--checkpoints-from-stream: {exc}") from None
    found: Checkpoints = []
    for offset, data in records:
        source = f"{topic}@{offset}"
        try:
            found.append((source, anchors.checked_checkpoint(data, f"--checkpoints-from-stream {source}")))
        except anchors.AnchorError as exc:
            raise BadInput(exc.field, exc.rule) from None
    if not found:
        raise BadInput("--checkpoints-from-stream", f"no checkpoint on {topic} at {config.bootstrap}")
    return found


@app.command("checkpoint")
def checkpoint(
    key: Annotated[
        Path | None,
        typer.Option(
            "--key", help="Ed25519 signing key (PEM); default $JOBTREE_HOME/audit/checkpoint.key, created on first use"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Checkpoint file to write; default $JOBTREE_HOME/checkpoints/checkpoint-<time>-<position>.json",
        ),
    ] = None,
    kafka: KafkaOption = None,
) -> None:
    """Sign the chain's head (position, hash) with a key kept outside the database; write it to a file
    (and publish it on the stream's checkpoint topic when a broker is configured)."""
    from ledger import anchors
    from ledger.embedded import default_home

    config = bus_config(kafka, None)
    try:
        signer, key_path, created = anchors.load_or_create_key(key)
    except anchors.AnchorError as exc:
        raise BadInput(f"--key {exc.field}" if key is None else "--key", exc.rule) from None
    data = anchors.make_checkpoint(open_ledger(), signer)
    path = out or anchors.default_checkpoint_path(default_home() / "checkpoints", data)
    anchors.write_checkpoint(path, data)
    published = _publish(config, data, path) if config is not None else None
    row = {"file": str(path), "position": data["position"], "hash": data["hash"], "keyId": data["keyId"],
           "key": str(key_path), "keyCreated": created, "published": published}  # fmt: skip
    if not emit_data(row, context.options().output):
        key_values([("checkpoint", row["file"]), ("position", row["position"]), ("hash", row["hash"]),
                    ("key", f"{row['key']} (id {row['keyId']}{', created now' if created else ''})"),
                    *([("published", published)] if published else [])])  # fmt: skip


def _publish(config: BusConfig, data: dict[str, Any], path: Path) -> str:
    """``topic@offset`` of the published checkpoint; a broker failure is exit 1 (the file is kept)."""
    from ledger.bus import BusError, publish_checkpoint

    try:
        done = publish_checkpoint(config, data)
    except BusError as exc:
        raise CommandError(f"the checkpoint is written to {path}, but publishing it failed: {exc}") from None
    return f"{done.topic}@{done.offset}"


@app.command("keygen")
def keygen(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write the new private key (mode 0600); default $JOBTREE_HOME/audit/checkpoint.key"
        ),
    ] = None,
) -> None:
    """Create an Ed25519 signing key for `audit checkpoint` (never overwrites one); print its public key."""
    from ledger import anchors

    path = out or anchors.default_key_path()
    try:
        created = anchors.generate_key(path)
    except anchors.AnchorError as exc:
        raise BadInput("--out", exc.rule if exc.field == str(path) else str(exc)) from None
    public = anchors.public_key_text(created.public_key())
    row = {"key": str(path), "keyId": anchors.key_id(public), "publicKey": public,
           "publicKeyPem": anchors.public_key_pem(created)}  # fmt: skip
    if not emit_data(row, context.options().output):
        key_values([("key", row["key"]), ("key id", row["keyId"]), ("public key", row["publicKey"])])
        console.print(row["publicKeyPem"], markup=False, end="")


@app.command("replay")
def replay_cmd() -> None:
    """Re-fold the ledger and re-run the planner at every decision point; report differences."""
    result = replay(open_ledger().read())
    data = {
        "events": result.events,
        "decisionPoints": result.decision_points,
        "decisions": result.decisions,
        "differences": [
            {"position": d.position, "at": d.at, "recorded": d.recorded, "replayed": d.replayed, "message": d.message}
            for d in result.differences
        ],
    }
    if not emit_data(data, context.options().output):
        key_values([("events", result.events), ("decision points", result.decision_points),
                    ("decisions", result.decisions), ("differences", len(result.differences))])  # fmt: skip
        for d in result.differences[:20]:
            console.print(f"{d.at}: {d.message}", markup=False)
    if result.differences:
        raise AuditFailed(f"audit replay: {len(result.differences)} decision(s) differ; first: "
                          f"{result.differences[0].message}")  # fmt: skip


@app.command("history")
def history(run: RunArg) -> None:
    """A run's full timeline, every incarnation: submitted, admitted, leases with reasons and seeds."""
    namespace, name = split_run(run)
    rows = audit.run_timeline(open_ledger(), run_key(namespace, name))
    if not rows:
        raise NotFound(f"no events mention run {namespace}/{name}")
    if not emit_data(rows, context.options().output):
        table(rows, [("#", lambda r: r["incarnation"]), ("POS", lambda r: r["position"]),
                     ("AT", lambda r: r["at"]), ("EVENT", lambda r: r["type"]),
                     ("ACTOR", lambda r: r["actor"]), ("WHAT", lambda r: r["summary"])])  # fmt: skip


_PERIOD_COLUMNS: list[Column] = [
    Col("ENVELOPE", lambda r: r["envelope"] or f"{UNFUNDED} nobody pays"),
    Col("GPU", lambda r: r["gpuType"], priority=4),
    Col("CAP", lambda r: r["concurrency"], priority=3),
    Col("MAX GPU-H", lambda r: hours(r["maxGPUHours"]), priority=2),
    Col("OWNED", lambda r: hours(r["ownedGPUHours"])),
    Col("SHARED", lambda r: hours(r["sharedGPUHours"]), priority=1),
    Col("BORROWED", lambda r: hours(r["borrowedGPUHours"]), priority=1),
    Col("UNFUNDED", lambda r: hours(r["unfundedGPUHours"])),
    Col("SPARE", lambda r: hours(r["spareGPUHours"]), priority=2),
    Col("CHARGED", lambda r: hours(r["chargedGPUHours"])),
]


def budget_period_usage(owner: str | None, period: str) -> None:
    """`budgets usage --period P`: GPU-hours per envelope in the period (owned / shared /
    borrowed charged, spares at the spare rate) and the unfunded hours metered for nobody."""
    service = open_app()
    service.sync()
    try:
        parsed = accounting.parse_period(period, service.now)
    except ValueError as exc:
        raise BadInput("--period", str(exc)) from None
    rows = accounting.envelope_period_usage(service.pg.engine, parsed, service.now, owner)
    if context.options().output == "csv":
        rows = [r | {"envelope": r["envelope"] or UNFUNDED} for r in rows]
    if not emit_data(rows, context.options().output):
        span = f"{parsed.as_row()['from'] or 'the beginning'} .. {parsed.as_row()['to'] or 'now'}"
        table(rows, _PERIOD_COLUMNS, title=f"GPU-hours {span}")
