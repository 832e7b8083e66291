"""`jobtree nodes list --map`: each fabric domain's GPU slots, one character per slot.

A run gets a letter (``A``, ``B``, … in order of first appearance): upper case on
its Active slots, lower case on its Spare slots; ``.`` is free, ``x`` a slot of a
failed or cordoned node that nobody holds. A Fill lease sits on a spare slot; the
slot shows the spare's owner.
"""

from __future__ import annotations

import string
from typing import Any

from sqlalchemy import Engine

from cli.render import console, emit_data
from ledger.accounting import slot_holders

Row = dict[str, Any]
_SYMBOLS = string.ascii_uppercase + string.digits


def build_map(nodes: list[Row], holders: list[Row]) -> Row:
    """The map as data: domains → nodes → one symbol per slot, and the legend."""
    legend: dict[str, str] = {}
    by_slot: dict[tuple[str, int], Row] = {}
    for h in holders:
        if h["role"] in ("Active", "Spare"):
            by_slot[(h["node"], h["gpu"])] = h
            if h["run"] not in legend.values():
                legend[_SYMBOLS[len(legend) % len(_SYMBOLS)]] = h["run"]
    symbol_of = {run: sym for sym, run in legend.items()}
    domains: dict[str, list[Row]] = {}
    for node in nodes:
        labels = node["labels"]
        key = f"{node['gpuType']} {labels['cluster']}/{labels['fabricDomain']}"
        down = node["failed"] or node["cordoned"]
        slots = "".join(_symbol(by_slot.get((node["name"], g)), symbol_of, down) for g in range(node["gpus"]))
        state = "failed" if node["failed"] else "cordoned" if node["cordoned"] else "ready"
        domains.setdefault(key, []).append({"name": node["name"], "slots": slots, "state": state})
    return {
        "domains": [{"domain": k, "nodes": v} for k, v in domains.items()],
        "legend": legend,
    }


def _symbol(holder: Row | None, symbol_of: dict[str, str], down: bool) -> str:
    if holder is None:
        return "x" if down else "."
    symbol = symbol_of[holder["run"]]
    return symbol.lower() if holder["role"] == "Spare" else symbol


def show(nodes: list[Row], engine: Engine, output: str) -> None:
    data = build_map(nodes, slot_holders(engine))
    if emit_data(data, output):
        return
    if not data["domains"]:
        console.print("No nodes. Apply a Cluster manifest: jobtree nodes apply -f cluster.yaml")
        return
    width = max(len(n["name"]) for d in data["domains"] for n in d["nodes"])
    for domain in data["domains"]:
        used = sum(sum(c != "." and c != "x" for c in n["slots"]) for n in domain["nodes"])
        total = sum(len(n["slots"]) for n in domain["nodes"])
        console.print(f"[bold]{domain['domain']}[/bold]  {used}/{total} GPUs held")
        for node in domain["nodes"]:
            note = "" if node["state"] == "ready" else f"  ({node['state']})"
            console.print(f"  {node['name'].ljust(width)}  {node['slots']}{note}", markup=False)
    console.print("legend: UPPER active, lower spare, . free, x unavailable", markup=False)
    for symbol, run in data["legend"].items():
        console.print(f"  {symbol}  {run}", markup=False)
