"""`sim run --report DIR`: report.json and its PNG plots (the only module that imports matplotlib).

Plots are written with the Agg backend (no display needed) and fixed metadata, so a
report's files depend only on its numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

Row = dict[str, Any]
_META = {"Software": None}  # no version stamp in the files
_COLORS = {"owned": "#2b6cb0", "shared": "#38a169", "borrowed": "#d69e2e", "unfunded": "#a0aec0", "spare": "#805ad5"}


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
                       colors=[_COLORS.get(k, "#718096") for k in classes], linewidth=0)  # fmt: skip
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
