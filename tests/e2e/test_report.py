"""`jobtree report --png`: a readable picture of GPUs per fabric domain by class, and reservations."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.image as mpimg

from cli.plots import draw, series
from ledger.store import Ledger
from tests.e2e.conftest import CLI, EXAMPLES
from tests.integration.test_accounting import build

T0 = "2030-01-01T10:00:00Z"
#: Set JOBTREE_REPORT_DIR to keep the pictures (to look at them).
KEEP = os.environ.get("JOBTREE_REPORT_DIR")


def png_path(tmp_path: Path, name: str) -> Path:
    return Path(KEEP) / name if KEEP else tmp_path / name


def assert_picture(path: Path) -> None:
    image = mpimg.imread(path)
    height, width = image.shape[:2]
    assert width >= 1000 and height >= 400
    assert image[..., :3].std() > 0.05, "the picture is not blank"


def test_report_of_the_guide(fleet: CLI, tmp_path: Path) -> None:
    for name, at in (
        ("resnet-small", T0),
        ("over-budget", "2030-01-01T10:20:00Z"),
        ("wide-64", "2030-01-01T10:30:00Z"),
    ):
        assert fleet("submit", "-f", str(EXAMPLES / f"{name}.yaml"), "--now", at).code == 0
    assert fleet("cancel", "resnet-small", "-n", "rai-sys", "--now", "2030-01-01T11:00:00Z").code == 0
    path = png_path(tmp_path, "guide.png")
    result = fleet("report", "--png", str(path), "-o", "json", "--now", "2030-01-01T12:00:00Z")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["domains"] == 5 and summary["leases"] >= 2
    assert_picture(path)


def test_report_with_every_class(jt: CLI, ledger: Ledger, tmp_path: Path) -> None:
    build(ledger)  # owned, a spare, a payer change to shared, borrowed and unfunded (tests/integration)
    path = png_path(tmp_path, "classes.png")
    result = jt("report", "--png", str(path), "--now", "2026-01-01T12:30:00Z")
    assert result.code == 0, result.err
    assert "2 domain(s), 7 lease(s)" in result.out
    assert_picture(path)


def test_report_bad_file(jt: CLI, tmp_path: Path) -> None:
    result = jt("report", "--png", str(tmp_path / "x.jpg"))
    assert result.code == 2 and "--png" in result.err
    assert jt("report", "--png", str(tmp_path / "missing" / "x.png")).code == 2


def test_series_steps_by_layer() -> None:
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    leases = [
        {"role": "Active", "class": "owned", "gpus": 8, "start": "2030-01-01T10:00:00Z", "end": None},
        {"role": "Spare", "class": "owned", "gpus": 8, "start": "2030-01-01T10:00:00Z", "end": "2030-01-01T11:00:00Z"},
        {"role": "Fill", "class": "unfunded", "gpus": 8, "start": "2030-01-01T10:30:00Z", "end": None},
    ]
    times, values = series(leases, now)
    assert [t.hour for t in times] == [10, 11, 12]
    assert values["owned"] == [8, 8, 0] and values["spare"] == [8, 0, 0]  # open leases end at now
    assert values["unfunded"] == [0, 0, 0]  # Fill sits on spare slots: not drawn twice


def test_reservations_are_drawn_when_there_are_some(tmp_path: Path) -> None:
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    nodes = [{"name": "a-0", "gpuType": "H100-80GB", "gpus": 8, "labels": {"cluster": "c1", "fabricDomain": "A"}}]
    leases = [{"node": "a-0", "role": "Active", "class": "owned", "gpus": 8, "start": T0, "end": None}]
    reservations = [
        {"id": "r-1", "run": "ns/big", "state": "Pending", "createdAt": datetime(2030, 1, 1, 10, 30, tzinfo=UTC),
         "earliestStart": datetime(2030, 1, 1, 10, 45, tzinfo=UTC)},
        {"id": "r-2", "run": "ns/later", "state": "Pending", "createdAt": None, "earliestStart": None},
    ]  # fmt: skip
    path = png_path(tmp_path, "reservations.png")
    assert draw(path, nodes, leases, reservations, now) == 1
    assert_picture(path)
