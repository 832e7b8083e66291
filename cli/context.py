"""Global options and the lazily opened ledger and application of one CLI invocation (``Invocation``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
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


class Invocation:
    """One CLI invocation's state: its global options, its ledger (one engine, so one
    connection pool for the whole process run, reused by every `watch` refresh) and its
    application service. ``cli.main.run`` makes one per invocation and hands it to click
    as the root context's ``obj``; ``close`` disposes of everything at exit."""

    def __init__(self, options: Globals) -> None:
        self.options = options
        self._ledger: Ledger | None = None
        self._embedded = False
        self._app: JobtreeApp | None = None

    def ledger(self, *, services: bool = False) -> Ledger:
        """The ledger (opened once). On the embedded default, ``services`` also makes sure its
        planner service runs in the background (``service.daemon``).

        The embedded default connects as its runtime role and migrates (as its superuser)
        when the schema is behind; a shared ledger (``--db``) is only checked, never migrated.
        """
        from ledger import schema
        from ledger.embedded import resolve_database_url, runtime_url
        from ledger.store import Ledger
        from service import daemon

        if self._ledger is not None:
            return self._ledger
        url, embedded = resolve_database_url(self.options.db)
        if embedded:
            ledger = _open_embedded(url)
        else:
            ledger = Ledger.from_url(url)
            try:
                schema.require(ledger.engine)
            except BaseException:
                ledger.dispose()
                raise
        self._ledger, self._embedded = ledger, embedded
        if embedded and services:
            daemon.ensure_running(ledger, runtime_url(url))  # the service runs as the runtime role too
        return ledger

    def app(self) -> JobtreeApp:
        """The application service (one per invocation, reused by `watch`)."""
        from service.app import JobtreeApp
        from service.identity import authenticate, bootstrap_admins, resolve_caller
        from service.ports import WallClock

        if self._app is not None:
            return self._app
        ledger = self.ledger(services=True)
        auth = authenticate(ledger, embedded=self._embedded)
        caller = resolve_caller(ledger, auth, as_user=self.options.as_user)
        now = JobtreeApp.resolve_now(ledger, self.options.now, WallClock().now())
        requested = now if self.options.now is not None else None
        self._app = JobtreeApp(
            ledger,
            caller,
            now,
            requested=requested,
            bootstrap=bootstrap_admins(auth, caller),
        )
        return self._app

    def notices(self) -> list[str]:
        """What the service wants the user to know (e.g. no planner is running), printed on stderr."""
        return list(self._app.planning.notices) if self._app is not None else []

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None
        if self._ledger is not None:
            self._ledger.dispose()
            self._ledger = None
        set_timeouts(None)  # --db-timeout lasts one invocation (tests run many in one process)


#: The invocation whose command is running: bound by ``invoked`` for the length of one
#: invocation (a context variable, so nested invocations — `demo` — each see their own).
_CURRENT: ContextVar[Invocation] = ContextVar("jobtree_invocation")


@contextmanager
def invoked(options: Globals) -> Iterator[Invocation]:
    """Make ``options``' invocation the current one while the command runs (the caller closes it)."""
    invocation = Invocation(options)
    token = _CURRENT.set(invocation)
    try:
        yield invocation
    finally:
        _CURRENT.reset(token)


def current() -> Invocation:
    """The invocation whose command is running."""
    found = _CURRENT.get(None)
    if found is None:
        raise RuntimeError("no CLI invocation is running (cli.main.run makes one)")
    return found


def options() -> Globals:
    """This invocation's global options (the defaults outside one: rendering helpers in tests)."""
    found = _CURRENT.get(None)
    return found.options if found is not None else Globals()


def open_ledger(*, services: bool = False) -> Ledger:
    return current().ledger(services=services)


def open_app() -> JobtreeApp:
    return current().app()


def _open_embedded(owner_url: str) -> Ledger:
    from ledger import schema
    from ledger.embedded import prepare_embedded, runtime_url
    from ledger.errors import LedgerError
    from ledger.store import Ledger
    from service.identity import record_creator

    ledger = Ledger.from_url(runtime_url(owner_url))
    try:
        fresh = schema.up_to_date(ledger.engine)
    except LedgerError:  # the runtime role does not exist yet, or may not read the version
        fresh = False
    if not fresh and prepare_embedded(owner_url):
        record_creator(ledger)
    return ledger
