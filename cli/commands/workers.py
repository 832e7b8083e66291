"""`jobtree workers planner|intake|binder|relay`: the long-running services of a cluster install.

In a cluster the planner, the intake and the binder are separate Deployments
sharing one ledger database (``--db`` / ``JOBTREE_DATABASE_URL``). ``--once``
runs a single pass and exits (for tests, cron-style use and debugging).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from binder.admission import Admissions, Admitted, WebhookServer
from binder.worker import Backend, reconcile
from cli import context
from cli.commands import stream_options as so
from cli.commands.up import Up, serve
from cli.context import open_ledger
from cli.errors import BadInput, CommandError, Forbidden
from cli.render import console
from ledger.fields import parse_duration
from ledger.leader import Leadership, default_name
from ledger.model import Manifest, PolicySpec
from ledger.store import Ledger
from service.app import JobtreeApp
from service.errors import ServiceError
from service.identity import Identity, require_impersonator
from service.inprocess import InProcess

if TYPE_CHECKING:
    from binder.kube import KubeApi

# Kubernetes and Kafka are imported by the commands that use them: a sim binder or a planner
# worker starts without loading either (a restart after kill -9 is seconds faster).

app = typer.Typer(help="Run the planner, intake and binder services (a cluster install).", no_args_is_help=True)
log = logging.getLogger("jobtree.workers")
Clock = Callable[[], datetime]
_LABEL_VALUE = re.compile(r"(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")

KubeconfigOption = Annotated[
    str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file (default: in-cluster)")
]
ContextOption = Annotated[str | None, typer.Option("--context", help="kubeconfig context")]
OnceOption = Annotated[bool, typer.Option("--once", help="one pass, then exit")]
IntervalOption = Annotated[float, typer.Option("--interval", min=0.1, help="seconds between passes")]
ClusterOption = Annotated[
    str, typer.Option("--cluster", help="serve only nodes with this cluster label (SPEC §1.1); '' = every node")
]


def wall_clock() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def cluster_app(ledger: Ledger, caller: Identity, now: datetime) -> JobtreeApp:
    """The application service in Kubernetes mode: it plans in-process; pods are the binder worker's job."""
    return JobtreeApp(ledger, caller, now, planning=InProcess(bind=False, simulated=False))


@dataclass
class IntakeService:
    """binder.intake.Service over the CLI's application service, so the intake validates like the CLI."""

    app: JobtreeApp

    @property
    def ledger(self) -> Ledger:
        return self.app.pg

    @property
    def now(self) -> datetime:
        return self.app.now

    def apply(self, manifests: Iterable[Manifest], as_user: Admitted | None = None) -> None:
        from binder.intake import Rejected

        app = self.app if as_user is None else self._acting_for(as_user)
        try:
            app.apply(list(manifests))
        except Forbidden as exc:
            raise Rejected(str(exc), "Forbidden") from None
        except BadInput as exc:
            raise Rejected(str(exc), "BadInput") from None
        finally:
            if app is not self.app:
                app.close()

    def authorize(self, owner: str, user: str, groups: frozenset[str]) -> str | None:
        app = self._acting_for(Admitted(user, groups))
        try:
            app.require_submitter(owner)
        except Forbidden as exc:
            return str(exc)
        finally:
            app.close()
        return None

    def _acting_for(self, who: Admitted) -> JobtreeApp:
        """The user the API server authenticated (the intake is an impersonator: checked at start)."""
        planning = InProcess(bind=False, simulated=False)
        # bootstrap=[]: a Kubernetes user's first Run never makes it a fresh ledger's admin
        return JobtreeApp(
            self.app.ledger, Identity(who.user, who.groups), self.app.now, planning=planning, bootstrap=[]
        )

    def cancel(self, namespace: str, name: str) -> None:
        try:
            self.app.cancel(namespace, name)
        except ServiceError as exc:
            log.warning("cancel %s/%s: %s", namespace, name, exc)

    def sync(self) -> None:
        self.app.sync()

    def policy(self) -> PolicySpec:
        return self.app.policy()


def intake_service(ledger: Ledger, clock: Clock = wall_clock) -> Callable[[], IntakeService]:
    """A fresh service per pass (a new logical "now"), acting as the intake's identity."""

    def make() -> IntakeService:
        from binder.admission import INTAKE_ACTOR

        now = JobtreeApp.resolve_now(ledger, None, clock())
        return IntakeService(cluster_app(ledger, Identity(INTAKE_ACTOR, frozenset()), now))

    return make


def _connect(kubeconfig: str | None, kube_context: str | None) -> KubeApi:
    from binder.kube import KubeApi, KubeError

    # --kubeconfig/--context are lifted out of argv as global options (cli/context.py)
    kubeconfig = context.options().kubeconfig or kubeconfig
    kube_context = context.options().kube_context or kube_context
    try:
        return KubeApi.connect(kubeconfig, kube_context)
    except KubeError as exc:
        raise BadInput("--kubeconfig", str(exc)) from None


def _loop(step: Callable[[], str], once: bool, interval: float) -> None:
    from binder.kube import KubeForbidden, KubeUnauthorized, KubeUnavailable

    while True:
        try:
            console.print(step())
        except KubeForbidden as exc:  # retrying cannot grant a permission: one line, exit 1
            raise CommandError(f"Kubernetes {exc}; grant '{exc.permission()}' to this worker's account") from None
        except KubeUnauthorized as exc:
            raise CommandError(f"Kubernetes refused the credentials (401): {exc}") from None
        except KubeUnavailable as exc:
            if once:
                raise CommandError(f"Kubernetes API unavailable: {exc}") from None
            log.warning("Kubernetes API unavailable, retrying: %s", exc)
        if once:
            return
        time.sleep(interval)


@app.command("planner")
def planner(once: OnceOption = False, interval: IntervalOption = 2.0) -> None:
    """The planner service: state in memory, plans on every new input and at its due times (no binding)."""
    ledger = open_ledger()
    service = Up(ledger, Leadership(ledger, name=default_name("jobtree-planner")), binds=False)
    if once:
        with service.leadership:
            console.print(service.step().line(), markup=False)
        return
    serve(service, interval)


@app.command("binder")
def binder(
    kubeconfig: KubeconfigOption = None,
    kube_context: ContextOption = None,
    once: OnceOption = False,
    interval: IntervalOption = 2.0,
    grace_seconds: Annotated[int | None, typer.Option("--grace-seconds", help="pod deletion grace")] = None,
    backend_name: Annotated[str, typer.Option("--backend", help="kubernetes | sim")] = "kubernetes",
    sim_dir: Annotated[
        Path | None, typer.Option("--sim-dir", help="sim backend: a pod directory the binder workers share")
    ] = None,
    kafka: so.KafkaOption = None,
    topic: so.TopicOption = None,
    group: Annotated[str | None, typer.Option("--group", help="consumer group (jobtree-binder[-CLUSTER])")] = None,
    cluster: ClusterOption = "",
) -> None:
    """Bind pods for new leases, report PodBound/RunCompleted, delete pods of ended leases."""
    cluster = _cluster_value(cluster)
    if backend_name not in ("kubernetes", "sim"):
        raise BadInput("--backend", f"must be kubernetes or sim (got {backend_name!r})")
    config = so.bus_config(kafka, topic)
    ledger = open_ledger()
    backend: Backend = (
        so.sim_backend(sim_dir)
        if backend_name == "sim"
        else _kube_binder(ledger, kubeconfig, kube_context, grace_seconds)
    )
    if config is not None:
        from cli.commands import stream_workers as sw

        name = group or ("jobtree-binder-" + cluster if cluster else "jobtree-binder")
        sw.run_binder_group(ledger, backend, config, name, cluster, once, wall_clock)
        return
    from binder.kube.binder import KubeBinder

    if not isinstance(backend, KubeBinder):
        so.run_sim_binder(ledger, backend, once, interval, wall_clock, cluster)
        return
    kube = backend

    def step() -> str:
        bound, facts, removed = reconcile(ledger, kube, JobtreeApp.resolve_now(ledger, None, wall_clock()), cluster)
        return f"binder: {bound} lease(s) bound, {facts} fact(s) reported, {removed} pod(s) removed"

    _loop(step, once, interval)


def _cluster_value(value: str) -> str:
    """A cluster label value as Kubernetes allows it (empty: serve every cluster)."""
    value = value.strip()
    if value and not _LABEL_VALUE.fullmatch(value):
        raise BadInput(
            "--cluster",
            f"must be a Kubernetes label value (≤63 of A-Z a-z 0-9 - _ ., alphanumeric at both ends); got {value!r}",
        )
    return value


def _kube_binder(ledger: Ledger, kubeconfig: str | None, kube_context: str | None, grace: int | None) -> Backend:
    from binder.kube.binder import KubeBinder

    return KubeBinder(_connect(kubeconfig, kube_context), ledger, grace)


@app.command("relay")
def relay(
    kafka: so.KafkaOption = None,
    topic: so.TopicOption = None,
    once: OnceOption = False,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="longest wait between passes")] = 1.0,
    name: Annotated[str | None, typer.Option("--name", help="this relay's name")] = None,
) -> None:
    """Publish committed events in position order to the Kafka topic (at-least-once, resumes where it stopped)."""
    config = so.bus_config(kafka, topic)
    if config is None:
        raise BadInput("--kafka", "the relay needs a broker: --kafka HOST:PORT or $JOBTREE_KAFKA_BOOTSTRAP")
    from cli.commands import stream_workers as sw

    sw.run_relay(open_ledger(), config, once, interval, name)


@app.command("intake")
def intake(
    kubeconfig: KubeconfigOption = None,
    kube_context: ContextOption = None,
    once: OnceOption = False,
    watch_seconds: Annotated[int, typer.Option("--watch-seconds", min=1, help="watch window per pass")] = 5,
    grace: Annotated[str, typer.Option("--grace", help="NotReady grace period before NodeFailed")] = "5m",
    cluster: ClusterOption = "",
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="serve the admission webhook on HOST:PORT (e.g. 0.0.0.0:8443)")
    ] = None,
    webhook_cert: Annotated[Path | None, typer.Option("--webhook-cert", help="webhook TLS certificate (PEM)")] = None,
    webhook_key: Annotated[Path | None, typer.Option("--webhook-key", help="webhook TLS private key (PEM)")] = None,
    webhook_client_ca: Annotated[
        Path | None,
        typer.Option("--webhook-client-ca", help="accept only clients with a certificate from this CA (PEM)"),
    ] = None,
    no_webhook: Annotated[
        bool,
        typer.Option("--no-webhook", help="trusted mode: no webhook; Runs are submitted as the intake itself"),
    ] = False,
) -> None:
    """Turn Run/Budget objects and Nodes into ledger commands; write statuses back."""
    cluster = _cluster_value(cluster)
    try:
        grace_period = parse_duration(grace)
    except ValueError as exc:
        raise BadInput("--grace", str(exc)) from None
    from binder.admission import INTAKE_ACTOR
    from binder.intake import Intake

    address = _webhook_address(webhook, no_webhook)
    tls = _webhook_tls(webhook_cert, webhook_key)
    if webhook_client_ca is not None and (tls is None or not webhook_client_ca.is_file()):
        raise BadInput("--webhook-client-ca", "needs --webhook-cert and --webhook-key, and an existing PEM file")
    ledger = open_ledger()
    require_impersonator(ledger, INTAKE_ACTOR)  # it acts for the users the API server authenticated
    service = intake_service(ledger)
    admissions = None if no_webhook else Admissions(ledger)
    if address is not None and admissions is not None:
        _serve_webhook(address, (tls, webhook_client_ca), service, admissions)
    worker = Intake(
        _connect(kubeconfig, kube_context), service, grace=grace_period, admissions=admissions, cluster=cluster
    )

    def listed() -> str:
        worker.resync()
        return f"intake: {sum(len(v) for v in worker.objects.values())} object(s) listed"

    _loop(listed, True, 0)  # the first listing: a refusal or an unreachable API is one line, exit 1
    if once:
        return

    def step() -> str:
        return f"intake: {worker.watch(watch_seconds)} event(s)"

    _loop(step, once, 0.1)


def _webhook_address(webhook: str | None, no_webhook: bool) -> tuple[str, int] | None:
    if webhook is None and not no_webhook:
        raise BadInput(
            "--webhook",
            "required: the intake learns who submitted a Run only from its admission webhook "
            "(or pass --no-webhook when the cluster has none, and Runs are submitted as the intake)",
        )
    if webhook is None:
        return None
    if no_webhook:
        raise BadInput("--no-webhook", "not with --webhook")
    host, _, port = webhook.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise BadInput("--webhook", f"must be HOST:PORT with a port in 0..65535, 0: any free one (got {webhook!r})")
    return host.strip("[]"), int(port)


def _webhook_tls(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    if (cert is None) != (key is None):
        raise BadInput(
            "--webhook-cert" if cert is None else "--webhook-key", "give both --webhook-cert and --webhook-key"
        )
    for name, path in (("--webhook-cert", cert), ("--webhook-key", key)):
        if path is not None and not path.is_file():
            raise BadInput(name, f"no such file: {path}")
    return (cert, key) if cert is not None and key is not None else None


def _serve_webhook(
    address: tuple[str, int],
    tls: tuple[tuple[Path, Path] | None, Path | None],
    service: Callable[[], IntakeService],
    admissions: Admissions,
) -> WebhookServer:
    def authorize(owner: str, user: str, groups: frozenset[str]) -> str | None:
        return service().authorize(owner, user, groups)

    try:
        server = WebhookServer(*address, authorize, admissions, *tls).start()
    except (OSError, ValueError) as exc:
        raise BadInput("--webhook", str(exc)) from None
    console.print(f"intake: admission webhook on {address[0]}:{server.server_address[1]}", markup=False)
    return server
