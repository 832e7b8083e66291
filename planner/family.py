"""The budget family graph (SPEC §1.2, §4.2).

Each Budget's ``parents`` are edges between owners; the family graph is that set of
edges taken both ways. The distance between two owners is the length of the
shortest path: parents and children at 1, siblings and grandparents at 2, uncles
and aunts at 3, cousins at 4, and so on. Owners named only as a parent (with no
Budget of their own) are nodes too, so siblings under a budget-less parent are
still at distance 2. Apply rejects cycles, so the graph is a forest of trees plus
whatever diamonds several parents make.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from ledger.model import BudgetSpec


def neighbours(budgets: Mapping[str, BudgetSpec]) -> dict[str, set[str]]:
    """Undirected adjacency of the family graph."""
    adj: dict[str, set[str]] = {}
    for owner, spec in budgets.items():
        adj.setdefault(owner, set())
        for parent in spec.parents:
            if parent == owner:
                continue
            adj[owner].add(parent)
            adj.setdefault(parent, set()).add(owner)
    return adj


def distances(adj: Mapping[str, set[str]], owner: str) -> dict[str, int]:
    """Graph distance from ``owner`` to every owner of its family (itself excluded)."""
    seen = {owner: 0}
    queue = deque([owner])
    while queue:
        here = queue.popleft()
        for nxt in sorted(adj.get(here, ())):
            if nxt not in seen:
                seen[nxt] = seen[here] + 1
                queue.append(nxt)
    del seen[owner]
    return seen


class Family:
    """Memoised distances over one set of budgets (one plan call)."""

    def __init__(self, budgets: Mapping[str, BudgetSpec]) -> None:
        self._adj = neighbours(budgets)
        self._memo: dict[str, dict[str, int]] = {}

    def of(self, owner: str) -> dict[str, int]:
        found = self._memo.get(owner)
        if found is None:
            found = self._memo[owner] = distances(self._adj, owner)
        return found

    def distance(self, a: str, b: str) -> int | None:
        if a == b:
            return 0
        return self.of(a).get(b)
