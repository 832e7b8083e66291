"""`jobtree report --png FILE`: GPUs in use per fabric domain over time, and reservations.

The only module that imports matplotlib (Agg backend: no display needed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import typer
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from cli import context
from cli.context import open_app
from cli.errors import BadInput
from cli.render import console, emit_data
from ledger import accounting, queries

Row = dict[str, Any]
LAYERS = ("owned", "shared", "borrowed", "unfunded", "spare")
COLORS = {"owned": "#2b7bba", "shared": "#5fb760", "borrowed": "#f0a030", "unfunded": "#d6604d", "spare": "#b0b0b0"}


def _layer(lease: Row) -> str:
    return "spare" if lease["role"] == "Spare" else lease["class"]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # matplotlib's default date epoch


def _num(at: datetime) -> float:
    """A time as matplotlib's date number (days since its epoch)."""
    return (at - EPOCH).total_seconds() / 86400


def _parse(value: str | None, default: datetime) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else default


def series(leases: list[Row], now: datetime) -> tuple[list[datetime], dict[str, list[int]]]:
    """Change points and, per layer, the GPUs held from each point to the next (Fill not drawn)."""
    deltas: dict[datetime, dict[str, int]] = {}
    for lease in leases:
        if lease["role"] == "Fill":
            continue
        layer = _layer(lease)
        for at, sign in ((_parse(lease["start"], now), 1), (_parse(lease["end"], now), -1)):
            deltas.setdefault(at, dict.fromkeys(LAYERS, 0))[layer] += sign * lease["gpus"]
    times = sorted({*deltas, now})
    level = dict.fromkeys(LAYERS, 0)
    values: dict[str, list[int]] = {k: [] for k in LAYERS}
    for at in times:
        for k, d in deltas.get(at, {}).items():
            level[k] += d
        for k in LAYERS:
            values[k].append(level[k])
    return times, values


def _domain_panel(ax: Axes, title: str, capacity: int, leases: list[Row], now: datetime) -> None:
    times, values = series(leases, now)
    bottom = [0] * len(times)
    for layer in LAYERS:
        top = [b + v for b, v in zip(bottom, values[layer], strict=True)]
        if any(values[layer]):
            hatch = "//" if layer == "spare" else None
            xs = [_num(t) for t in times]
            ax.fill_between(xs, bottom, top, step="post", color=COLORS[layer], label=layer, linewidth=0, hatch=hatch)
        bottom = top
    ax.axhline(capacity, color="black", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, max(capacity, max(bottom, default=0)) * 1.1 or 1)
    ax.set_title(f"{title} — {capacity} GPUs", loc="left", fontsize=10)
    ax.set_ylabel("GPUs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)


def _reservation_panel(ax: Axes, reservations: list[Row], now: datetime) -> None:
    ax.set_title("Reservations (created → earliestStart)", loc="left", fontsize=10)
    if not reservations:
        ax.text(0.5, 0.5, "no reservations", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_yticks([])
        return
    for index, r in enumerate(reservations):
        end = r["earliestStart"] or now
        start = r["createdAt"] or end
        ax.barh(index, _num(end) - _num(start), left=_num(start), height=0.5,
                color="#7b68ee")  # fmt: skip
        ax.plot([_num(end)], [index], marker="|", color="black", markersize=12)
    ax.set_yticks(range(len(reservations)), [f"{r['run']} ({r['state']})" for r in reservations], fontsize=8)
    ax.invert_yaxis()


def draw(path: Path, nodes: list[Row], leases: list[Row], reservations: list[Row], now: datetime) -> int:
    """Write the PNG; return how many domain panels it has."""
    domains: dict[str, int] = {}
    node_domain: dict[str, str] = {}
    for n in nodes:
        key = f"{n['gpuType']} {n['labels']['cluster']}/{n['labels']['fabricDomain']}"
        domains[key] = domains.get(key, 0) + n["gpus"]
        node_domain[n["name"]] = key
    panels = len(domains) + 1
    ratios = [1.0] * len(domains) + [max(0.5, 0.12 * len(reservations))]
    fig, axes = plt.subplots(
        panels, 1, figsize=(11, 1.9 * sum(ratios) + 1.2), sharex=True, squeeze=False,
        gridspec_kw={"height_ratios": ratios},
    )  # fmt: skip
    for ax, (key, capacity) in zip(axes[:, 0], domains.items(), strict=False):
        _domain_panel(ax, key, capacity, [lease for lease in leases if node_domain.get(lease["node"]) == key], now)
    _reservation_panel(axes[-1, 0], reservations, now)
    handles = [Patch(facecolor=COLORS[k], hatch="//" if k == "spare" else None) for k in LAYERS]
    fig.suptitle(f"Jobtree: GPUs in use by fabric domain and class (as of {queries.iso_utc(now)})", x=0.01,
                 y=0.995, ha="left", fontsize=11)  # fmt: skip
    fig.legend(handles, LAYERS, loc="upper left", bbox_to_anchor=(0.01, 0.975), ncol=len(LAYERS), fontsize=9,
               frameon=False)  # fmt: skip
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    axes[-1, 0].xaxis.set_major_locator(locator)
    axes[-1, 0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (1.9 * sum(ratios) + 1.2)))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(domains)


def report(
    png: Annotated[Path, typer.Option("--png", metavar="FILE", help="Write the picture to this PNG file")],
) -> None:
    """Draw GPUs in use per fabric domain over time (by class) and the reservation timeline."""
    if png.suffix.lower() != ".png":
        raise BadInput("--png", f"the file name must end in .png (got {png.name})")
    if not png.parent.is_dir():
        raise BadInput("--png", f"directory {png.parent} does not exist")
    service = open_app()
    service.sync()
    nodes = queries.list_nodes(service.pg.engine)
    leases = accounting.lease_hours(service.pg.engine, accounting.Period(), service.now)
    reservations = accounting.reservation_timeline(service.pg.engine)
    domains = draw(png, nodes, leases, reservations, service.now)
    summary = {"file": str(png), "domains": domains, "leases": len(leases), "reservations": len(reservations)}
    if not emit_data(summary, context.options().output):
        console.print(f"wrote {png}: {domains} domain(s), {len(leases)} lease(s), {len(reservations)} reservation(s)")
