"""A scenario's ``spec.workload``: many runs, one line each (generated and imported scenarios).

```yaml
workload:
  gpuType: H100-80GB          # every run's gpuType
  rows:                       # AT RUN OWNER GPUS RUNFOR [group=G] [spares=S] [borrow=A,B] [opportunistic] [waited=D]
    - "1m team-a/r-000001 org:gen:team-a 16 2h30m group=8"
    - "1m team-b/r-000002 org:gen:team-b 1 45m opportunistic waited=12m"
```

Each row is a Run submitted at ``AT`` (a duration from ``spec.start``) named ``RUN``
(``NAMESPACE/NAME``) for ``OWNER`` with ``GPUS`` GPUs, which completes ``RUNFOR`` after it
starts running. ``group=G`` sets ``locality.groupGPUs``, ``spares=S`` the spare nodes,
``borrow=A,B`` allows borrowing from those sponsors, ``opportunistic`` runs it unfunded
when nobody pays; ``waited=D`` is what the source system (e.g. Slurm) made it wait, kept
for the report only. Rows must be in time order; rows at the same ``AT`` are submitted
together, in row order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ledger.errors import ManifestError
from ledger.fields import API_VERSION, format_duration
from ledger.model import RunManifest
from ledger.parsing import validate_document
from service.errors import BadInput

FIELD = "spec.workload"
_FLAGS = ("group", "spares", "borrow", "waited")


@dataclass(frozen=True, slots=True)
class Row:
    """One parsed row (``line`` is its index in ``rows``)."""

    line: int
    at: timedelta
    run: str
    owner: str
    gpus: int
    run_for: timedelta
    group: int | None = None
    spares: int = 0
    borrow: tuple[str, ...] = ()
    opportunistic: bool = False
    waited: timedelta | None = None

    def manifest(self, gpu_type: str) -> RunManifest:
        namespace, _, name = self.run.partition("/")
        spec: dict[str, Any] = {"owner": self.owner, "resources": {"gpuType": gpu_type, "totalGPUs": self.gpus}}
        if self.group is not None:
            spec["locality"] = {"groupGPUs": self.group}
        if self.spares:
            spec["spares"] = self.spares
        if self.borrow or self.opportunistic:
            spec["funding"] = {"allowBorrow": bool(self.borrow), "sponsors": list(self.borrow),
                               "opportunistic": self.opportunistic}  # fmt: skip
        doc = {
            "apiVersion": API_VERSION,
            "kind": "Run",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        try:
            manifest = validate_document(doc)
        except ManifestError as exc:
            raise BadInput(f"{FIELD}.rows[{self.line}]", f"{exc.field}: {exc.rule}") from None
        assert isinstance(manifest, RunManifest)
        return manifest

    def text(self) -> str:
        """The row as written (``parse_row(row.text())`` gives the row back)."""
        parts = [format_duration(self.at), self.run, self.owner, str(self.gpus), format_duration(self.run_for)]
        if self.group is not None:
            parts.append(f"group={self.group}")
        if self.spares:
            parts.append(f"spares={self.spares}")
        if self.borrow:
            parts.append(f"borrow={','.join(self.borrow)}")
        if self.opportunistic:
            parts.append("opportunistic")
        if self.waited is not None:
            parts.append(f"waited={format_duration(self.waited)}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Workload:
    gpu_type: str
    rows: tuple[Row, ...]

    def batches(self) -> Iterator[tuple[Row, ...]]:
        """Rows grouped by ``at`` (consecutive, since rows are in time order)."""
        start = 0
        for index in range(1, len(self.rows) + 1):
            if index == len(self.rows) or self.rows[index].at != self.rows[start].at:
                yield self.rows[start:index]
                start = index


def mapping(value: Any, where: str, keys: tuple[str, ...], shape: str, what: str) -> dict[str, Any]:
    """``value`` as a mapping of only ``keys``, else BadInput naming the field."""
    if not isinstance(value, dict):
        raise BadInput(where, f"must be a mapping {shape}")
    for key in value:
        if key not in keys:
            raise BadInput(f"{where}.{key}", f"unknown field ({what} takes {' and '.join(keys)})")
    return value


def parse_workload(raw: Any) -> Workload:
    raw = mapping(raw, FIELD, ("gpuType", "rows"), "{gpuType: ..., rows: [...]}", "a workload")
    gpu_type = raw.get("gpuType")
    if not isinstance(gpu_type, str) or not gpu_type:
        raise BadInput(f"{FIELD}.gpuType", "is required: the GPU type every row's run asks for")
    lines = raw.get("rows")
    if not isinstance(lines, list):
        raise BadInput(f"{FIELD}.rows", "must be a list of rows (AT RUN OWNER GPUS RUNFOR [key=value ...])")
    rows: list[Row] = []
    for index, line in enumerate(lines):
        row = parse_row(index, line)
        if rows and row.at < rows[-1].at:
            raise BadInput(f"{FIELD}.rows[{index}]", "rows must be in time order")
        rows.append(row)
    return Workload(gpu_type, tuple(rows))


def parse_row(index: int, line: Any) -> Row:
    where = f"{FIELD}.rows[{index}]"
    if not isinstance(line, str):
        raise BadInput(where, "must be a string: AT RUN OWNER GPUS RUNFOR [key=value ...]")
    parts = line.split()
    if len(parts) < 5:
        raise BadInput(where, f"needs AT RUN OWNER GPUS RUNFOR (got {line!r})")
    at, run, owner, gpus, run_for, *flags = parts
    if run.count("/") != 1 or not all(run.split("/")):
        raise BadInput(where, f"RUN must be NAMESPACE/NAME (got {run!r})")
    values: dict[str, Any] = {"opportunistic": False}
    for flag in flags:
        key, eq, value = flag.partition("=")
        if flag == "opportunistic":
            values["opportunistic"] = True
        elif not eq or key not in _FLAGS or not value:
            raise BadInput(
                where, f"unknown flag {flag!r} (flags: group=G, spares=S, borrow=A,B, opportunistic, waited=D)"
            )
        else:
            values[key] = value
    return Row(
        index,
        _duration(at, where, "AT", allow_zero=True),
        run,
        owner,
        _count(gpus, where, "GPUS", 1),
        _duration(run_for, where, "RUNFOR"),
        group=_count(values["group"], where, "group", 1) if "group" in values else None,
        spares=_count(values.get("spares", "0"), where, "spares", 0),
        borrow=tuple(values["borrow"].split(",")) if "borrow" in values else (),
        opportunistic=values["opportunistic"],
        waited=_duration(values["waited"], where, "waited", allow_zero=True) if "waited" in values else None,
    )


def _count(value: str, where: str, name: str, least: int) -> int:
    if not value.isdigit() or int(value) < least:
        raise BadInput(where, f"{name} must be a whole number >= {least} (got {value!r})")
    return int(value)


def _duration(value: str, where: str, name: str, allow_zero: bool = False) -> timedelta:
    from service.scenario import parse_offset

    try:
        parsed = parse_offset(value, where)
    except BadInput as exc:
        raise BadInput(where, f"{name}: {exc.rule}") from None
    if parsed < timedelta(0) or (parsed == timedelta(0) and not allow_zero):
        raise BadInput(where, f"{name} must be a positive duration such as 90s, 10m or 1h30m (got {value!r})")
    return parsed
