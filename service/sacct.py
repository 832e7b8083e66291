"""`jobtree sim import-sacct FILE`: a Slurm accounting export as a scenario (docs/simulator.md).

The export is ``sacct --parsable2 --allocations --format=JobID,Submit,Start,End,Elapsed,
AllocTRES,Account,User,Partition,State`` (a header line, then ``|``-separated rows). Each job
that got GPUs and ran becomes one workload row: submitted at its ``Submit`` (the earliest
Submit is ``spec.start``; times without a zone are read as UTC), its GPUs from
``AllocTRES`` ``gres/gpu=N`` (or ``gres/gpu:<type>=N``), owner ``org:slurm:<account>``,
run ``<account>/j-<jobid>``, running for its ``Elapsed``, and ``waited`` = Start - Submit
(what Slurm made it wait, for the report). Jobs with no GPUs or that never started
(``Start`` Unknown/None or ``Elapsed`` 0) are skipped and counted. A row that cannot be
read stops the import, naming its line (exit 2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.fields import API_VERSION, format_duration
from service.errors import BadInput
from service.workload import Row

COLUMNS = ("JobID", "Submit", "Start", "End", "Elapsed", "AllocTRES", "Account", "User", "Partition", "State")
_GPUS = re.compile(r"(?:^|,)gres/gpu(?::[^=,]+)?=(\d+)(?:,|$)")
_ELAPSED = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")
_LABEL = re.compile(r"[^a-z0-9-]+")
_NOT_STARTED = ("", "Unknown", "None")


@dataclass(frozen=True, slots=True)
class Job:
    line: int
    job_id: str
    submit: datetime
    start: datetime
    elapsed: timedelta
    gpus: int
    account: str


@dataclass(slots=True)
class Imported:
    jobs: list[Job] = field(default_factory=list)
    skipped: int = 0


def read_sacct(text_value: str, source: str) -> Imported:
    lines = text_value.splitlines()
    if not lines or lines[0].strip().split("|") != list(COLUMNS):
        raise BadInput(f"{source}:1", f"the header must be {'|'.join(COLUMNS)} (sacct --parsable2 --format=...)")
    out = Imported()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        job = _job(line, f"{source}:{number}", number)
        if job is None:
            out.skipped += 1
        else:
            out.jobs.append(job)
    if not out.jobs:
        raise BadInput(source, "no job in the export got GPUs and ran (nothing to simulate)")
    return out


def _job(line: str, where: str, number: int) -> Job | None:
    cells = line.rstrip("\n").split("|")
    if len(cells) != len(COLUMNS):
        raise BadInput(where, f"has {len(cells)} fields, the header {len(COLUMNS)} ({'|'.join(COLUMNS)})")
    row = dict(zip(COLUMNS, cells, strict=True))
    if not row["JobID"]:
        raise BadInput(where, "JobID is empty")
    submit = _time(row["Submit"], where, "Submit")
    elapsed = _elapsed(row["Elapsed"], where)
    match = _GPUS.search(row["AllocTRES"])
    gpus = int(match.group(1)) if match else 0
    if row["Start"] in _NOT_STARTED or elapsed <= timedelta(0) or gpus <= 0:
        return None
    start = _time(row["Start"], where, "Start")
    if start < submit:
        raise BadInput(where, f"Start {row['Start']} is before Submit {row['Submit']}")
    if not _LABEL.sub("", row["Account"].lower()):
        raise BadInput(where, "Account is empty (it becomes the run's owner)")
    return Job(number, row["JobID"], submit, start, elapsed, gpus, row["Account"])


def _time(value: str, where: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(where, f"{name} {value!r} is not a time like 2026-01-05T09:00:00") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _elapsed(value: str, where: str) -> timedelta:
    match = _ELAPSED.match(value)
    if match is None:
        raise BadInput(where, f"Elapsed {value!r} is not [D-][HH:]MM:SS")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def label(value: str) -> str:
    return _LABEL.sub("-", value.lower()).strip("-")[:40].strip("-")


def scenario_from(
    imported: Imported, name: str, gpu_type: str, gpus_per_node: int, nodes: int | None
) -> dict[str, Any]:
    """The scenario: a fleet (``nodes``, else the fewest that held Slurm's peak), a budget per account."""
    jobs = sorted(imported.jobs, key=lambda j: (j.submit, j.line))
    start = jobs[0].submit
    peaks = _peaks(jobs)
    fleet = nodes if nodes is not None else max(1, math.ceil(max(peaks.values()) / gpus_per_node) if peaks else 1)
    end = max(j.start + j.elapsed for j in jobs)
    rows = [_row(index, job, start) for index, job in enumerate(jobs)]
    accounts = sorted({j.account for j in jobs})
    return {
        "apiVersion": API_VERSION,
        "kind": "Scenario",
        "metadata": {"name": name},
        "spec": {
            "start": start.isoformat().replace("+00:00", "Z"),
            "nodes": [_node(i, gpu_type, gpus_per_node) for i in range(fleet)],
            "budgets": [_budget(a, gpu_type, peaks.get(a, 1)) for a in accounts],
            "steps": [{"at": format_duration(end - start), "advance": True}],
            "workload": {"gpuType": gpu_type, "rows": [r.text() for r in rows]},
        },
    }


def _row(index: int, job: Job, start: datetime) -> Row:
    run = f"{label(job.account)}/j-{label(job.job_id)}"
    minute = timedelta(minutes=1)
    run_for = max(minute, job.elapsed)
    return Row(index, job.submit - start, run, owner(job.account), job.gpus, run_for, waited=job.start - job.submit)


def owner(account: str) -> str:
    return f"org:slurm:{label(account)}"


def _peaks(jobs: list[Job]) -> dict[str, int]:
    """The most GPUs each account held at once in Slurm (its envelope here), and ``""`` for all."""
    edges: list[tuple[datetime, int, str, int]] = []
    for job in jobs:
        edges += [(job.start, 1, job.account, job.gpus), (job.start + job.elapsed, 0, job.account, -job.gpus)]
    now: dict[str, int] = {}
    peaks: dict[str, int] = {}
    for _, _, account, delta in sorted(edges):
        for key in (account, ""):
            now[key] = now.get(key, 0) + delta
            peaks[key] = max(peaks.get(key, 0), now[key])
    return peaks


def _node(index: int, gpu_type: str, per_node: int) -> dict[str, Any]:
    labels = {"region": "slurm", "cluster": "c1", "fabricDomain": f"d{index // 32:03d}"}
    return {"name": f"n-{index:05d}", "gpuType": gpu_type, "gpus": per_node, "labels": labels}


def _budget(account: str, gpu_type: str, peak: int) -> dict[str, Any]:
    envelope = {"name": "slurm", "gpuType": gpu_type, "selector": {"cluster": "c1"}, "concurrency": max(1, peak)}
    return {
        "apiVersion": API_VERSION,
        "kind": "Budget",
        "metadata": {"name": label(account)},
        "spec": {"owner": owner(account), "envelopes": [envelope]},
    }
