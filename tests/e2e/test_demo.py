"""`jobtree demo` is the researcher guide come alive: every promise it checks must hold."""

from __future__ import annotations

from tests.e2e.conftest import CLI


def test_the_demo_keeps_every_promise_of_the_guide(jt: CLI) -> None:
    result = jt("demo")
    assert result.code == 0, result.out[-3000:]
    assert "✗" not in result.out
    for chapter in ("Guide §2", "Guide §3", "Guide §4", "Guide §5", "Guide §6"):
        assert chapter in result.out
    assert result.out.count("✓") >= 26
    assert "Every promise of the guide's chapters held." in result.out
    # issue 14: the demo says why at each step, e.g. why a run waits 15 minutes
    whys = [line for line in result.out.splitlines() if line.startswith("# ")]
    assert len(whys) >= 14, whys
    assert "# the cluster is full: the trainer gets a reservation 15 minutes out" in result.out
