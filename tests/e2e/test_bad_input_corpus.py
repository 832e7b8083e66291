"""The bad-input corpus (tests/e2e/bad_inputs/corpus.py): every case is refused.

Each case asserts the exit code (2 for bad input, 1 for "not found"), the field named in
stderr (one line, unless typer itself reports a usage error), no traceback, no event
written, and a generous wall-time bound as a hang guard (the limits themselves are in
SPEC §12; a refusal is expected well inside 2 s).

All cases share one ledger (cluster, budget and one run set up once), and the event
count is compared before and after each case, so "nothing written" stays exact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.store import Ledger
from tests.conftest import PgServer
from tests.e2e.bad_inputs import exit_code
from tests.e2e.bad_inputs.cases import ELASTIC_RUN, EXAMPLES, Case
from tests.e2e.bad_inputs.corpus import ALL

HANG_GUARD_SECONDS = 10.0


@dataclass
class Shared:
    url: str
    ledger: Ledger

    def count(self) -> int:
        return self.ledger.count()


@pytest.fixture(scope="module")
def shared(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    name = f"corpus_{os.getpid()}"
    elastic = tmp_path_factory.mktemp("corpus") / "elastic.yaml"
    elastic.write_text(ELASTIC_RUN)
    url = pg_server.clone(name)
    ledger = Ledger.from_url(url)
    previous = os.environ.get("JOBTREE_USER")
    os.environ["JOBTREE_USER"] = "root-admin"
    try:
        for args in (
            ("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")),
            ("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml")),
            ("submit", "-f", str(EXAMPLES / "resnet-small.yaml")),
            ("submit", "-f", str(elastic)),
            ("get", "runs"),
        ):
            assert exit_code([*args, "--db", url]) == 0, args
        yield Shared(url, ledger)
    finally:
        if previous is None:
            os.environ.pop("JOBTREE_USER", None)
        else:
            os.environ["JOBTREE_USER"] = previous
        ledger.dispose()
        pg_server.drop(name)


def test_the_corpus_is_large_and_distinct() -> None:
    ids = [case.id for case in ALL]
    assert len(set(ids)) == len(ids), "case ids are unique"
    assert len({(case.args, case.manifest, case.user, tuple(case.env.items())) for case in ALL}) == len(ALL)
    assert len(ALL) >= 120


@pytest.mark.parametrize("case", ALL, ids=[case.id for case in ALL])
def test_bad_input_is_refused(
    case: Case, shared: Shared, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "manifest.yaml"
    if isinstance(case.manifest, bytes):
        path.write_bytes(case.manifest)
    elif case.manifest is not None:
        path.write_text(case.manifest, encoding="utf-8", errors="surrogatepass")
    args = [arg.replace("{file}", str(path)) for arg in case.args]
    monkeypatch.setenv("JOBTREE_USER", case.user)
    monkeypatch.delenv("JOBTREE_GROUPS", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = shared.count()
    capsys.readouterr()
    started = time.monotonic()
    code = exit_code([*args, "--db", shared.url])
    took = time.monotonic() - started
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == case.code, f"exit {code}, stderr {err!r}"
    assert case.expect in err, f"{case.expect!r} not named in {err!r}"
    if not case.usage:
        assert err.startswith("error: ") and err.count("\n") == 1, f"one clear line, got {err!r}"
    assert shared.count() == before, "nothing may be written"
    assert took < HANG_GUARD_SECONDS, f"took {took:.1f} s"
