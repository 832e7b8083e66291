"""Bad scenarios: one line naming the field, exit 2, and no simulation database left behind."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PgServer
from tests.e2e.conftest import CLI, EXAMPLES
from tests.e2e.test_sim import sim_databases

BASE: dict[str, Any] = yaml.safe_load((EXAMPLES / "scenarios" / "quickstart.yaml").read_text())
RUN = BASE["spec"]["steps"][0]["submit"][0]
Doc = dict[str, Any]


def _steps(*steps: Doc) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc["spec"]["steps"] = list(steps)

    return mutate


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return mutate


def _run(**spec_changes: Any) -> Doc:
    run: Doc = copy.deepcopy(RUN)
    run["spec"]["resources"].update(spec_changes)
    return run


SUBMIT = {"at": "0s", "submit": [RUN]}
MALLEABLE = copy.deepcopy(RUN)
MALLEABLE["metadata"]["name"] = "elastic"
MALLEABLE["spec"]["malleable"] = {"minTotalGPUs": 8, "maxTotalGPUs": 16, "stepGPUs": 8}

BAD: dict[str, tuple[Callable[[Doc], None], str]] = {
    "unknown action": (_steps({"at": "1m", "explode": "a-0"}), "spec.steps[0].explode: unknown action"),
    "two actions in a step": (
        _steps({"at": "1m", "fail": "a-0", "recover": "a-0"}),
        "spec.steps[0]: a step takes exactly one action",
    ),
    "no action": (_steps({"at": "1m"}), "spec.steps[0]: a step takes exactly one action"),
    "bad manifest inside": (
        _steps({"at": "1m", "submit": [_run(totalGPUs=0)]}),
        "spec.steps[0].submit[0].spec.resources.totalGPUs",
    ),
    "wrong kind inside submit": (
        _steps({"at": "1m", "submit": [BASE["spec"]["budgets"][0]]}),
        "spec.steps[0].submit[0].kind: must be Run",
    ),
    "unknown node": (_steps(SUBMIT, {"at": "1m", "fail": "x-9"}), "spec.steps[1].fail: unknown node x-9"),
    "bad duration": (_steps({"at": "five minutes", "advance": True}), "spec.steps[0].at"),
    "bare number duration": (_steps({"at": 5, "advance": True}), "spec.steps[0].at"),
    "steps out of order": (
        _steps({"at": "1h", "advance": True}, {"at": "30m", "advance": True}),
        "spec.steps[1].at: steps must be in time order",
    ),
    "unknown run": (_steps(SUBMIT, {"at": "1m", "complete": "rai-sys/nope"}), "spec.steps[1].complete: unknown run"),
    "advance must be true": (_steps({"at": "1m", "advance": "yes"}), "spec.steps[0].advance: must be true"),
    "shrink without by": (
        _steps(SUBMIT, {"at": "1m", "shrink": {"run": "rai-sys/resnet-small"}}),
        "spec.steps[1].shrink.by",
    ),
    "shrink at the minimum (found while running)": (  # SPEC §7: the second shrink would free nothing
        _steps(
            {"at": "0s", "submit": [MALLEABLE]},
            {"at": "1m", "shrink": {"run": "rai-sys/elastic", "by": 8}},
            {"at": "2m", "shrink": {"run": "rai-sys/elastic", "by": 8}},
        ),
        "spec.steps[2].shrink.by",
    ),
    "complete a finished run (found while running)": (
        _steps(
            SUBMIT, {"at": "1m", "cancel": "rai-sys/resnet-small"}, {"at": "2m", "complete": "rai-sys/resnet-small"}
        ),
        "spec.steps[2].complete",
    ),
    "start without a time zone": (_set("spec.start", "2026-01-05T09:00:00"), "spec.start"),
    "unknown spec field": (_set("spec.colour", "blue"), "spec.colour: unknown field"),
    "duplicate node": (
        _set("spec.nodes.1", BASE["spec"]["nodes"][0]),
        "spec.nodes: node name 'a-0' appears twice",
    ),
    "bad budget": (_set("spec.budgets.0.spec.envelopes.0.concurrency", -1), "spec.budgets[0].spec.envelopes[0]"),
    "bad policy": (_set("spec.policy", {"reservationNotice": "soon"}), "spec.policy.reservationNotice"),
    "not a scenario": (_set("kind", "Run"), "kind: must be Scenario"),
}


def write(tmp_path: Path, doc: Any) -> str:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scenario_is_rejected(
    jt: CLI, pg_server: PgServer, events: Callable[[], int], tmp_path: Path, case: str
) -> None:
    mutate, field = BAD[case]
    doc = copy.deepcopy(BASE)
    mutate(doc)
    before = events()
    result = jt("sim", "run", write(tmp_path, doc))
    assert result.code == 2, result.err
    assert field in result.err, result.err
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, f"one clear line, got {result.err!r}"
    assert result.out == ""
    assert events() == before, "the user's ledger is never touched"
    assert sim_databases(pg_server) == [], "nothing kept"


def test_malformed_yaml_and_missing_file(jt: CLI, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("spec: [unclosed")
    assert "malformed YAML" in jt("sim", "run", str(path)).err
    missing = jt("sim", "run", str(tmp_path / "nope.yaml"))
    assert missing.code == 2 and "SCENARIO: cannot read" in missing.err


def test_now_does_not_apply_to_a_scenario(jt: CLI) -> None:
    result = jt("sim", "run", str(EXAMPLES / "scenarios" / "quickstart.yaml"), "--now", "2030-01-01T00:00:00Z")
    assert result.code == 2 and "--now" in result.err


def test_equal_times_run_in_file_order(jt: CLI, tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["steps"] = [SUBMIT, {"at": "0s", "complete": "rai-sys/resnet-small"}]
    result = jt("sim", "run", write(tmp_path, doc), "-o", "json")
    assert result.code == 0, result.err
    (run,) = result.json()["runs"]
    assert run["phase"] == "Completed"
