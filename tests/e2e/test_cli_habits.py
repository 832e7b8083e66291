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
from tests.e2e.conftest import CLI, EXAMPLES

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
    assert {"width.min", "width.allocated", "funding.owned", "reservation"} <= set(rows[0]) or {
        "width.min", "funding.owned"
    } <= set(rows[0])  # fmt: skip
    assert not any(str(v).startswith(("{", "[")) for row in rows for v in row.values())
    assert rows[0]["funding.owned"] == "8"
