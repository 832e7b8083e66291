from __future__ import annotations

from typing import Any

import pytest
from planner_fakes import run

from ledger.model import RunSpec
from ledger.parsing import run_from_spec
from planner.lower import GroupDemand, admission_widths, lower


def spec_of(total: int, **kw: Any) -> RunSpec:
    return run_from_spec(run("r", total, **kw).spec)


def test_group_gpus_splits_into_indexed_groups() -> None:
    groups = lower(spec_of(total=32, group=8), 32)
    assert groups == [GroupDemand(i, 8, spread=False) for i in range(4)]


def test_no_group_gpus_is_one_spread_group() -> None:
    assert lower(spec_of(total=12), 12) == [GroupDemand(0, 12, spread=True)]


def test_growth_indices_start_above_first_index() -> None:
    assert [g.index for g in lower(spec_of(total=16, group=8), 16, first_index=3)] == [3, 4]


def test_width_must_be_a_multiple_of_group_size() -> None:
    with pytest.raises(ValueError, match="multiple"):
        lower(spec_of(total=16, group=8), 12)


def test_malleable_widths_step_down_from_desired_to_min() -> None:
    spec = spec_of(total=128, group=32, malleable=(96, 160, 32))
    assert admission_widths(spec) == [160, 128, 96]
    assert admission_widths(spec, desired=128) == [128, 96]


def test_fixed_run_has_one_width() -> None:
    assert admission_widths(spec_of(total=24, group=8)) == [24]
