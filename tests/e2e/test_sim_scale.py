"""`sim generate`, `sim import-sacct` and `sim run --report`: small fleets, real planner and ledger."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from service.sacct import COLUMNS
from tests.e2e.conftest import CLI, EXAMPLES

MONTH = EXAMPLES / "sacct" / "month.txt"
PNG = b"\x89PNG\r\n\x1a\n"


def _generate(jt: CLI, out: Path, seed: int = 5) -> None:
    result = jt("sim", "generate", "--days", "0.25", "--nodes", "16", "--runs", "12", "--seed", str(seed),
                "--out", str(out))  # fmt: skip
    assert result.code == 0, result.err


@pytest.mark.no_planner
def test_generate_run_report_on_a_small_fleet_twice_byte_identical(jt: CLI, tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    _generate(jt, first)
    _generate(jt, second)
    assert first.read_bytes() == second.read_bytes(), "same seed, same scenario"
    _generate(jt, tmp_path / "other.yaml", seed=6)
    assert (tmp_path / "other.yaml").read_bytes() != first.read_bytes()

    doc = yaml.safe_load(first.read_text())
    rows = doc["spec"]["workload"]["rows"]
    assert len(rows) == 12 and len(doc["spec"]["nodes"]) == 16 and len(doc["spec"]["budgets"]) == 8
    owners = {b["spec"]["owner"] for b in doc["spec"]["budgets"]}
    assert all(row.split()[2] in owners for row in rows)
    assert len({b["spec"]["parents"][0] for b in doc["spec"]["budgets"]}) == 4, "8 teams in 4 families"

    reports = []
    for name in ("r1", "r2"):
        result = jt("sim", "run", str(first), "--report", str(tmp_path / name), "-o", "json")
        assert result.code == 0, result.err
        reports.append((tmp_path / name / "report.json").read_bytes())
    assert reports[0] == reports[1], "two runs of one scenario: byte-identical report"
    report = json.loads(reports[0])
    assert report == json.loads(result.out)
    assert report["gpus"] == 16 * 8
    assert report["runs"]["submitted"] == 12
    assert report["runs"]["admitted"] + report["runs"]["stillWaiting"] == 12
    series = report["utilization"]["series"]
    assert set(series) == {"owned", "shared", "borrowed", "unfunded", "spare"}
    assert all(len(v) == 6 for v in series.values()), "6 hourly buckets in 6 hours"
    assert all(0 <= sum(hour) <= 1 for hour in zip(*series.values(), strict=True))
    assert sum(map(sum, series.values())) > 0
    waits = report["waitMinutes"]
    assert waits["overall"]["count"] == report["runs"]["admitted"]
    assert 0 <= waits["overall"]["p50"] <= waits["overall"]["p90"] <= waits["overall"]["p99"]
    assert sum(t["count"] for t in waits["byTeam"].values()) == waits["overall"]["count"]
    assert set(report["cuts"]) == {"reclaim", "drop-spare", "shrink", "lottery"}
    assert sum(report["gpuHoursByEnvelope"].values()) == pytest.approx(
        sum(map(sum, series.values())) * 16 * 8, rel=0.01
    )
    for png in ("utilization", "waits", "cuts", "gpu-hours"):
        assert (tmp_path / "r1" / f"{png}.png").read_bytes().startswith(PNG)
    assert not (tmp_path / "r1" / "slurm-waits.png").exists(), "no source-system waits in a generated scenario"


def _independent_parse() -> list[dict[str, str]]:
    lines = MONTH.read_text().splitlines()
    return [dict(zip(COLUMNS, line.split("|"), strict=True)) for line in lines[1:] if line]


@pytest.mark.no_planner
def test_import_sacct_maps_jobs_owners_and_gpus(jt: CLI, tmp_path: Path) -> None:
    out = tmp_path / "month.yaml"
    result = jt("sim", "import-sacct", str(MONTH), "--out", str(out))
    assert result.code == 0, result.err
    jobs = _independent_parse()
    gpu_jobs = [j for j in jobs if "gres/gpu=" in j["AllocTRES"] and j["Start"] != "Unknown"]
    assert "240 GPU jobs imported, 12 skipped" in result.err
    doc = yaml.safe_load(out.read_text())
    rows = {r.split()[1]: r.split() for r in doc["spec"]["workload"]["rows"]}
    assert len(rows) == len(gpu_jobs) == 240
    for job in gpu_jobs:
        _at, _run, owner, gpus, _run_for, *flags = rows[f"{job['Account']}/j-{job['JobID']}"]
        assert owner == f"org:slurm:{job['Account']}"
        assert int(gpus) == int(job["AllocTRES"].split("gres/gpu=")[1].split(",")[0])
        assert any(f.startswith("waited=") for f in flags)
    assert {b["spec"]["owner"] for b in doc["spec"]["budgets"]} == {f"org:slurm:{j['Account']}" for j in gpu_jobs}
    assert doc["spec"]["start"] == gpu_jobs[0]["Submit"] + "Z"
    first = rows[f"{gpu_jobs[0]['Account']}/j-{gpu_jobs[0]['JobID']}"]
    assert first[0] == "0s" and first[4] == "57m27s" and first[5] == "waited=16m11s"
    peaks = _peaks(gpu_jobs)
    assert len(doc["spec"]["nodes"]) == math.ceil(peaks["*"] / 8), "the fewest nodes that held the peak"
    for budget in doc["spec"]["budgets"]:
        account = budget["spec"]["owner"].removeprefix("org:slurm:")
        assert budget["spec"]["envelopes"][0]["concurrency"] == peaks[account]


def _peaks(jobs: list[dict[str, str]]) -> dict[str, int]:
    """Most GPUs held at once, per account and in all (``*``), by checking every start instant."""
    spans = []
    for job in jobs:
        start = datetime.fromisoformat(job["Start"])
        h, m, s = (int(x) for x in job["Elapsed"].split("-")[-1].split(":"))
        days = int(job["Elapsed"].split("-")[0]) if "-" in job["Elapsed"] else 0
        gpus = int(job["AllocTRES"].split("gres/gpu=")[1].split(",")[0])
        spans.append((start, start + timedelta(days=days, hours=h, minutes=m, seconds=s), job["Account"], gpus))
    peaks: dict[str, int] = {}
    for at, _, _, _ in spans:
        for account in {a for _, _, a, _ in spans} | {"*"}:
            held = sum(g for b, e, a, g in spans if b <= at < e and account in (a, "*"))
            peaks[account] = max(peaks.get(account, 0), held)
    return peaks


@pytest.mark.no_planner
@pytest.mark.parametrize(
    ("line", "broken", "message"),
    [
        (5, "41004|2026-01-01T13:00:00|x", "has 3 fields"),
        (3, None, "Elapsed 'soon' is not [D-][HH:]MM:SS"),
        (4, None, "Submit 'yesterday' is not a time"),
    ],
)
def test_import_sacct_refuses_a_malformed_row_naming_its_line(
    jt: CLI, tmp_path: Path, line: int, broken: str | None, message: str
) -> None:
    lines = MONTH.read_text().splitlines()
    cells = lines[line - 1].split("|")
    if broken is None and "Elapsed" in message:
        cells[4] = "soon"
    elif broken is None:
        cells[1] = "yesterday"
    lines[line - 1] = broken if broken is not None else "|".join(cells)
    bad, out = tmp_path / "bad.txt", tmp_path / "out.yaml"
    bad.write_text("\n".join(lines) + "\n")
    result = jt("sim", "import-sacct", str(bad), "--out", str(out))
    assert result.code == 2
    assert f"{bad}:{line}" in result.err and message in result.err
    assert "Traceback" not in result.err
    assert not out.exists(), "nothing written"


@pytest.mark.no_planner
def test_an_imported_history_reports_slurm_waits_beside_jobtrees(jt: CLI, tmp_path: Path) -> None:
    export = tmp_path / "week.txt"
    export.write_text("\n".join(MONTH.read_text().splitlines()[:31]) + "\n")  # the header and 30 jobs
    scenario = tmp_path / "week.yaml"
    assert jt("sim", "import-sacct", str(export), "--out", str(scenario)).code == 0
    result = jt("sim", "run", str(scenario), "--report", str(tmp_path / "rep"), "-o", "json")
    assert result.code == 0, result.err
    slurm = result.json()["slurm"]
    assert set(slurm["byTeam"]) <= {"org:slurm:vision", "org:slurm:nlp", "org:slurm:speech", "org:slurm:robotics"}
    assert slurm["overall"]["slurm"]["count"] == slurm["overall"]["jobtree"]["count"] > 0
    assert slurm["overall"]["slurm"]["p50"] > 0, "Slurm made them wait (Submit -> Start)"
    assert (tmp_path / "rep" / "slurm-waits.png").read_bytes().startswith(PNG)
