"""Lowering (SPEC §2): a run at some width becomes placement groups.

With ``groupGPUs = g`` a width ``w`` is ``w / g`` groups of ``g`` GPUs, each kept
inside one fabric domain. Without it the width is one group that may spread over
domains. Indices count from ``first_index`` so growth (SPEC §7) can add groups
above the highest index in use.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.model import RunSpec


@dataclass(frozen=True, slots=True)
class GroupDemand:
    index: int
    gpus: int
    spread: bool  # True: no groupGPUs, the group may span domains (SPEC §3.2)


def lower(spec: RunSpec, width: int, first_index: int = 0) -> list[GroupDemand]:
    """The groups of ``spec`` at ``width`` GPUs."""
    size = spec.locality.group_gpus
    if size is None:
        return [GroupDemand(first_index, width, spread=True)]
    if width % size:
        raise ValueError(f"width {width} is not a multiple of groupGPUs {size}")
    return [GroupDemand(first_index + i, size, spread=False) for i in range(width // size)]


def admission_widths(spec: RunSpec, desired: int | None = None) -> list[int]:
    """Widths to try at admission, widest first (SPEC §4.4 / §7).

    A fixed run has one width. A malleable run tries ``desired`` down to ``min``
    in steps of ``stepGPUs``.
    """
    if spec.malleable is None:
        return [spec.resources.total_gpus]
    top = spec.desired_gpus if desired is None else desired
    low, step = spec.malleable.min_total_gpus, spec.malleable.step_gpus
    top = max(low, min(top, spec.malleable.max_total_gpus))
    return list(range(top, low - 1, -step))
