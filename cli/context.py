"""Global options and the lazily opened application for one CLI invocation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cli.app import JobtreeApp
from cli.errors import BadInput
from cli.identity import caller_from_environment
from cli.render import FORMATS
from ledger.embedded import TIMEOUT_ENV, migrate, parse_timeouts, resolve_database_url, set_timeouts
from ledger.manifest_yaml import CONTROL
from ledger.store import Ledger

_VALUED = {
    "--db": "db",
    "-o": "output",
    "--output": "output",
    "--as": "as_user",
    "--now": "now",
    "-n": "namespace",
    "--namespace": "namespace",
    "--kubeconfig": "kubeconfig",  # kube mode (cli/kubemode.py); also the workers' API server
    "--context": "kube_context",
    "--db-timeout": "db_timeout",  # SECONDS or CONNECT:STATEMENT (ledger.embedded.parse_timeouts)
}


@dataclass(slots=True)
class Globals:
    db: str | None = None
    output: str = "table"
    as_user: str | None = None
    now: str | None = None
    namespace: str | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None
    db_timeout: str | None = None
    rest: list[str] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return self.namespace or os.environ.get("JOBTREE_NAMESPACE") or "default"


GLOBALS = Globals()
_OPEN: list[Ledger] = []


def split_globals(args: list[str]) -> Globals:
    """Lift global options out of argv wherever they stand (kubectl style)."""
    found = Globals()
    rest: list[str] = []
    for index, arg in enumerate(args):  # SPEC §12: no NUL or control characters, anywhere
        bad = CONTROL.search(arg)
        if bad:
            where = args[index - 1] if index and args[index - 1].startswith("-") else f"argument {index + 1}"
            raise BadInput(where, f"control character U+{ord(bad.group()):04X} is not allowed")
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name, eq, inline = arg.partition("=")
        if name in _VALUED and (eq or name.startswith("--") or len(arg) == 2):
            if eq:
                value = inline
            elif i + 1 < len(args):
                value = args[i + 1]
                i += 1
            else:
                raise BadInput(name, "needs a value")
            setattr(found, _VALUED[name], value)
        else:
            rest.append(arg)
        i += 1
    if found.output not in FORMATS:
        raise BadInput("-o", f"must be one of {', '.join(FORMATS)} (got {found.output!r})")
    option: str = f"${TIMEOUT_ENV}"
    limits = os.environ.get(TIMEOUT_ENV)
    if found.db_timeout is not None:
        option, limits = "--db-timeout", found.db_timeout or "''"
    try:
        set_timeouts(parse_timeouts(limits))
    except ValueError as exc:
        raise BadInput(option, str(exc)) from None
    found.rest = rest
    return found


def open_ledger(db: str | None = None) -> Ledger:
    url, _embedded = resolve_database_url(db if db is not None else GLOBALS.db)
    migrate(url)
    ledger = Ledger.from_url(url)
    _OPEN.append(ledger)
    return ledger


def open_app(ledger: Ledger | None = None) -> JobtreeApp:
    ledger = ledger or open_ledger()
    wall = datetime.now(UTC).replace(microsecond=0)
    now = JobtreeApp.resolve_now(ledger, GLOBALS.now, wall)
    return JobtreeApp(ledger, caller_from_environment(), now, as_user=GLOBALS.as_user)


def close() -> None:
    while _OPEN:
        _OPEN.pop().engine.dispose()
    set_timeouts(None)  # --db-timeout lasts one invocation (tests run many in one process)
