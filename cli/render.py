"""Rendering: plain kubectl-style tables for people, stable JSON/YAML/CSV for tools.

Tables are aligned columns separated by three spaces; a cell is never cut. When the
terminal is narrower than the table, columns with a ``priority`` are dropped, highest
first, as kubectl drops its priority columns; ``-o wide`` adds the ``wide`` columns
(MESSAGE and the like). Times are RFC 3339 in UTC everywhere (``2026-01-01T12:00:00Z``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import yaml
from rich.console import Console

from cli import context
from ledger.vocabulary import FINISHED_PHASES, RunPhase

Row = dict[str, Any]
Getter = Callable[[Row], Any]
GAP = "   "


class _YamlDumper(yaml.SafeDumper):
    """The safe dumper, taught that a vocabulary member is its string value."""


_YamlDumper.add_multi_representer(StrEnum, lambda dumper, value: dumper.represent_str(str(value)))


@dataclass(frozen=True, slots=True)
class Col:
    """A table column: 0 ``priority`` is always shown; higher numbers are dropped first
    when the terminal is too narrow. ``wide`` columns appear only with ``-o wide``."""

    header: str
    get: Getter
    priority: int = 0
    wide: bool = False
    free_text: bool = False  # a last column of prose: it may run past the edge (wrap) rather than drop others


Column = Col | tuple[str, Getter]


def _width() -> int | None:
    """Terminals report their own width; pipes and files get a wide one, so rows stay whole."""
    if sys.stdout.isatty():
        return None
    return int(os.environ.get("COLUMNS") or 200)


console = Console(highlight=False, soft_wrap=True, width=_width())
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def output_width() -> int | None:
    """How wide a table may be: the terminal's width (``COLUMNS`` first), else ``COLUMNS``, else unlimited."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    env = os.environ.get("COLUMNS", "")
    return int(env) if env.isdigit() and int(env) > 0 else None


def emit_data(data: Any, output: str, kind: str | None = None) -> bool:
    """Print data as JSON, YAML, CSV or names; return False when the caller should draw a table."""
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
        return True
    if output == "yaml":
        print(yaml.dump(data, Dumper=_YamlDumper, sort_keys=False, default_flow_style=False), end="")
        return True
    if output == "csv":
        print(to_csv(data), end="")
        return True
    if output == "name":
        for row in data if isinstance(data, list) else [data]:
            print(name_of(row, kind))
        return True
    return False


def name_of(row: Row, kind: str | None = None) -> str:
    """``-o name``: ``run/NAMESPACE/NAME`` (which every RUN argument accepts), ``node/NAME``, ``lease/ID``…"""
    if "namespace" in row and "name" in row:
        return f"{kind or 'run'}/{row['namespace']}/{row['name']}"
    for key in ("name", "id", "envelope", "owner"):
        if row.get(key) is not None:
            return f"{kind}/{row[key]}" if kind else str(row[key])
    return json.dumps(row, default=str)


def flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Scalars under dotted keys: ``{"width": {"min": 8}}`` → ``("width.min", 8)``; list items by index;
    a list of scalars is one cell, joined by ``;``."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list | tuple) and any(isinstance(v, dict | list | tuple) for v in data):
        for index, value in enumerate(data):
            yield from flatten(value, f"{prefix}.{index}" if prefix else str(index))
    elif isinstance(data, list | tuple):
        yield prefix, ";".join(str(v) for v in data)
    else:
        yield prefix, data


def to_csv(data: Any) -> str:
    """Rows (a list of dicts, or one dict) as flat CSV: one column per scalar, nested keys dotted."""
    import csv
    import io

    rows = [dict(flatten(row)) for row in (data if isinstance(data, list) else [data])]
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else _csv_cell(row[k]) for k in header])
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    return str(value).lower() if isinstance(value, bool) else value


def _columns(columns: Sequence[Column], wide: bool) -> list[Col]:
    out = [c if isinstance(c, Col) else Col(c[0], c[1]) for c in columns]
    return [c for c in out if wide or not c.wide]


def fit(headers: list[str], cells: list[list[str]], priorities: list[int], limit: int | None) -> list[int]:
    """The indexes of the columns to show: drop the highest priority (rightmost first) until the table fits."""
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    keep = list(range(len(headers)))

    def total() -> int:
        return sum(widths[i] for i in keep) + len(GAP) * (len(keep) - 1)

    while limit is not None and total() > limit:
        droppable = [i for i in keep if priorities[i] > 0]
        if not droppable:
            break
        keep.remove(max(droppable, key=lambda i: (priorities[i], i)))
    return keep


def format_table(rows: Sequence[Row], columns: Sequence[Column], limit: int | None, wide: bool = False) -> list[str]:
    """The table's lines (no trailing spaces), fitted to ``limit`` characters where dropping columns can."""
    cols = _columns(columns, wide)
    headers = [c.header for c in cols]
    cells = [[_cell(c.get(row)) for c in cols] for row in rows]
    measured = [[cell if not c.free_text else "" for c, cell in zip(cols, row, strict=True)] for row in cells]
    keep = fit(headers, measured, [c.priority for c in cols], None if wide else limit)
    widths = {i: max(len(headers[i]), *(len(r[i]) for r in cells)) for i in keep}
    lines = []
    for line in [headers, *cells]:
        lines.append(GAP.join(line[i].ljust(widths[i]) for i in keep).rstrip())
    return lines


def table(rows: Sequence[Row], columns: Sequence[Column], title: str | None = None, empty: str = "") -> None:
    if not rows:
        if empty:
            print(empty)
        return
    if title:
        print(title)
    wide = context.options().output == "wide"
    sys.stdout.write("".join(f"{line}\n" for line in format_table(rows, columns, output_width(), wide)))
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def short_time(value: str | None) -> str:
    """Times print as the ledger stores them: RFC 3339 in UTC (one format everywhere)."""
    return value or "-"


def hours(value: float | None) -> str:
    """GPU-hours and odds in tables: 2 decimals (JSON keeps full precision)."""
    return "-" if value is None else f"{value:.2f}"


def age(since: str | None, now: datetime | None = None) -> str:
    """kubectl's AGE: ``45s``, ``12m``, ``3h5m``, ``2d4h``."""
    if not since:
        return "-"
    start = datetime.fromisoformat(since.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - start).total_seconds())
    return duration(max(seconds, 0))


def duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours_ = seconds // 60, seconds // 3600
    if hours_ < 3:
        return f"{minutes}m" if minutes < 60 else f"{hours_}h{minutes % 60}m"
    days = hours_ // 24
    return f"{hours_}h" if days < 2 else f"{days}d{hours_ % 24}h"


def key_values(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        console.print(f"[bold]{key.ljust(width)}[/bold]  {_cell(value)}")


def _eta(r: Row) -> str:
    return short_time(r.get("eta"))


def _alloc(r: Row) -> str:
    return f"{r['width']['allocated']}/{r['width']['desired']}"


RUN_COLUMNS: list[Column] = [
    Col("NAMESPACE", lambda r: r["namespace"], priority=3),
    Col("NAME", lambda r: r["name"]),
    Col("OWNER", lambda r: r["owner"], priority=2),
    Col("PHASE", lambda r: r["phase"]),
    Col("GPU", lambda r: r["gpuType"], wide=True),
    Col("ALLOC/DESIRED", _alloc),
    Col("ETA", _eta, priority=1),
    Col("AGE", lambda r: r.get("age"), priority=1),
    Col("OWNED", lambda r: r["funding"]["owned"], wide=True),
    Col("SHARED", lambda r: r["funding"]["shared"], wide=True),
    Col("BORROWED", lambda r: r["funding"]["borrowed"], wide=True),
    Col("UNFUNDED", lambda r: r["funding"]["unfunded"], wide=True),
    Col("MESSAGE", lambda r: r["message"], wide=True, free_text=True),
]

LEASE_COLUMNS: list[Column] = [
    Col("LEASE", lambda r: r["id"]),
    Col("RUN", lambda r: r["run"], priority=1),
    Col("GROUP", lambda r: r["group"], priority=4),
    Col("ROLE", lambda r: r["role"]),
    Col("NODE", lambda r: r["node"], priority=2),
    Col("GPUS", lambda r: r["gpus"]),
    Col("PAID BY", lambda r: r["envelope"] or "nobody"),
    Col("CLASS", lambda r: r["class"]),
    Col("START", lambda r: short_time(r["start"]), priority=3),
    Col("END", lambda r: short_time(r["end"]), wide=True),
    Col("REASON", lambda r: r["reason"] + (f" → {r['endReason']}" if r["endReason"] else ""), wide=True),
    Col("SEED", lambda r: r.get("seed"), wide=True),
]

NODE_COLUMNS: list[Column] = [
    Col("NODE", lambda r: r["name"]),
    Col("GPU", lambda r: r["gpuType"], priority=2),
    Col("REGION", lambda r: r["labels"]["region"], priority=3),
    Col("CLUSTER", lambda r: r["labels"]["cluster"], priority=1),
    Col("DOMAIN", lambda r: r["labels"]["fabricDomain"]),
    Col("GPUS", lambda r: r["gpus"]),
    Col("USED", lambda r: r["used"]),
    Col("FREE", lambda r: r["free"]),
    Col("STATE", lambda r: node_state(r)),
]


def node_state(r: Row) -> str:
    """``failed``, ``cordoned (manual)`` / ``cordoned (NodeFailure)``, or ``ready``."""
    if r["failed"]:
        return "failed"
    if r["cordoned"]:
        return f"cordoned ({r['cordonReason']})" if r.get("cordonReason") else "cordoned"
    return "ready"


def run_summary(run: Row) -> str:
    """One line for a run: phase, allocated/desired width, funding split, what is short."""
    width = run["width"]
    funding = ", ".join(f"{k} {v}" for k, v in run["funding"].items() if v)
    line = f"{run['namespace']}/{run['name']}: {run['phase']}, {width['allocated']}/{width['desired']} GPUs"
    line += f" (min {width['min']}, max {width['max']})"
    if funding:
        line += f"; {funding}"
    if run.get("eta"):
        line += f"; ETA {run['eta']}"
    if run["message"]:
        line += f" — {run['message']}"
    return line


def run_settled(run: Row) -> bool:
    """Finished (or rejected by the intake), or Running at its desired width."""
    if run["phase"] in (*FINISHED_PHASES, RunPhase.REJECTED):
        return True
    return bool(run["phase"] == RunPhase.RUNNING and run["width"]["allocated"] >= run["width"]["desired"])
