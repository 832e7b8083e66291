"""The fault suite runs on the embedded Postgres and its own Tansu broker (tests/backends.py).

Its ``slow`` run (200 kills, minutes) runs only when asked for with ``-m slow``.
"""

from __future__ import annotations

import pytest

from tests.backends import backend, tansu_broker

__all__ = ["backend", "tansu_broker"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the 200-kill fault run: select it with -m slow")
    for item in items:
        if "tests/faults/" in item.nodeid and item.get_closest_marker("slow"):
            item.add_marker(skip)
