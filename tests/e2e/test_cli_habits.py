"""Issue 14: the CLI as kubectl and Slurm users expect it, driven as a user would.

Width matters here, so the table tests run the real `jobtree` in a pseudo-terminal
(``pty``) at ``COLUMNS=80`` and parse what a person would see.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from cli.render import LEASE_COLUMNS, NODE_COLUMNS, RUN_COLUMNS, Col, Column
from tests.e2e.conftest import CLI, EXAMPLES, second_resnet

ROOT = Path(__file__).resolve().parents[2]


def in_terminal(database_url: str, *args: str, columns: int = 80) -> str:
    """Run `jobtree ARGS` in a pseudo-terminal ``columns`` wide; return what it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = os.environ | {"COLUMNS": str(columns), "PYTHONPATH": str(ROOT), "JOBTREE_USER": "root-admin"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args, "--db", database_url], stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(master)
    assert process.returncode == 0, b"".join(chunks).decode()
    return b"".join(chunks).decode().replace("\r\n", "\n")


def cells(out: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a plain table (columns are three or more spaces apart)."""
    lines = [line for line in out.splitlines() if line.strip()]
    header = re.split(r" {3,}", lines[0].strip())
    return header, [re.split(r" {3,}", line.strip()) for line in lines[1:]]


def expected(columns: list[Column], header: list[str], row: dict[str, object]) -> list[str]:
    by_name = {c.header: c for c in columns if isinstance(c, Col)}
    values = [by_name[h].get(row) for h in header]
    return ["-" if v is None or v == "" else ",".join(map(str, v)) if isinstance(v, list) else str(v) for v in values]


@pytest.fixture
def busy(fleet: CLI) -> CLI:
    """The guide's runs: resnet-small and trainer-128 running, wide-64 waiting; a cordoned node."""
    for name in ("resnet-small", "trainer-128", "wide-64"):
        assert fleet("submit", "-f", str(EXAMPLES / f"{name}.yaml")).code == 0
    node = fleet("nodes", "list", "-o", "json").json()[-1]["name"]
    assert fleet("nodes", "cordon", node).code == 0
    return fleet


def assert_whole(out: str, columns: list[Column], rows: list[dict[str, object]], key: str) -> list[str]:
    header, shown = cells(out)
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "…" not in out
    assert len(shown) == len(rows), out
    by_key = {str(r[key]): r for r in rows}
    first = header.index(next(c.header for c in columns if isinstance(c, Col) and c.get(rows[0]) == rows[0][key]))
    for line in shown:
        assert line == expected(columns, header, by_key[line[first]]), out
    return header


def test_get_runs_at_80_columns_keeps_every_cell_whole_and_the_phase(busy: CLI, database_url: str) -> None:
    rows = busy("get", "runs", "-A", "-o", "json").json()
    out = in_terminal(database_url, "get", "runs", "-A")
    header = assert_whole(out, RUN_COLUMNS, [r | {"age": line_age(out, r)} for r in rows], "name")
    assert "PHASE" in header and "NAME" in header
    assert "MESSAGE" not in header  # -o wide only


def line_age(out: str, row: dict[str, object]) -> str:
    """The AGE the table shows (a clock reading; checked for its form, not its value)."""
    header, shown = cells(out)
    if "AGE" not in header:
        return "-"
    line = next(s for s in shown if row["name"] in s)
    value = line[header.index("AGE")]
    assert re.fullmatch(r"\d+(s|m|h\d*m?|d\d+h)", value), value
    return value


def test_leases_nodes_and_usage_at_80_columns(busy: CLI, database_url: str) -> None:
    leases = busy("leases", "resnet-small", "-o", "json").json()
    out = in_terminal(database_url, "leases", "resnet-small")
    assert "PAID BY" in out and "CLASS" in out
    assert_whole(out, LEASE_COLUMNS, leases, "id")

    nodes = busy("nodes", "list", "-o", "json").json()
    out = in_terminal(database_url, "nodes", "list")
    header = assert_whole(out, NODE_COLUMNS, nodes, "name")
    assert "STATE" in header and "cordoned (manual)" in out

    from cli.commands.budgets import FUNDING_USAGE_COLUMNS

    usage = busy("budgets", "usage", "-o", "json").json()
    out = in_terminal(database_url, "budgets", "usage")
    assert_whole(out, FUNDING_USAGE_COLUMNS, usage, "envelope")


def test_wide_adds_the_message_and_the_funding_columns(busy: CLI) -> None:
    out = busy("get", "runs", "-n", "rai-sys", "-o", "wide").out
    header, shown = cells(out)
    assert {"MESSAGE", "OWNED", "BORROWED", "GPU"} <= set(header)
    wide = next(s for s in shown if s[0] == "wide-64")
    assert "64" in wide[header.index("MESSAGE")]


def test_o_name_prints_resolvable_names(busy: CLI) -> None:
    out = busy("get", "runs", "-A", "-o", "name").out.split()
    assert out == ["run/rai-sys/resnet-small", "run/rai-sys/trainer-128", "run/rai-sys/wide-64"]
    assert busy("get", "runs", out[0], "-o", "json").json()["name"] == "resnet-small"


def test_csv_is_flat_one_column_per_scalar(busy: CLI) -> None:
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(busy("get", "runs", "-A", "-o", "csv").out)))
    flat = {"width.min", "width.allocated", "funding.owned", "queuePosition", "reservation.earliestStart"}
    assert flat <= set(rows[0])
    assert not any(str(v).startswith(("{", "[")) for row in rows for v in row.values())
    trainer = next(r for r in rows if r["name"] == "trainer-128")
    assert trainer["reservation.confidence"] == "firm" and trainer["queuePosition"] == "1"
    assert rows[0]["funding.owned"] == "8"


# ---------------------------------------------------------------- kubectl and Slurm habits


def test_cancel_several_runs_by_name_label_or_all_in_one_append(fleet: CLI, tmp_path: Path, database_url: str) -> None:
    from ledger.store import Ledger

    for namespace in ("rai-sys", "lab", "lab2"):
        assert fleet("submit", "-f", str(second_resnet(tmp_path, namespace))).code == 0
    both = fleet("cancel", "rai-sys/resnet-small", "lab/resnet-small", "-o", "json")
    assert both.code == 0 and [r["phase"] for r in both.json()] == ["Cancelled", "Cancelled"]
    ledger = Ledger.from_url(database_url)
    try:
        with ledger.engine.connect() as conn:
            from sqlalchemy import text

            positions = [
                int(p) for (p,) in conn.execute(text("SELECT position FROM events WHERE type = 'RunCancelRequested'"))
            ]
    finally:
        ledger.engine.dispose()
    assert len(positions) == 2 and positions[1] == positions[0] + 1  # one append
    assert fleet("delete", "--all", "-n", "lab").out.strip() == "No unfinished runs selected."
    selected = fleet("delete", "-l", "owner=org:ai:rai:sys", "-A", "-o", "name")
    assert selected.code == 0 and selected.out.split() == ["run/lab2/resnet-small"]
    refused = fleet("cancel", "lab2/resnet-small")
    assert refused.code == 2 and "already Cancelled" in refused.err
    assert fleet("cancel").code == 2


def test_queue_lists_every_waiting_run_in_fifo_order_with_its_eta(busy: CLI) -> None:
    queue = busy("queue", "-A", "-o", "json").json()
    assert [(r["name"], r["queuePosition"]) for r in queue] == [("trainer-128", 1), ("wide-64", 2)]
    trainer = queue[0]
    reservation = trainer["reservation"]
    assert set(reservation) == {"id", "earliestStart", "confidence", "deficit"}
    assert trainer["eta"] == reservation["earliestStart"] and reservation["confidence"] == "firm"
    assert queue[1]["eta"] is None and queue[1]["reservation"] is None
    table = busy("queue", "-A").out
    header, shown = cells(table)
    assert header[:4] == ["POS", "NAMESPACE", "NAME", "PHASE"] and shown[0][0] == "1"
    assert reservation["earliestStart"] in table and "unknown" in table
    runs = {r["name"]: r for r in busy("get", "runs", "-A", "-o", "json").json()}
    assert runs["trainer-128"]["reservation"] == reservation and runs["trainer-128"]["queuePosition"] == 1
    assert runs["resnet-small"]["queuePosition"] is None and runs["resnet-small"]["eta"] is None
    described = busy("describe", "trainer-128", "-o", "json").json()["run"]
    assert described["reservation"] == reservation and described["eta"] == trainer["eta"]
    assert "position 1, ETA" in busy("describe", "trainer-128").out


def test_a_waiting_message_adds_up(busy: CLI) -> None:
    trainer = busy("get", "runs", "trainer-128", "-o", "json").json()
    # 3 groups x (32 + 8 spare) at its minimum width: the envelope has 56 free of 64
    assert "has 56 of 64 GPUs free, needs 120 (3 groups x (32 + 8 spare))" in trainer["message"]


# ---------------------------------------------------------------- accounting output


@pytest.fixture
def spares(jt: CLI) -> CLI:
    """Guide §6: trainer-32 with a spare node, sweep-2 filling it unfunded."""
    for kind, name in (("nodes", "cluster-spares"), ("budgets", "budgets")):
        assert jt(kind, "apply", "-f", str(EXAMPLES / f"elastic/{name}.yaml")).code == 0
    for name in ("trainer-32", "opportunistic-2"):
        assert jt("submit", "-f", str(EXAMPLES / f"elastic/{name}.yaml")).code == 0
    assert jt("clock", "advance", "+1h").code == 0
    return jt


def test_accounting_names_unfunded_use_and_every_envelope(spares: CLI) -> None:
    import csv
    import io

    by_owner = list(csv.DictReader(io.StringIO(spares("audit", "gpu-hours", "--by", "owner", "-o", "csv").out)))
    assert "(unfunded)" in {r["owner"] for r in by_owner} and all(r["owner"] for r in by_owner)
    period = spares("budgets", "usage", "--period", "2h", "-o", "json").json()
    named = [r for r in period if r["envelope"] is not None]
    budgets = spares("budgets", "list", "-o", "json").json()
    envelopes = {f"{b['owner']}/{e['name']}" for b in budgets for e in b["spec"]["envelopes"]}
    assert {r["envelope"] for r in named} == envelopes  # idle envelopes too, by name
    assert [r["envelope"] for r in period].count(None) == 1 and period[-1]["unfundedGPUHours"] > 0
    table = spares("budgets", "usage", "--period", "2h").out
    assert "(unfunded) nobody pays" in table and "(nobody" not in table
    assert all(re.fullmatch(r"\d+\.\d\d", v) for v in re.findall(r"\b\d+\.\d+\b", table)), table


def test_gpu_hours_by_submitter(spares: CLI) -> None:
    rows = spares("audit", "gpu-hours", "--by", "submitter", "-o", "json").json()
    assert {r["submitter"] for r in rows} == {"root-admin"}
    total = spares("audit", "gpu-hours", "--by", "class", "-o", "json").json()
    assert rows[0]["gpuSeconds"] == sum(r["gpuSeconds"] for r in total)
    table = spares("audit", "gpu-hours", "--by", "submitter").out
    assert "SUBMITTER" in table and "root-admin" in table


def test_the_map_shows_spares_and_fills_and_no_run_symbol_is_a_letter(spares: CLI) -> None:
    data = spares("nodes", "list", "--map", "-o", "json").json()
    legend = data["legend"]
    assert not any(symbol.isalpha() for symbol in legend)
    runs = {run: symbol for symbol, run in legend.items()}
    nodes = [n for d in data["domains"] for n in d["nodes"]]
    filled = [n for n in nodes if "~" in n["slots"]]
    assert filled and filled[0]["filledBy"] == [runs["scratch/sweep-2"]]
    assert filled[0]["sparesOf"] == [runs["rai-sys/trainer-32"]]
    out = spares("nodes", "list", "--map").out
    assert f"filled by {runs['scratch/sweep-2']}" in out and "~ spare filled by opportunistic work" in out


def test_leases_ended_by_an_activation_carry_its_seed(jt: CLI) -> None:
    """Guide §4: the activation's cuts publish the lottery seed (SPEC §5.4) on every lease they end."""
    for kind, name in (("nodes", "cluster-b"), ("budgets", "budgets")):
        assert jt(kind, "apply", "-f", str(EXAMPLES / f"reservations/{name}.yaml")).code == 0
    assert jt("submit", "-f", str(EXAMPLES / "reservations/busy.yaml")).code == 0
    assert jt("submit", "-f", str(EXAMPLES / "reservations/trainer.yaml"), "--now", "+10m").code == 0
    seed = jt("plan", "trainer", "-o", "json").json()["seed"]
    assert jt("clock", "advance", "+20m").code == 0
    cut = [lease for lease in jt("leases", "mm1", "-o", "json").json() if lease["endReason"] in ("Shrink", "DropSpare")]
    assert cut and all(lease["seed"] == seed and re.fullmatch(r"[0-9a-f]{64}", seed) for lease in cut)
    assert seed in jt("leases", "mm1", "-o", "wide").out


def test_explain_paid_by_adds_up_to_its_funding(spares: CLI) -> None:
    explained = spares("explain", "trainer-32", "-o", "json").json()
    funding, payers = explained["run"]["funding"], explained["payers"]
    for payer_class, gpus in funding.items():
        assert sum(p["gpus"] for p in payers if p["class"] == payer_class) == gpus, (payer_class, payers)
    spare = sum(p["spareGPUs"] for p in payers)
    assert spare > 0 and f"(+{spare} spare)" in spares("explain", "trainer-32").out


def test_get_runs_w_prints_each_run_that_changes(fleet: CLI, database_url: str) -> None:
    assert fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml")).code == 0
    env = os.environ | {"PYTHONPATH": str(ROOT), "JOBTREE_USER": "root-admin", "COLUMNS": "200"}
    args = ["get", "runs", "-A", "-w", "--timeout", "8", "--db", database_url]
    with subprocess.Popen([sys.executable, "-m", "cli.main", *args], stdout=subprocess.PIPE, text=True, env=env) as p:
        assert p.stdout is not None
        listed = [p.stdout.readline(), p.stdout.readline()]  # the list is out: the follow loop runs
        assert "Running" in listed[1]
        assert fleet("cancel", "resnet-small").code == 0
        out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    changed = out.splitlines()
    assert len(changed) == 1 and changed[0].startswith("rai-sys ") and "Cancelled" in changed[0]


def test_one_time_format_everywhere(busy: CLI) -> None:
    shown = busy("explain", "trainer-128").out + busy("leases", "resnet-small", "-o", "wide").out
    shown += busy("queue", "-A").out
    assert re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", shown)  # RFC 3339, UTC
    assert not re.search(r"\d{4}-\d\d-\d\d \d\d:", shown)  # never the space-separated form


def backends(database_url: str, name: str) -> set[tuple[int, str]]:
    """The server backends (pid, start) that clients called ``name`` hold on the test database now."""
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        sql = "SELECT pid, backend_start::text FROM pg_stat_activity WHERE application_name = %s"
        return {(int(pid), str(start)) for pid, start in conn.execute(sql, (name,))}


@pytest.mark.parametrize(
    "args",
    [("watch", "wide-64", "--timeout", "5", "--interval", "0.02"),
     ("get", "runs", "-A", "-w", "--timeout", "5", "--interval", "0.02")],
)  # fmt: skip
def test_following_a_run_reuses_its_connections(busy: CLI, database_url: str, args: tuple[str, ...]) -> None:
    """Issue 14 point 1: ~250 refreshes, and the client never holds more than its pool's few connections."""
    import time

    env = os.environ | {"PYTHONPATH": str(ROOT), "JOBTREE_USER": "root-admin", "PGAPPNAME": "jobtree-follow"}
    command = [sys.executable, "-m", "cli.main", *args, "--db", database_url]
    seen: set[tuple[int, str]] = set()
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) as p:
        while p.poll() is None:
            seen |= backends(database_url, "jobtree-follow")
            time.sleep(0.05)
        _, err = p.communicate(timeout=30)
    assert p.returncode == (1 if args[0] == "watch" else 0), err  # wide-64 waits: watch did not settle
    assert seen, "the sampling sees the client's connections"
    assert len(seen) <= 3, f"{len(seen)} backends over the refreshes: a connection per refresh"


def test_piped_tables_are_never_cut(busy: CLI, database_url: str) -> None:
    """Issue 14 point 2: piped (no terminal, no COLUMNS) a table is as wide as its widest cell."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env |= {"PYTHONPATH": str(ROOT), "JOBTREE_USER": "root-admin"}
    command = [sys.executable, "-m", "cli.main", "get", "runs", "-A", "-o", "wide", "--db", database_url]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    rows = busy("get", "runs", "-A", "-o", "json").json()
    assert "…" not in out
    for row in rows:
        assert row["message"] in out, (row["message"], out)  # the longest cell, whole
    assert max(map(len, out.splitlines())) > 200, "wider than the 200 columns it was once cut to"
