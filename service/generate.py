"""`jobtree sim generate`: a synthetic month (or any span) of work for a fleet, as a scenario.

Deterministic by seed: every draw comes from one ``random.Random(seed)`` in a fixed order
(the planner stays pure; randomness lives only here). The mix (``--mix FILE``, YAML) sets
the distributions; every key is optional and defaults to ``DEFAULT_MIX``:

```yaml
gpuType: H100-80GB
gpusPerNode: 8
nodesPerDomain: 32             # nodes per fabric domain (NVLink island)
arrivals: {dailyCycle: 0.6, peakHour: 14}   # Poisson; rate ∝ 1 + dailyCycle·cos(2π(hour - peakHour)/24)
sizes:                          # run shapes and their weights
  - {gpus: 1, weight: 25}
  - {gpus: 64, groupGPUs: 32, spares: 1, weight: 5}
durations: {median: 1h, sigma: 1.0, min: 5m, max: 48h}   # log-normal, clipped
opportunistic: 0.1              # share of runs that may run unfunded
teams:                          # owner org:gen:<family>:<name>; share of the fleet's GPUs as its envelope
  - {name: sys, family: rai, share: 0.16, lend: true}
  - {name: nlp, family: rai, share: 0.12, borrow: true}
```

Teams in one family share their envelopes (``sharing: family``); a team with ``lend``
lends up to half its envelope to anyone; runs of a team with ``borrow`` may borrow from
the lenders. A team's share of the arrivals is its share of the fleet.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import yaml

from ledger.fields import API_VERSION, format_duration, parse_duration
from service.errors import BadInput
from service.workload import Row

DEFAULT_START = datetime.fromisoformat("2026-01-05T00:00:00+00:00")
DEFAULT_MIX: dict[str, Any] = {
    "gpuType": "H100-80GB",
    "gpusPerNode": 8,
    "nodesPerDomain": 32,
    "arrivals": {"dailyCycle": 0.6, "peakHour": 14},
    "sizes": [
        {"gpus": 1, "weight": 25},
        {"gpus": 2, "weight": 10},
        {"gpus": 4, "weight": 15},
        {"gpus": 8, "weight": 20},
        {"gpus": 16, "groupGPUs": 16, "weight": 12},
        {"gpus": 32, "groupGPUs": 32, "weight": 10},
        {"gpus": 64, "groupGPUs": 32, "spares": 1, "weight": 8},
    ],
    "durations": {"median": "1h", "sigma": 1.0, "min": "5m", "max": "48h"},
    "opportunistic": 0.1,
    "teams": [
        {"name": "sys", "family": "rai", "share": 0.16, "lend": True},
        {"name": "nlp", "family": "rai", "share": 0.12, "borrow": True},
        {"name": "vision", "family": "mm", "share": 0.14, "lend": True},
        {"name": "audio", "family": "mm", "share": 0.08, "borrow": True},
        {"name": "agents", "family": "rl", "share": 0.12},
        {"name": "robots", "family": "rl", "share": 0.08, "borrow": True},
        {"name": "eval", "family": "infra", "share": 0.06},
        {"name": "data", "family": "infra", "share": 0.04, "borrow": True},
    ],
}


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    family: str
    share: float
    lend: bool
    borrow: bool

    @property
    def owner(self) -> str:
        return f"org:gen:{self.family}:{self.name}"

    @property
    def namespace(self) -> str:
        return f"{self.family}-{self.name}"


def load_mix(text_value: str | None) -> dict[str, Any]:
    """The mix: ``DEFAULT_MIX`` with the file's top-level keys replacing the defaults'."""
    mix = dict(DEFAULT_MIX)
    if text_value is None:
        return mix
    try:
        raw = yaml.safe_load(text_value)
    except yaml.YAMLError as exc:
        raise BadInput("--mix", f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise BadInput("--mix", "must be a mapping of mix keys (gpuType, sizes, teams, ...)")
    for key in raw:
        if key not in DEFAULT_MIX:
            raise BadInput(f"--mix: {key}", f"unknown key (a mix takes {', '.join(DEFAULT_MIX)})")
    mix.update(raw)
    return mix


def generate(days: float, nodes: int, runs: int, seed: int, mix: dict[str, Any]) -> dict[str, Any]:
    """The scenario document (a dict ready for YAML)."""
    if days <= 0 or nodes <= 0 or runs < 0:
        raise BadInput("--days/--nodes/--runs", "days and nodes must be positive and runs at least 0")
    rng = random.Random(seed)
    gpu_type = str(mix["gpuType"])
    per_node, per_domain = _positive(mix, "gpusPerNode"), _positive(mix, "nodesPerDomain")
    teams = _teams(mix["teams"])
    horizon = timedelta(days=days)
    fleet_gpus = nodes * per_node
    rows = _rows(rng, mix, teams, runs, horizon)
    return {
        "apiVersion": API_VERSION,
        "kind": "Scenario",
        "metadata": {"name": f"generated-{seed}"},
        "spec": {
            "start": DEFAULT_START.isoformat().replace("+00:00", "Z"),
            "nodes": [_node(i, gpu_type, per_node, per_domain) for i in range(nodes)],
            "budgets": [_budget(team, teams, gpu_type, fleet_gpus) for team in teams],
            "steps": [{"at": format_duration(horizon), "advance": True}],
            "workload": {"gpuType": gpu_type, "rows": [r.text() for r in rows]},
        },
    }


def dump(document: dict[str, Any]) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return str(yaml.dump(document, Dumper=dumper, sort_keys=False, width=1_000_000, default_flow_style=False))


def _positive(mix: dict[str, Any], key: str) -> int:
    value = mix[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadInput(f"--mix: {key}", f"must be a positive whole number (got {value!r})")
    return value


def _teams(raw: Any) -> list[Team]:
    if not isinstance(raw, list) or not raw:
        raise BadInput("--mix: teams", "must be a non-empty list of {name, family, share}")
    teams = []
    for index, item in enumerate(raw):
        where = f"--mix: teams[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadInput(where, "must be a mapping with name, family and share")
        share = item.get("share", 0.1)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise BadInput(f"{where}.share", f"must be a fraction of the fleet in (0, 1] (got {share!r})")
        family = str(item.get("family", item["name"]))
        teams.append(Team(item["name"], family, float(share), bool(item.get("lend")), bool(item.get("borrow"))))
    return teams


def _node(index: int, gpu_type: str, per_node: int, per_domain: int) -> dict[str, Any]:
    labels = {"region": "us-west", "cluster": "c1", "fabricDomain": f"d{index // per_domain:03d}"}
    return {"name": f"n-{index:05d}", "gpuType": gpu_type, "gpus": per_node, "labels": labels}


def _budget(team: Team, teams: list[Team], gpu_type: str, fleet_gpus: int) -> dict[str, Any]:
    concurrency = max(1, round(team.share * fleet_gpus))
    envelope: dict[str, Any] = {"name": "fleet", "gpuType": gpu_type, "selector": {"cluster": "c1"},
                                "concurrency": concurrency}  # fmt: skip
    if team.lend:
        envelope["lending"] = {"allow": True, "to": ["*"], "maxConcurrency": max(1, concurrency // 2)}
    return {
        "apiVersion": API_VERSION,
        "kind": "Budget",
        "metadata": {"name": team.namespace},
        "spec": {"owner": team.owner, "parents": [f"org:gen:{team.family}"], "envelopes": [envelope]},
    }


def _rows(rng: random.Random, mix: dict[str, Any], teams: list[Team], runs: int, horizon: timedelta) -> list[Row]:
    """``runs`` arrivals: a Poisson process with a daily cycle, given its count (one uniform draw each, thinned)."""
    cycle = float(mix["arrivals"].get("dailyCycle", 0.0))
    peak = float(mix["arrivals"].get("peakHour", 14))
    sizes = mix["sizes"]
    weights = [float(s["weight"]) for s in sizes]
    durations = mix["durations"]
    median = _seconds(durations, "median", "2h")
    sigma = float(durations.get("sigma", 1.0))
    shortest = _seconds(durations, "min", "1m")
    longest = _seconds(durations, "max", "168h")
    opportunistic = float(mix.get("opportunistic", 0.0))
    lenders = tuple(t.owner for t in teams if t.lend)
    span = horizon.total_seconds()
    arrivals = sorted(_arrival(rng, span, cycle, peak) for _ in range(runs))
    team_weights = [t.share for t in teams]
    rows = []
    for index, second in enumerate(arrivals):
        team = rng.choices(teams, team_weights)[0]
        size = rng.choices(sizes, weights)[0]
        seconds = min(longest, max(shortest, math.exp(math.log(median) + sigma * rng.gauss(0.0, 1.0))))
        run_for = timedelta(minutes=max(1, round(seconds / 60)))
        rows.append(
            Row(
                index,
                timedelta(minutes=int(second // 60)),
                f"{team.namespace}/r-{index:06d}",
                team.owner,
                int(size["gpus"]),
                run_for,
                group=size.get("groupGPUs"),
                spares=int(size.get("spares", 0)),
                borrow=tuple(o for o in lenders if o != team.owner) if team.borrow else (),
                opportunistic=rng.random() < opportunistic,
            )
        )
    return rows


def _seconds(durations: dict[str, Any], key: str, default: str) -> float:
    try:
        return parse_duration(str(durations.get(key, default))).total_seconds()
    except ValueError as exc:
        raise BadInput(f"--mix: durations.{key}", str(exc)) from None


def _arrival(rng: random.Random, span: float, cycle: float, peak: float) -> float:
    """One arrival time in [0, span) seconds with density ∝ 1 + cycle·cos(2π(hour - peak)/24)."""
    top = 1.0 + abs(cycle)
    while True:
        second = rng.random() * span
        hour = (second / 3600.0) % 24.0
        if rng.random() * top <= 1.0 + cycle * math.cos(2 * math.pi * (hour - peak) / 24.0):
            return second
