"""A run's story for `jobtree explain`: width history, swaps, requeues, in plain words.

Built only from the run's history rows (``queries.run_history``), so it reads the
same facts as everything else: ``widthHistory`` lists every width change with its
reason, ``story`` one line per thing that happened to the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
FailedRanks = dict[tuple[str | None, int], list[str]]  # (time, group) -> nodes whose ranks ended

_WIDTH_WORDS = {
    "Grow": "grew to {w} GPUs",
    "Shrink": "shrank to {w} GPUs",
    "NodeFailure": "lost a group on a failed node; continues at {w} GPUs",
    "SpareReleased": "lost a fill group when its spare was released; continues at {w} GPUs",
    "ReclaimedBySpare": "lost a fill group to a spare's owner; continues at {w} GPUs",
}


def width_history(history: list[Row]) -> list[Row]:
    """Every width the run had: ``{at, width, reason}``."""
    out: list[Row] = []
    for event in history:
        data, kind = event["data"], event["type"]
        if kind == "RunAdmitted":
            out.append({"at": event["at"], "width": data["width"], "reason": "Admitted"})
        elif kind == "RunResized":
            out.append({"at": event["at"], "width": data["width"], "reason": data["reason"]})
        elif kind == "RunRequeued":
            out.append({"at": event["at"], "width": 0, "reason": "Requeued"})
        elif kind == "RunFinished":
            out.append({"at": event["at"], "width": 0, "reason": data["phase"]})
    return out


def story(history: list[Row]) -> list[Row]:
    """One ``{at, event, text}`` per step of the run's life, in order."""
    leases: dict[str, Row] = {}
    failed_at: FailedRanks = {}
    out: list[Row] = []
    for event in history:
        data, kind, at = event["data"], event["type"], event["at"]
        if kind == "LeaseStarted":
            leases[data["lease_id"]] = data
        text = _line(kind, data, event, leases, failed_at)
        if text:
            out.append({"at": at, "event": kind, "text": text})
    return out


def _line(kind: str, data: Row, event: Row, leases: dict[str, Row], failed_at: FailedRanks) -> str | None:
    at = event["at"]
    if kind == "RunSubmitted":
        return f"submitted by {data['submitter']}"
    if kind == "RunAdmitted":
        return f"admitted at {data['width']} GPUs"
    if kind == "RunDeferred":
        return f"waiting: {data['message']}"
    if kind == "RunShrinkRequested":
        return f"{event['actor']} asked to shrink by {data['by']} GPUs"
    if kind == "RunResized":
        return _WIDTH_WORDS.get(data["reason"], "width {w} GPUs ({r})").format(w=data["width"], r=data["reason"])
    if kind == "RunRequeued":
        return f"requeued ({data['reason']}); it keeps its place in the queue"
    if kind == "RunFinished":
        return f"{data['phase']}: {data['reason']}"
    if kind == "LeaseEnded":
        return _ended(data, at, leases, failed_at)
    if kind in _RESERVATION_WORDS:
        return _RESERVATION_WORDS[kind](data)
    if kind == "LeaseStarted":
        return _started(data, at, failed_at)
    return None


def _ended(data: Row, at: str | None, leases: dict[str, Row], failed_at: FailedRanks) -> str | None:
    lease = leases.get(data["lease_id"])
    if lease is None:
        return None
    where = f"group {lease['group']} on {lease['node']}"
    if data["reason"] == "NodeFailure" and lease["role"] == "Active":
        failed_at.setdefault((at, lease["group"]), []).append(lease["node"])
        return None  # told with the swap, the resize or the requeue that follows
    if data["reason"] == "ReclaimedBySpare":
        return f"fill on {lease['node']} (GPUs {_slots(lease['slots'])}) reclaimed: the spare's group needed it"
    if data["reason"] == "SpareReleased":
        return f"fill on {lease['node']} ended: the spare under it was released"
    if lease["role"] == "Spare" and data["reason"] == "NodeFailure":
        return f"spare of {where} lost: the node failed"
    if data.get("seed"):
        return f"{where} ended by a reservation's activation: {data['reason']} (seed {data['seed']})"
    return None


def _warning(data: Row) -> str:
    shrink = f", shrink by {data['shrink_gpus']} GPUs" if data.get("shrink_gpus") else ""
    return (
        f"you are in the conflict set of {data['by']} ({data['reservation']}), ETA {data['earliest_start']}, "
        f"kill probability {data['kill_probability']:g}{shrink}"
    )


def _reserved(data: Row) -> str:
    remedies = ", ".join(f"{r['action']} {r['gpus']}" for r in data.get("remedies", [])) or "no cuts"
    deficit = sum(data.get("deficit", {}).values())
    return (
        f"reservation {data['reservation']}: earliest start {data['earliest_start']}, deficit {deficit} GPUs, "
        f"{remedies} ({data['confidence']})"
    )


_RESERVATION_WORDS: dict[str, Callable[[Row], str]] = {
    "ReservationCreated": _reserved,
    "ReservationChanged": lambda d: "changed: " + _reserved(d),
    "ReservationReleased": lambda d: f"reservation {d['reservation']} released: {d['reason']}",
    "ReservationCancelled": lambda d: f"reservation {d['reservation']} cancelled",
    "ReservationActivated": lambda d: (
        f"reservation {d['reservation']} activated: {d['freed']} GPUs freed by cuts (seed {d['seed']})"
    ),
    "ConflictWarningIssued": _warning,
}


def _started(data: Row, at: str | None, failed_at: FailedRanks) -> str | None:
    if data["reason"] == "Swap":
        nodes = failed_at.get((at, data["group"]), [])
        source = f" from failed node {', '.join(sorted(set(nodes)))}" if nodes else ""
        return (
            f"swap: group {data['group']}'s ranks (GPUs {_slots(data['slots'])}) moved{source} onto spare node "
            f"{data['node']}, same payer"
        )
    if data["reason"] == "SpareReplaced":
        return f"group {data['group']} got a new spare node {data['node']}"
    if data["reason"] == "Admitted" and data["role"] == "Fill":
        return f"filling spare-held GPUs {_slots(data['slots'])} on {data['node']} (unfunded)"
    return None


def _slots(slots: list[int]) -> str:
    if slots and slots == list(range(slots[0], slots[-1] + 1)) and len(slots) > 2:
        return f"{slots[0]}-{slots[-1]}"
    return ",".join(str(s) for s in slots)
