"""How many examples a property draws: few in CI (derandomized), many when hunting.

``HYPOTHESIS_PROFILE=explore`` (tests/conftest.py) draws fresh examples; with it, every
property here draws ``HYPOTHESIS_EXAMPLES`` examples (default 2,000). The stable CI
profile keeps each property's own small count, so CI stays fast.
"""

from __future__ import annotations

import os

EXPLORE_DEFAULT = 2000


def examples(ci: int) -> int:
    """``ci`` examples in the stable profile; ``HYPOTHESIS_EXAMPLES`` (2,000) when exploring."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "explore":
        return int(os.environ.get("HYPOTHESIS_EXAMPLES") or EXPLORE_DEFAULT)
    return ci
