"""The vocabulary's members are the strings stored in payloads."""

from __future__ import annotations

from ledger.vocabulary import HOLDING_ROLES, LeaseRole


def test_roles_read_back_from_their_stored_strings() -> None:
    assert [LeaseRole(s) for s in ("Active", "Spare", "Fill")] == list(LeaseRole)


def test_holding_roles_match_plain_strings_from_payloads() -> None:
    assert "Active" in HOLDING_ROLES and "Spare" in HOLDING_ROLES
    assert "Fill" not in HOLDING_ROLES
