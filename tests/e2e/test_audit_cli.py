"""The audit commands as a user runs them: gpu-hours, verify, replay, history, metrics, map."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from cli.main import run
from ledger.databases import drop_database
from ledger.embedded import sqlalchemy_url
from tests.conftest import PgServer
from tests.e2e.conftest import CLI, EXAMPLES

SCENARIOS = sorted((EXAMPLES / "scenarios").glob("*.yaml"))
T0 = "2030-01-01T10:00:00Z"


def guide(jt: CLI) -> None:
    """The researcher guide's runs: resnet-small and trainer-128 start, over-budget and wide-64 wait."""
    for name in ("resnet-small", "trainer-128", "over-budget", "wide-64"):
        assert jt("submit", "-f", str(EXAMPLES / f"{name}.yaml"), "--now", T0).code == 0


def test_verify_and_replay_pass_on_the_guide(fleet: CLI) -> None:
    guide(fleet)
    assert fleet("cancel", "resnet-small", "-n", "rai-sys", "--now", "2030-01-01T11:00:00Z").code == 0
    verify = fleet("audit", "verify", "-o", "json")
    assert verify.code == 0, verify.out + verify.err
    assert verify.json()["ok"] and [c["ok"] for c in verify.json()["checks"]] == [True, True, True]
    replay = fleet("audit", "replay", "-o", "json")
    assert replay.code == 0, replay.out + replay.err
    data = replay.json()
    assert data["differences"] == [] and data["decisions"] > 0 and data["decisionPoints"] >= 2
    table = fleet("audit", "verify")
    assert table.code == 0 and "hash chain" in table.out and "projections" in table.out


def test_verify_fails_with_exit_1_and_names_a_tampered_row(fleet: CLI, database_url: str) -> None:
    guide(fleet)
    engine = create_engine(sqlalchemy_url(database_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE leases SET payer_class = 'unfunded' WHERE lease_id = 'lease-000001'"))
    engine.dispose()
    result = fleet("audit", "verify")
    assert result.code == 1
    assert "leases row lease-000001 was changed outside the ledger" in result.out
    assert "payer_class is 'unfunded'" in result.err


def _t(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_gpu_hours_through_the_cli(fleet: CLI) -> None:
    guide(fleet)
    later = "2030-01-01T12:00:00Z"
    rows = fleet("audit", "gpu-hours", "--by", "envelope", "-o", "json", "--now", later).json()
    west = next(r for r in rows if r["envelope"] == "org:ai:rai:sys/west-h100")
    # whatever the guide admitted at T0, for two hours (runs reserved at T0 start later, SPEC §5):
    leases = fleet("leases", "--owner", "org:ai:rai:sys", "-o", "json").json()
    at_t0 = [lease for lease in leases if lease["envelope"] and lease["start"] == T0 and lease["end"] is None]
    active = sum(lease["gpus"] for lease in at_t0 if lease["role"] == "Active")
    spare = sum(lease["gpus"] for lease in at_t0 if lease["role"] == "Spare")
    funded = [lease for lease in leases if lease["envelope"] == "org:ai:rai:sys/west-h100"]
    seconds = [(lease, (_t(lease["end"] or later) - _t(lease["start"])).total_seconds()) for lease in funded]
    assert west["gpuSeconds"] == sum(lease["gpus"] * s for lease, s in seconds)
    rates = {"Active": 1.0, "Spare": 0.5}
    assert west["chargedGPUSeconds"] == sum(lease["gpus"] * rates[lease["role"]] * s for lease, s in seconds)
    windowed = fleet("audit", "gpu-hours", "--by", "class", "--from", T0, "--to", "2030-01-01T10:15:00Z",
                     "-o", "json", "--now", later).json()  # fmt: skip
    assert {r["class"]: r["gpuSeconds"] for r in windowed} == {"owned": (active + spare) * 900}
    assert all(r["from"] == T0 for r in windowed)
    csv_out = fleet("audit", "gpu-hours", "--by", "run", "-o", "csv", "--now", later)
    parsed = list(csv.DictReader(io.StringIO(csv_out.out)))
    assert {r["run"] for r in parsed} == {lease["run"] for lease in leases}
    assert "chargedGPUHours" in parsed[0]
    assert "GPU-HOURS" in fleet("audit", "gpu-hours", "--by", "owner", "--now", later).out


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--by", "team"], "--by"),
        (["--from", "yesterday"], "--from"),
        (["--from", "2030-01-02T00:00:00Z", "--to", "2030-01-01T00:00:00Z"], "period"),
    ],
)
def test_gpu_hours_bad_input(fleet: CLI, events: object, args: list[str], field: str) -> None:
    result = fleet("audit", "gpu-hours", *args)
    assert result.code == 2
    assert field in result.err and len(result.err.strip().splitlines()) == 1


def test_history_lists_every_incarnation(fleet: CLI) -> None:
    assert fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--now", T0).code == 0
    assert fleet("cancel", "resnet-small", "-n", "rai-sys", "--now", "2030-01-01T10:10:00Z").code == 0
    assert fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--now", "2030-01-01T10:20:00Z").code == 0
    rows = fleet("audit", "history", "resnet-small", "-n", "rai-sys", "-o", "json").json()
    assert {r["incarnation"] for r in rows} == {1, 2}
    kinds = [r["type"] for r in rows if r["incarnation"] == 1]
    assert kinds[0] == "RunSubmitted" and "RunAdmitted" in kinds and "LeaseEnded" in kinds and "RunFinished" in kinds
    ended = next(r for r in rows if r["type"] == "LeaseEnded")
    assert "Cancelled" in ended["summary"]
    text_out = fleet("audit", "history", "rai-sys/resnet-small").out
    assert "submitted by root-admin" in text_out
    assert fleet("audit", "history", "nope", "-n", "rai-sys").code == 1


def test_metrics_exposition(fleet: CLI) -> None:
    guide(fleet)
    out = fleet("metrics").out
    for name in (
        "jobtree_admission_latency_seconds_bucket",
        "jobtree_queue_length",
        "jobtree_reservations_pending",
        "jobtree_gpus",
        "jobtree_resolver_actions_total",
        "jobtree_events_appended_total",
    ):
        assert name in out, name
    runs = {r["name"]: r for r in fleet("get", "runs", "-A", "-o", "json").json()}
    running = [r for r in runs.values() if r["phase"] == "Running"]
    pending = [r for r in runs.values() if r["phase"] == "Pending"]
    assert f"jobtree_admission_latency_seconds_count {len(running)}.0" in out
    assert f'jobtree_queue_length{{phase="Pending"}} {len(pending)}.0' in out
    held = sum(r["funding"]["owned"] for r in running)
    assert f'jobtree_gpus{{class="owned",envelope="org:ai:rai:sys/west-h100",role="Active"}} {held}.0' in out
    assert 'jobtree_events_appended_total{type="RunSubmitted"} 4.0' in out
    assert fleet("metrics", "--serve", "70000").code == 2
    dashboard = json.loads((EXAMPLES.parent / "deploy" / "grafana" / "jobtree-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"jobtree_\w+", t["expr"])}
    assert used and all(re.search(rf"(^|\s){name}(\s|{{)", out, re.M) for name in used), used


def test_nodes_map(fleet: CLI) -> None:
    assert fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--now", T0).code == 0
    out = fleet("nodes", "list", "--map").out
    assert "H100-80GB c1/A" in out and "legend" in out
    assert "11111111" in out and "1  rai-sys/resnet-small" in out
    data = fleet("nodes", "list", "--map", "-o", "json").json()
    slots = "".join(n["slots"] for d in data["domains"] for n in d["nodes"])
    assert slots.count("1") == 8 and data["legend"] == {"1": "rai-sys/resnet-small"}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_replay_and_verify_every_bundled_scenario(
    jt: CLI, pg_server: PgServer, capsys: pytest.CaptureFixture[str], scenario: Path
) -> None:
    result = jt("sim", "run", str(scenario), "--keep")
    assert result.code == 0, result.err
    kept = re.search(r"--db (\S+)", result.err)
    assert kept, result.err
    url = kept.group(1)
    try:
        for command in (["audit", "replay"], ["audit", "verify"]):
            capsys.readouterr()
            try:
                run([*command, "-o", "json", "--db", url])
            except SystemExit as exc:
                assert exc.code in (0, None), capsys.readouterr()
            data = json.loads(capsys.readouterr().out)
            if command[1] == "replay":
                assert data["differences"] == [] and data["decisions"] > 0, data
            else:
                assert data["ok"], data["violations"][:3]
    finally:
        drop_database(pg_server.url, url.rsplit("/", 1)[-1].split("?")[0])


def test_budgets_usage_for_a_period(fleet: CLI) -> None:
    assert fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--now", T0).code == 0
    assert fleet("cancel", "resnet-small", "-n", "rai-sys", "--now", "2030-01-01T11:30:00Z").code == 0
    rows = fleet("budgets", "usage", "--period", "2030-01-01", "-o", "json").json()
    west = next(r for r in rows if r["envelope"] == "org:ai:rai:sys/west-h100")
    assert (west["ownedGPUHours"], west["gpuSeconds"], west["from"]) == (12, 8 * 5400, "2030-01-01T00:00:00Z")
    assert rows[-1]["envelope"] is None and rows[-1]["unfundedGPUHours"] == 0
    hour = fleet("budgets", "usage", "--period", "2030-01-01T10:00:00Z/2030-01-01T10:15:00Z", "-o", "json").json()
    assert next(r for r in hour if r["envelope"] == "org:ai:rai:sys/west-h100")["ownedGPUHours"] == 2
    assert "GPU-hours" in fleet("budgets", "usage", "--period", "2030-01").out
    bad = fleet("budgets", "usage", "--period", "last-week")
    assert bad.code == 2 and "--period" in bad.err
    assert fleet("budgets", "usage", "-o", "json").json()[0]["headroom"] == 64  # the plain form is unchanged
