"""Who is calling (SPEC §10): --as (admins only), JOBTREE_USER, else the OS user."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    groups: frozenset[str]

    def principals(self) -> set[str]:
        return {self.user} | {f"group:{g}" for g in self.groups}

    def listed_in(self, names: list[str]) -> bool:
        return bool(self.principals() & set(names))


def caller_from_environment() -> Identity:
    """The real caller. JOBTREE_GROUPS (comma-separated) names the caller's groups."""
    user = os.environ.get("JOBTREE_USER") or getpass.getuser()
    groups = os.environ.get("JOBTREE_GROUPS", "")
    return Identity(user, frozenset(g.strip() for g in groups.split(",") if g.strip()))
