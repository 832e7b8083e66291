"""Global options and the lazily opened application for one CLI invocation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cli.errors import BadInput
from ledger.limits import CONTROL
from ledger.timeouts import TIMEOUT_ENV, parse_timeouts, set_timeouts

if TYPE_CHECKING:  # imported when a command opens the ledger, not to print --help
    from ledger.store import Ledger
    from service.app import JobtreeApp

FORMATS = ("table", "wide", "name", "json", "yaml", "csv")  # cli.render renders them

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
    "--db-timeout": "db_timeout",  # SECONDS or CONNECT:STATEMENT (ledger.timeouts.parse_timeouts)
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
        """The namespace of lists and new runs: -n, else the configured one, else ``default``."""
        return self.namespace or self.configured_ns or "default"

    @property
    def configured_ns(self) -> str | None:
        """``$JOBTREE_NAMESPACE``, else the namespace the current kubeconfig context sets, else None."""
        return os.environ.get("JOBTREE_NAMESPACE") or kubeconfig_namespace(self.kubeconfig, self.kube_context)


def kubeconfig_namespace(path: str | None, chosen: str | None) -> str | None:
    """The namespace the kubeconfig's current (or ``--context``) context sets explicitly, if any.

    Read with YAML, not the Kubernetes client: naming a run must stay light."""
    import yaml

    files = (path or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")).split(os.pathsep)
    try:
        with open(files[0], encoding="utf-8") as handle:
            config = yaml.safe_load(handle.read(1 << 20))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    name = chosen or config.get("current-context")
    for entry in config.get("contexts") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            namespace = (entry.get("context") or {}).get("namespace")
            return str(namespace) if namespace else None
    return None


GLOBALS = Globals()
_OPEN: list[Ledger] = []
_APPS: list[JobtreeApp] = []
#: ``id(ledger)`` of the ledgers opened on the embedded default (their caller is the OS user)
_EMBEDDED: set[int] = set()


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


def open_ledger(db: str | None = None, *, services: bool = False) -> Ledger:
    """The ledger of this invocation (opened once). On the embedded default, ``services``
    also makes sure its planner service runs in the background (``service.daemon``).

    The embedded default connects as its runtime role and migrates (as its superuser)
    when the schema is behind; a shared ledger (``--db``) is only checked, never migrated.
    """
    from ledger import schema
    from ledger.embedded import resolve_database_url, runtime_url
    from ledger.store import Ledger
    from service import daemon

    if _OPEN and db is None:
        return _OPEN[0]
    url, embedded = resolve_database_url(db if db is not None else GLOBALS.db)
    if embedded:
        ledger = _open_embedded(url)
        _EMBEDDED.add(id(ledger))
    else:
        ledger = Ledger.from_url(url)
        try:
            schema.require(ledger.engine)
        except BaseException:
            ledger.engine.dispose()
            raise
    _OPEN.append(ledger)
    if embedded and services:
        daemon.ensure_running(ledger, runtime_url(url))  # the service runs as the runtime role too
    return ledger


def _open_embedded(owner_url: str) -> Ledger:
    from ledger import schema
    from ledger.embedded import prepare_embedded, runtime_url
    from ledger.errors import LedgerError
    from ledger.store import Ledger
    from service.identity import record_creator

    ledger = Ledger.from_url(runtime_url(owner_url))
    try:
        current = schema.up_to_date(ledger.engine)
    except LedgerError:  # the runtime role does not exist yet, or may not read the version
        current = False
    if not current and prepare_embedded(owner_url):
        record_creator(ledger)
    return ledger


def open_app(ledger: Ledger | None = None) -> JobtreeApp:
    """The application service for this invocation (one per process run, reused by `watch`)."""
    from service.app import JobtreeApp
    from service.identity import authenticate, bootstrap_admins, resolve_caller

    if _APPS and ledger is None:
        return _APPS[0]
    ledger = ledger or open_ledger(services=True)
    auth = authenticate(ledger, embedded=id(ledger) in _EMBEDDED)
    caller = resolve_caller(ledger, auth, as_user=GLOBALS.as_user)
    wall = datetime.now(UTC).replace(microsecond=0)
    now = JobtreeApp.resolve_now(ledger, GLOBALS.now, wall)
    requested = now if GLOBALS.now is not None else None
    app = JobtreeApp(
        ledger,
        caller,
        now,
        requested=requested,
        bootstrap=bootstrap_admins(auth, caller),
    )
    _APPS.append(app)
    return app


def notices() -> list[str]:
    """What the service wants the user to know (e.g. no planner is running), printed on stderr."""
    return [n for app in _APPS for n in app.planning.notices]


def close() -> None:
    while _APPS:
        _APPS.pop().close()
    while _OPEN:
        _EMBEDDED.discard(id(_OPEN[-1]))
        _OPEN.pop().engine.dispose()
    set_timeouts(None)  # --db-timeout lasts one invocation (tests run many in one process)
