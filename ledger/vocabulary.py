"""The domain's words, one definition each (issue #13: a typed vocabulary).

Values are the strings stored in event payloads, so a member compares and hashes equal to
its string and old rows read unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class LeaseRole(StrEnum):
    """What a lease's slots are for (SPEC §6.2)."""

    ACTIVE = "Active"
    SPARE = "Spare"
    FILL = "Fill"


HOLDING_ROLES: frozenset[str] = frozenset({LeaseRole.ACTIVE, LeaseRole.SPARE})
"""Roles that hold slots exclusively and are paid for (Fill leases sit on Spare slots)."""
