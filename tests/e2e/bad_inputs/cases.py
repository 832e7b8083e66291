"""The bad-input corpus's building blocks: the base manifests, ``Case`` and its builders.

Each builder edits one base manifest (``run``, ``budget``, ``node``, ``policy``) or
gives raw content or argv; ``corpus.py`` holds the tables of cases built with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
RUN = (EXAMPLES / "resnet-small.yaml").read_text().replace("name: resnet-small", "name: corpus-run")
BUDGET = (EXAMPLES / "budget-rai-sys.yaml").read_text()
CLUSTER = """apiVersion: rq.davidlangworthy.io/v1
kind: Cluster
metadata: {name: corpus}
spec:
  nodes:
    - {name: z-0, gpuType: H100-80GB, gpus: 8, labels: {region: us-west, cluster: c1, fabricDomain: Z}}
"""
POLICY = """apiVersion: rq.davidlangworthy.io/v1
kind: Policy
metadata: {name: default}
spec:
  reservationNotice: 15m
  accountingPeriod: 24h
  spareChargeRate: 0.5
  admins: [root-admin]
"""
#: the existing runs the per-run commands may name (ELASTIC is submitted by the fixture)
EXISTING = "rai-sys/resnet-small"
ELASTIC = "rai-sys/corpus-elastic"
ELASTIC_RUN = RUN.replace("name: corpus-run", "name: corpus-elastic").replace(
    "  runtime:", "  malleable: {minTotalGPUs: 8, maxTotalGPUs: 16, stepGPUs: 8}\n  runtime:"
)
UNKNOWN = "rai-sys/no-such-run"


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: str
    manifest: str | bytes | None = None
    code: int = 2
    user: str = "root-admin"
    env: dict[str, str] = field(default_factory=dict)
    #: typer's own usage error (a framed message of several lines) rather than ours (one line)
    usage: bool = False


def edit(base: str, old: str, new: str) -> str:
    if old not in base:
        raise AssertionError(f"corpus: {old!r} is not in the base manifest")
    return base.replace(old, new, 1)


def run(case: str, old: str, new: str, expect: str, **kw: object) -> Case:
    return Case(f"run: {case}", ("submit", "-f", "{file}"), expect, edit(RUN, old, new), **kw)  # type: ignore[arg-type]


def spec(case: str, extra: str, expect: str) -> Case:
    """A Run with ``extra`` YAML lines added to its spec."""
    return run(case, "  runtime:", extra + "\n  runtime:", expect)


def budget(case: str, old: str, new: str, expect: str, **kw: object) -> Case:
    args = ("budgets", "apply", "-f", "{file}")
    return Case(f"budget: {case}", args, expect, edit(BUDGET, old, new), **kw)  # type: ignore[arg-type]


def envelope(case: str, extra: str, expect: str) -> Case:
    return budget(case, "      concurrency: 64", "      concurrency: 64\n" + extra, expect)


def node(case: str, entry: str, expect: str, **kw: object) -> Case:
    old = "{name: z-0, gpuType: H100-80GB, gpus: 8, labels: {region: us-west, cluster: c1, fabricDomain: Z}}"
    text = edit(CLUSTER, old, entry)
    return Case(f"cluster: {case}", ("nodes", "apply", "-f", "{file}"), expect, text, **kw)  # type: ignore[arg-type]


def policy(case: str, old: str, new: str, expect: str) -> Case:
    return Case(f"policy: {case}", ("submit", "-f", "{file}"), expect, edit(POLICY, old, new))


def raw(case: str, content: str | bytes, expect: str, args: tuple[str, ...] = ("submit", "-f", "{file}")) -> Case:
    return Case(f"file: {case}", args, expect, content)


def argv(case: str, args: tuple[str, ...], expect: str, **kw: object) -> Case:
    return Case(f"args: {case}", args, expect, **kw)  # type: ignore[arg-type]


def deep_flow(levels: int) -> str:
    return "{a: " * levels + "1" + "}" * levels


def deep_block(levels: int) -> str:
    return "\n".join("    " + "  " * i + "a:" for i in range(levels)) + " 1"


BOMB = "\n".join(
    [
        "  template:",
        '    l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)),
    ]
)
TOTAL = ("totalGPUs: 8",)
TEN_MIB = 10 * 1024 * 1024
