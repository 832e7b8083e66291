"""Every picture Jobtree draws, and the only module that imports matplotlib (Agg backend: no display).

- ``draw``: `jobtree report --png FILE`, GPUs in use per fabric domain over time (by
  class) and the reservation timeline;
- ``write_report``: `sim run --report DIR`, report.json and its PNG plots, written with
  fixed metadata so a report's files depend only on its numbers.

Imported only when a picture is asked for (``cli.commands.report``, ``cli.commands.sim``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ledger.queries import iso_utc
from ledger.vocabulary import USAGE_LAYERS

Row = dict[str, Any]
LAYERS = USAGE_LAYERS
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
    fig.suptitle(f"Jobtree: GPUs in use by fabric domain and class (as of {iso_utc(now)})", x=0.01,
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


# ---------------------------------------------------------------- sim run --report

_META = {"Software": None}  # no version stamp in the files


def write_report(report: Row, directory: Path) -> list[Path]:
    """Write ``report.json`` and the plots into ``directory``; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "report.json"
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    files = [out]
    for name, draw in (("utilization", _utilization), ("waits", _waits), ("cuts", _cuts), ("gpu-hours", _hours)):
        files.append(_save(draw(report), directory / f"{name}.png"))
    if "slurm" in report:
        files.append(_save(_slurm(report), directory / "slurm-waits.png"))
    return files


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=80, metadata=_META)
    plt.close(figure)
    return path


def _utilization(report: Row) -> Figure:
    figure, axes = plt.subplots(figsize=(9, 3.5))
    series = report["utilization"]["series"]
    hours = range(len(next(iter(series.values()), [])))
    classes = [k for k in report["utilization"]["classes"] if any(series[k])]
    if classes:
        axes.stackplot(hours, *[[100 * v for v in series[k]] for k in classes], labels=classes,
                       colors=[COLORS.get(k, "#718096") for k in classes], linewidth=0)  # fmt: skip
        axes.legend(loc="upper left", fontsize=8, ncol=len(classes))
    axes.set(xlabel="hours since start", ylabel="% of GPUs", ylim=(0, 100),
             title=f"GPU utilization by class — {report['scenario']} ({report['gpus']} GPUs)")  # fmt: skip
    return figure


def _bars(axes: Any, groups: dict[str, Row], title: str) -> None:
    names = list(groups)
    for offset, key in enumerate(("p50", "p90", "p99")):
        xs = [i + (offset - 1) * 0.27 for i in range(len(names))]
        axes.bar(xs, [groups[n][key] for n in names], width=0.27, label=key)
    axes.set_xticks(range(len(names)), [n.split(":")[-1] or n for n in names], rotation=30, fontsize=8)
    axes.set(ylabel="minutes", title=title)
    axes.legend(fontsize=8)


def _waits(report: Row) -> Figure:
    figure, axes = plt.subplots(figsize=(9, 3.5))
    waits = report["waitMinutes"]
    _bars(axes, {"(all)": waits["overall"], **waits["byTeam"]}, "Queue wait (submit → first admission)")
    return figure


def _cuts(report: Row) -> Figure:
    figure, axes = plt.subplots(figsize=(6, 3))
    killed = report["runsKilled"]
    labels = [*report["cuts"], "requeued", "failed"]
    values = [*report["cuts"].values(), sum(killed["requeued"].values()), sum(killed["failed"].values())]
    axes.bar(labels, values, color=["#e53e3e"] * len(report["cuts"]) + ["#718096", "#2d3748"])
    axes.set(ylabel="count", title="Cuts by kind (leases) and runs killed")
    return figure


def _hours(report: Row) -> Figure:
    figure, axes = plt.subplots(figsize=(7, 3.5))
    hours = report["gpuHoursByEnvelope"]
    axes.barh([k.split(":")[-1] for k in hours], list(hours.values()), color="#2b6cb0")
    axes.set(xlabel="GPU-hours", title="GPU-hours by envelope")
    return figure


def _slurm(report: Row) -> Figure:
    figure, axes = plt.subplots(figsize=(9, 3.5))
    teams = report["slurm"]["byTeam"]
    names = list(teams)
    for offset, (system, color) in enumerate((("slurm", "#718096"), ("jobtree", "#2b6cb0"))):
        xs = [i + (offset - 0.5) * 0.35 for i in range(len(names))]
        axes.bar(xs, [teams[n][system]["p90"] for n in names], width=0.35, label=f"{system} p90", color=color)
        axes.scatter(xs, [teams[n][system]["p50"] for n in names], color="black", s=12, zorder=3)
    axes.set_xticks(range(len(names)), [n.split(":")[-1] for n in names], fontsize=8)
    axes.set(ylabel="minutes (bar p90, dot p50)", title="Queue wait: Slurm's history vs Jobtree's policy, per team")
    axes.legend(fontsize=8)
    return figure
