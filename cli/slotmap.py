"""`jobtree nodes list --map`: each fabric domain's GPU slots, one character per slot.

A run gets a symbol (``1``…``9``, then ``@ $ % & * = ? !``; never a letter, so it cannot be
read as a domain ``A`` or a node ``a-0``) on the slots its Active leases hold. ``+`` is a
spare slot held idle, ``~`` a spare slot lent to fill work (Fill), ``.`` free, ``x`` a slot
of a failed or cordoned node that nobody holds. A node holding spares or fills says whose.
"""

from __future__ import annotations

from typing import Any

from cli.render import console, emit_data
from ledger.accounting import slot_holders
from ledger.store import Ledger

Row = dict[str, Any]
RUN_SYMBOLS = "123456789@$%&*=?!"
SPARE, FILL, FREE, DOWN = "+", "~", ".", "x"
LEGEND = (
    f"legend: {RUN_SYMBOLS[0]}-{RUN_SYMBOLS[8]} {' '.join(RUN_SYMBOLS[9:])} active GPUs of the run listed below; "
    f"{SPARE} spare held idle; {FILL} spare filled by opportunistic work; {FREE} free; {DOWN} unavailable"
)


def build_map(nodes: list[Row], holders: list[Row]) -> Row:
    """The map as data: domains → nodes → one symbol per slot (and whose spares/fills), and the legend."""
    legend: dict[str, str] = {}
    symbol_of: dict[str, str] = {}
    by_slot: dict[tuple[str, int], list[Row]] = {}
    for h in holders:
        by_slot.setdefault((h["node"], h["gpu"]), []).append(h)
        if h["run"] not in symbol_of:
            symbol = RUN_SYMBOLS[len(symbol_of) % len(RUN_SYMBOLS)]
            symbol_of[h["run"]] = symbol
            legend.setdefault(symbol, h["run"])
    domains: dict[str, list[Row]] = {}
    for node in nodes:
        labels = node["labels"]
        key = f"{node['gpuType']} {labels['cluster']}/{labels['fabricDomain']}"
        down = node["failed"] or node["cordoned"]
        held = [by_slot.get((node["name"], g), []) for g in range(node["gpus"])]
        state = "failed" if node["failed"] else "cordoned" if node["cordoned"] else "ready"
        row = {"name": node["name"], "slots": "".join(_symbol(h, symbol_of, down) for h in held), "state": state}
        row |= _whose(held, symbol_of)
        domains.setdefault(key, []).append(row)
    return {"domains": [{"domain": k, "nodes": v} for k, v in domains.items()], "legend": legend}


def _symbol(holders: list[Row], symbol_of: dict[str, str], down: bool) -> str:
    roles = {h["role"]: h for h in holders}
    if "Active" in roles:
        return symbol_of[roles["Active"]["run"]]
    if "Fill" in roles:
        return FILL
    if "Spare" in roles:
        return SPARE
    return DOWN if down else FREE


def _whose(held: list[list[Row]], symbol_of: dict[str, str]) -> Row:
    """``{"sparesOf": [symbols], "filledBy": [symbols]}`` for the node's spare and fill slots."""
    spares = sorted({symbol_of[h["run"]] for hs in held for h in hs if h["role"] == "Spare"})
    fills = sorted({symbol_of[h["run"]] for hs in held for h in hs if h["role"] == "Fill"})
    return {"sparesOf": spares, "filledBy": fills}


def _note(node: Row) -> str:
    parts = [] if node["state"] == "ready" else [node["state"]]
    if node["sparesOf"]:
        parts.append(f"spare of {','.join(node['sparesOf'])}")
    if node["filledBy"]:
        parts.append(f"filled by {','.join(node['filledBy'])}")
    return f"  ({'; '.join(parts)})" if parts else ""


def show(nodes: list[Row], ledger: Ledger, output: str) -> None:
    data = build_map(nodes, slot_holders(ledger.engine))
    if emit_data(data, output):
        return
    if not data["domains"]:
        console.print("No nodes. Apply a Cluster manifest: jobtree nodes apply -f cluster.yaml")
        return
    width = max(len(n["name"]) for d in data["domains"] for n in d["nodes"])
    for domain in data["domains"]:
        used = sum(sum(c not in (FREE, DOWN) for c in n["slots"]) for n in domain["nodes"])
        total = sum(len(n["slots"]) for n in domain["nodes"])
        console.print(f"{domain['domain']}  {used}/{total} GPUs held", markup=False)
        for node in domain["nodes"]:
            console.print(f"  {node['name'].ljust(width)}  {node['slots']}{_note(node)}", markup=False)
    console.print(LEGEND, markup=False)
    for symbol, run in data["legend"].items():
        console.print(f"  {symbol}  {run}", markup=False)
