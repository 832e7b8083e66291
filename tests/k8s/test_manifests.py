"""Every manifest Jobtree emits is checked against the real Kubernetes schemas (kubernetes-validate)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from binder.kube import crds as kube_crds
from binder.kube import pods as kp
from ledger.errors import ManifestError
from ledger.parsing import validate_document
from tests.k8s.conftest import ROOT, example
from tests.k8s.helm_render import TemplateError, documents, render_chart

VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
CHART = ROOT / "deploy" / "helm" / "jobtree"


def _crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(text) for text in kube_crds.files().values()]


@pytest.mark.parametrize("folder", [ROOT / "deploy" / "crds", CHART / "crds"])
def test_crd_files_are_what_the_models_generate(folder: Path) -> None:
    for name, content in kube_crds.files().items():
        assert (folder / name).read_text() == content, f"regenerate: python -m binder.kube.crds {folder}"


@pytest.mark.parametrize("version", VERSIONS)
def test_crds_are_valid_kubernetes(version: str) -> None:
    crds = list(_crds())
    assert len(crds) == 2, "the Run and Budget CRDs"
    for crd in crds:
        kubernetes_validate.validate(crd, version, strict=True)  # raises on any schema violation


def test_crds_have_status_short_names_and_printer_columns() -> None:
    run, budget = (kube_crds.run_crd(), kube_crds.budget_crd())
    for crd in (run, budget):
        (served,) = crd["spec"]["versions"]
        assert served["subresources"] == {"status": {}}
        assert crd["spec"]["names"]["shortNames"]
    columns = {c["name"]: c["jsonPath"] for c in run["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["GPUs"] == ".spec.resources.totalGPUs" and columns["Phase"] == ".status.phase"
    assert columns["Allocated"] == ".status.allocatedGPUs" and columns["ETA"] == ".status.eta"


def _jsonschema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) → JSON Schema, to check documents against the CRDs offline."""
    if isinstance(node, list):
        return [_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(key) is True:
            out[key] = out.pop(bound)
    if "properties" in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False  # the API server's strict field validation (kubectl --validate=strict)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _schema(kind: str) -> dict[str, Any]:
    crd = kube_crds.run_crd() if kind == "Run" else kube_crds.budget_crd()
    schema: dict[str, Any] = _jsonschema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return schema


def _crd_accepts(doc: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(doc, _schema(doc["kind"]))
    except jsonschema.ValidationError:
        return False
    return True


def _model_accepts(doc: dict[str, Any]) -> bool:
    try:
        validate_document(doc)
    except ManifestError:
        return False
    return True


EXAMPLES = ["resnet-small.yaml", "trainer-128.yaml", "wide-64.yaml", "over-budget.yaml", "budget-rai-sys.yaml"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_pass_both_the_crd_schema_and_the_model(name: str) -> None:
    for doc in yaml.safe_load_all((ROOT / "examples" / name).read_text()):
        if doc and doc["kind"] in ("Run", "Budget"):
            assert _crd_accepts(doc) and _model_accepts(doc)


def _edit(name: str, path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(example(name))
    *parents, last = path.split(".")
    target = doc
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return doc


FIELD_RULES = [
    _edit("resnet-small.yaml", "spec.resources.totalGPUs", 0),
    _edit("resnet-small.yaml", "spec.resources.gpuCount", 8),
    _edit("resnet-small.yaml", "spec.spares", -1),
    _edit("resnet-small.yaml", "spec.funding.maxBorrowGPUs", 0),
    _edit("resnet-small.yaml", "spec.owner", ""),
    _edit("resnet-small.yaml", "spec.runtime.checkpoint", 10),
    _edit("budget-rai-sys.yaml", "spec.envelopes", [{"name": "e", "gpuType": "H100", "concurrency": -1}]),
    _edit("budget-rai-sys.yaml", "spec.envelopes", [{"name": "e", "gpuType": "H", "concurrency": 1, "sharing": "x"}]),
    _edit("budget-rai-sys.yaml", "spec.parents", "org:ai"),
]


@pytest.mark.parametrize("doc", FIELD_RULES)
def test_field_rules_agree_between_crd_and_model(doc: dict[str, Any]) -> None:
    assert not _crd_accepts(doc)
    assert not _model_accepts(doc)


def test_cross_field_rules_live_in_the_model() -> None:
    doc = _edit("resnet-small.yaml", "spec.locality", {"groupGPUs": 3})
    assert _crd_accepts(doc) and not _model_accepts(doc)  # the intake reports it in status


def _plan(gpus: int = 8) -> kp.PodPlan:
    return kp.PodPlan("rai-sys/resnet-small", 0, "a-0", "Active", gpus, ("lease-000001",), 0, 1, gpus)


TEMPLATES = [
    None,
    {"spec": {"containers": [{"name": "t", "image": "trainer:1", "env": [{"name": "NODE_RANK", "value": "9"}]}]}},
    {
        "metadata": {"labels": {"a": "b"}, "annotations": {"c": "d"}},
        "spec": {
            "restartPolicy": "OnFailure",
            "nodeName": "sneaky",
            "containers": [{"name": "t", "image": "i"}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    },
]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("version", VERSIONS)
def test_pods_are_valid_kubernetes(template: dict[str, Any] | None, version: str) -> None:
    pod = kp.pod_manifest(_plan(), template)
    kubernetes_validate.validate(pod, version, strict=True)
    assert "nodeName" not in pod["spec"] and pod["spec"]["schedulerName"] == "jobtree"
    env = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert env.count("NODE_RANK") == 1


def test_long_names_stay_within_kubernetes_limits() -> None:
    long = kp.PodPlan("ns/" + "r" * 200, 12, "node-" + "x" * 80, "Active", 8, ("lease-000001",), 0, 1, 8)
    pod = kp.pod_manifest(long, None)
    assert len(pod["metadata"]["name"]) <= 63
    assert all(len(v) <= 63 for v in pod["metadata"]["labels"].values())
    kubernetes_validate.validate(pod, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_helm_template_renders_to_valid_kubernetes(version: str) -> None:
    docs = documents(render_chart(CHART))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 3 and "Secret" in kinds and kinds.count("ClusterRole") == 2
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_helm_values_flow_into_the_deployments() -> None:
    docs = documents(
        render_chart(
            CHART, {"image": {"tag": "9.9.9"}, "database": {"url": "postgresql://x/y"}}, name="jt", namespace="ops"
        )
    )
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"jt-planner", "jt-intake", "jt-binder"}
    container = deployments["jt-binder"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(":9.9.9") and container["args"][:2] == ["workers", "binder"]
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["stringData"]["url"] == "postgresql://x/y" and secret["metadata"]["namespace"] == "ops"


def test_the_cluster_value_reaches_the_intake_and_the_binder() -> None:
    def args(values: dict[str, Any]) -> dict[str, list[str]]:
        docs = documents(render_chart(CHART, values, name="jt"))
        return {
            d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"]
            for d in docs
            if d["kind"] == "Deployment"
        }

    east = args({"cluster": "east"})
    for worker in ("jt-intake", "jt-binder"):
        assert east[worker][east[worker].index("--cluster") + 1] == "east"
        default = args({})[worker]
        assert default[default.index("--cluster") + 1] == ""  # one cluster: every node served
    assert "--cluster" not in east["jt-planner"]  # one planner plans for every cluster


def _secret_of(container: dict[str, Any]) -> str:
    (env,) = [e for e in container["env"] if e["name"] == "JOBTREE_DATABASE_URL"]
    return str(env["valueFrom"]["secretKeyRef"]["name"])


def test_only_the_migrate_job_uses_the_owner_role() -> None:
    values = {"database": {"url": "postgresql://rt@db/j", "ownerUrl": "postgresql://own@db/j", "runtimeRole": "rt"}}
    docs = documents(render_chart(CHART, values, name="jt"))
    secrets = {d["metadata"]["name"]: d["stringData"]["url"] for d in docs if d["kind"] == "Secret"}
    assert secrets == {"jt-database": "postgresql://rt@db/j", "jt-database-owner": "postgresql://own@db/j"}
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")}
    used = {name: _secret_of(spec["containers"][0]) for name, spec in pods.items()}
    assert used == {"jt-planner": "jt-database", "jt-intake": "jt-database", "jt-binder": "jt-database",
                    "jt-migrate": "jt-database-owner"}  # fmt: skip
    job = pods["jt-migrate"]["containers"][0]
    assert job["args"] == ["db", "migrate", "--admin", "rt", "--admin", "jobtree-intake"]
    hooks = {d["metadata"]["name"]: d["metadata"].get("annotations", {}).get("helm.sh/hook") for d in docs}
    assert hooks["jt-migrate"] == hooks["jt-database-owner"] == "pre-install,pre-upgrade"


def test_rbac_grants_only_what_the_workers_use() -> None:
    roles = {d["metadata"]["name"]: d for d in documents(render_chart(CHART)) if d["kind"] == "ClusterRole"}
    grants = {
        name: {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
        for name, role in roles.items()
    }
    assert ("pods/binding", "create") in grants["jobtree-binder"]
    assert ("runs/status", "patch") in grants["jobtree-intake"]
    assert not any(r == "*" or v == "*" for pairs in grants.values() for r, v in pairs)
    assert not any(r.startswith("pods") for r, _ in grants["jobtree-intake"])
    assert {(r, v) for r, v in grants["jobtree-binder"] if r in ("runs", "budgets")} == {("runs", "get")}


def test_renderer_refuses_syntax_it_does_not_check(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: c\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("a: 1\n")
    (chart / "templates" / "x.yaml").write_text("{{ if .Values.a }}x{{ end }}\n")
    with pytest.raises(TemplateError):
        render_chart(chart)


def test_the_admission_webhook_reaches_the_intake_over_tls() -> None:
    docs = documents(render_chart(CHART, {"intake": {"webhook": {"caBundle": "Q0E="}}}, name="jt", namespace="ops"))
    (config,) = [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["caBundle"] == "Q0E=" and hook["failurePolicy"] == "Fail"
    assert hook["rules"] == [
        {
            "apiGroups": ["rq.davidlangworthy.io"],
            "apiVersions": ["v1"],
            "resources": ["runs"],  # not runs/status: the intake's own status writes are not admitted
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]
    ref = hook["clientConfig"]["service"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == ref["name"])
    assert service["metadata"]["namespace"] == ref["namespace"] == "ops"
    intake = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "jt-intake")
    pod = intake["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    (port,) = container["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"] and ref["port"] == 443
    args = container["args"]
    assert args[args.index("--webhook") + 1] == f"0.0.0.0:{port['containerPort']}"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args[args.index("--webhook-cert") + 1] == mounts["tls"] + "/tls.crt"
    assert "--no-webhook" not in args
