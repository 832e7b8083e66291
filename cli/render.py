"""Rendering: rich tables for people, stable JSON/YAML for tools."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from ledger.queries import FINISHED_PHASES

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], Any]]

def _width() -> int | None:
    """Terminals report their own width; pipes and files get a wide one, so rows stay whole."""
    if sys.stdout.isatty():
        return None
    return int(os.environ.get("COLUMNS") or 200)


console = Console(highlight=False, soft_wrap=True, width=_width())
errors = Console(stderr=True, highlight=False, soft_wrap=True)



def emit_data(data: Any, output: str) -> bool:
    """Print data as JSON or YAML; return False when the caller should draw a table."""
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
        return True
    if output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")
        return True
    if output == "csv":
        print(to_csv(data), end="")
        return True
    return False


def to_csv(data: Any) -> str:
    """Rows (a list of dicts, or one dict) as CSV; nested values are JSON-encoded."""
    import csv
    import io

    rows = data if isinstance(data, list) else [data]
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        cells = [row.get(k) for k in header]
        writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, dict | list) else v for v in cells])
    return out.getvalue()


def table(rows: Sequence[Row], columns: Sequence[Column], title: str | None = None, empty: str = "") -> None:
    if not rows:
        if empty:
            console.print(empty)
        return
    grid = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    last = len(columns) - 1
    for index, (header, _) in enumerate(columns):
        grid.add_column(header, no_wrap=index != last, overflow="fold" if index == last else "ellipsis")
    for row in rows:
        grid.add_row(*(_cell(get(row)) for _, get in columns))
    console.print(grid)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def short_time(value: str | None) -> str:
    """2026-01-01T12:00:00Z → 2026-01-01 12:00:00Z (readable, still exact)."""
    return value.replace("T", " ") if value else "-"


def key_values(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        console.print(f"[bold]{key.ljust(width)}[/bold]  {_cell(value)}")


RUN_COLUMNS: list[Column] = [
    ("NAMESPACE", lambda r: r["namespace"]),
    ("NAME", lambda r: r["name"]),
    ("OWNER", lambda r: r["owner"]),
    ("PHASE", lambda r: r["phase"]),
    ("GPU", lambda r: r["gpuType"]),
    ("ALLOC/DESIRED", lambda r: f"{r['width']['allocated']}/{r['width']['desired']}"),
    ("OWNED", lambda r: r["funding"]["owned"]),
    ("SHARED", lambda r: r["funding"]["shared"]),
    ("BORROWED", lambda r: r["funding"]["borrowed"]),
    ("UNFUNDED", lambda r: r["funding"]["unfunded"]),
    ("MESSAGE", lambda r: r["message"]),
]

LEASE_COLUMNS: list[Column] = [
    ("LEASE", lambda r: r["id"]),
    ("RUN", lambda r: r["run"]),
    ("GROUP", lambda r: r["group"]),
    ("ROLE", lambda r: r["role"]),
    ("NODE", lambda r: r["node"]),
    ("GPUS", lambda r: r["gpus"]),
    ("PAID BY", lambda r: r["envelope"] or "nobody"),
    ("CLASS", lambda r: r["class"]),
    ("START", lambda r: short_time(r["start"])),
    ("END", lambda r: short_time(r["end"])),
    ("REASON", lambda r: r["reason"] + (f" → {r['endReason']}" if r["endReason"] else "")),
]

NODE_COLUMNS: list[Column] = [
    ("NODE", lambda r: r["name"]),
    ("GPU", lambda r: r["gpuType"]),
    ("REGION", lambda r: r["labels"]["region"]),
    ("CLUSTER", lambda r: r["labels"]["cluster"]),
    ("DOMAIN", lambda r: r["labels"]["fabricDomain"]),
    ("GPUS", lambda r: r["gpus"]),
    ("USED", lambda r: r["used"]),
    ("FREE", lambda r: r["free"]),
    ("STATE", lambda r: node_state(r)),
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
    if run["message"]:
        line += f" — {run['message']}"
    return line


def run_settled(run: Row) -> bool:
    """Finished (or rejected by the intake), or Running at its desired width."""
    if run["phase"] in (*FINISHED_PHASES, "Rejected"):
        return True
    return bool(run["phase"] == "Running" and run["width"]["allocated"] >= run["width"]["desired"])
