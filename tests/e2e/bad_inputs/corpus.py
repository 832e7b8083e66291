"""The bad-input corpus: every row of issue 11's tables, every SPEC §1 and §12 rule, and the
arguments of every command. Each case is one CLI invocation that must be refused.

A ``Case`` names the argv (``{file}`` stands for the case's manifest, written to a
temporary file), the text that must appear in stderr (the field, usually with the rule),
and the exit code (2 for bad input; 1 where the documented outcome is "not found").
The ledger the cases run on holds the examples' cluster and the rai-sys budget, and the
run ``rai-sys/resnet-small``.
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


def _edit(base: str, old: str, new: str) -> str:
    if old not in base:
        raise AssertionError(f"corpus: {old!r} is not in the base manifest")
    return base.replace(old, new, 1)


def run(case: str, old: str, new: str, expect: str, **kw: object) -> Case:
    return Case(f"run: {case}", ("submit", "-f", "{file}"), expect, _edit(RUN, old, new), **kw)  # type: ignore[arg-type]


def spec(case: str, extra: str, expect: str) -> Case:
    """A Run with ``extra`` YAML lines added to its spec."""
    return run(case, "  runtime:", extra + "\n  runtime:", expect)


def budget(case: str, old: str, new: str, expect: str, **kw: object) -> Case:
    args = ("budgets", "apply", "-f", "{file}")
    return Case(f"budget: {case}", args, expect, _edit(BUDGET, old, new), **kw)  # type: ignore[arg-type]


def envelope(case: str, extra: str, expect: str) -> Case:
    return budget(case, "      concurrency: 64", "      concurrency: 64\n" + extra, expect)


def node(case: str, entry: str, expect: str, **kw: object) -> Case:
    old = "{name: z-0, gpuType: H100-80GB, gpus: 8, labels: {region: us-west, cluster: c1, fabricDomain: Z}}"
    text = _edit(CLUSTER, old, entry)
    return Case(f"cluster: {case}", ("nodes", "apply", "-f", "{file}"), expect, text, **kw)  # type: ignore[arg-type]


def policy(case: str, old: str, new: str, expect: str) -> Case:
    return Case(f"policy: {case}", ("submit", "-f", "{file}"), expect, _edit(POLICY, old, new))


def raw(case: str, content: str | bytes, expect: str, args: tuple[str, ...] = ("submit", "-f", "{file}")) -> Case:
    return Case(f"file: {case}", args, expect, content)


def argv(case: str, args: tuple[str, ...], expect: str, **kw: object) -> Case:
    return Case(f"args: {case}", args, expect, **kw)  # type: ignore[arg-type]


def _deep_flow(levels: int) -> str:
    return "{a: " * levels + "1" + "}" * levels


def _deep_block(levels: int) -> str:
    return "\n".join("    " + "  " * i + "a:" for i in range(levels)) + " 1"


_BOMB = "\n".join(
    [
        "  template:",
        '    l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)),
    ]
)
_TOTAL = ("totalGPUs: 8",)
_TEN_MIB = 10 * 1024 * 1024

RUNS = [
    run("totalGPUs 2^31", *_TOTAL, "totalGPUs: 2147483648", "spec.resources.totalGPUs"),
    run("totalGPUs 2^63", *_TOTAL, "totalGPUs: 9223372036854775808", "spec.resources.totalGPUs"),
    run("totalGPUs 10^30", *_TOTAL, "totalGPUs: 1000000000000000000000000000000", "spec.resources.totalGPUs"),
    run("totalGPUs 0", *_TOTAL, "totalGPUs: 0", "spec.resources.totalGPUs"),
    run("totalGPUs negative", *_TOTAL, "totalGPUs: -1", "spec.resources.totalGPUs"),
    run("totalGPUs true", *_TOTAL, "totalGPUs: true", "spec.resources.totalGPUs"),
    run("totalGPUs a string", *_TOTAL, 'totalGPUs: "8"', "spec.resources.totalGPUs"),
    run("totalGPUs a fraction", *_TOTAL, "totalGPUs: 8.5", "spec.resources.totalGPUs"),
    run("totalGPUs a float", *_TOTAL, "totalGPUs: 8.0", "spec.resources.totalGPUs"),
    run("totalGPUs .inf", *_TOTAL, "totalGPUs: .inf", "spec.resources.totalGPUs"),
    run("totalGPUs null", *_TOTAL, "totalGPUs: null", "spec.resources.totalGPUs"),
    run("totalGPUs missing", "    totalGPUs: 8\n", "", "spec.resources.totalGPUs"),
    run("totalGPUs a list", *_TOTAL, "totalGPUs: [8]", "spec.resources.totalGPUs"),
    run("gpuType empty", "gpuType: H100-80GB", 'gpuType: ""', "spec.resources.gpuType"),
    run("gpuType with a space", "gpuType: H100-80GB", 'gpuType: "H100 80GB"', "spec.resources.gpuType"),
    run("gpuType 300 characters", "gpuType: H100-80GB", "gpuType: " + "H" * 300, "spec.resources.gpuType"),
    spec("groupGPUs does not divide", "  locality: {groupGPUs: 3}", "groupGPUs"),
    spec("groupGPUs 0", "  locality: {groupGPUs: 0}", "spec.locality.groupGPUs"),
    spec("groupGPUs 2^40", "  locality: {groupGPUs: 1099511627776}", "spec.locality.groupGPUs"),
    spec("groupGPUs true", "  locality: {groupGPUs: true}", "spec.locality.groupGPUs"),
    spec("malleable min above total", "  malleable: {minTotalGPUs: 16, maxTotalGPUs: 32, stepGPUs: 8}", "malleable"),
    spec("malleable off step", "  malleable: {minTotalGPUs: 4, maxTotalGPUs: 16, stepGPUs: 8}", "stepGPUs"),
    spec("malleable step 0", "  malleable: {minTotalGPUs: 8, maxTotalGPUs: 16, stepGPUs: 0}", "stepGPUs"),
    spec(
        "malleable max 2^40",
        "  malleable: {minTotalGPUs: 8, maxTotalGPUs: 1099511627776, stepGPUs: 8}",
        "spec.malleable.maxTotalGPUs",
    ),
    spec(
        "malleable desired outside",
        "  malleable: {minTotalGPUs: 8, maxTotalGPUs: 16, stepGPUs: 8, desiredTotalGPUs: 24}",
        "desiredTotalGPUs",
    ),
    spec("malleable missing min", "  malleable: {maxTotalGPUs: 16, stepGPUs: 8}", "spec.malleable.minTotalGPUs"),
    spec("spares negative", "  spares: -1", "spec.spares"),
    spec("spares 1000000", "  spares: 1000000", "spec.spares"),
    spec("spares above 16", "  spares: 17", "spec.spares"),
    spec("spares true", "  spares: true", "spec.spares"),
    spec("maxBorrowGPUs 0", "  funding: {maxBorrowGPUs: 0}", "spec.funding.maxBorrowGPUs"),
    spec("maxBorrowGPUs 2^40", "  funding: {maxBorrowGPUs: 1099511627776}", "spec.funding.maxBorrowGPUs"),
    spec("sponsor blank", '  funding: {sponsors: [" "]}', "spec.funding.sponsors[0]"),
    spec("funding unknown field", "  funding: {borrowAll: true}", "spec.funding.borrowAll: unknown field"),
    spec("allowBorrow not a bool", "  funding: {allowBorrow: sometimes}", "spec.funding.allowBorrow"),
    run("checkpoint not a duration", '"10m"', '"ten minutes"', "spec.runtime.checkpoint"),
    run("checkpoint 0s", '"10m"', '"0s"', "spec.runtime.checkpoint"),
    run("checkpoint negative", '"10m"', '"-10m"', "spec.runtime.checkpoint"),
    run("checkpoint a number", '"10m"', "600", "spec.runtime.checkpoint"),
    run("maxDuration 99999999999h", '"10m"', '"10m"\n    maxDuration: 99999999999h', "spec.runtime.maxDuration"),
    run("maxDuration 0s", '"10m"', '"10m"\n    maxDuration: 0s', "spec.runtime.maxDuration"),
    run("maxDuration over 10 years", '"10m"', '"10m"\n    maxDuration: 87700h', "spec.runtime.maxDuration"),
    run("maxDuration ISO over 10 years", '"10m"', '"10m"\n    maxDuration: P4000D', "spec.runtime.maxDuration"),
    run("maxDuration 100 digits", '"10m"', '"10m"\n    maxDuration: ' + "9" * 100 + "h", "spec.runtime.maxDuration"),
    run("owner NUL (escaped)", "owner: org:ai:rai:sys", 'owner: "org:ai\\0:rai:sys"', "spec.owner"),
    run("owner BEL (escaped)", "owner: org:ai:rai:sys", 'owner: "org:ai\\a:rai:sys"', "spec.owner"),
    run("owner newline (escaped)", "owner: org:ai:rai:sys", 'owner: "org:ai\\n:rai:sys"', "spec.owner"),
    run("owner ESC (escaped)", "owner: org:ai:rai:sys", 'owner: "org:ai\\e[31m"', "spec.owner"),
    run("owner blank", "owner: org:ai:rai:sys", 'owner: "   "', "spec.owner"),
    run("owner empty", "owner: org:ai:rai:sys", 'owner: ""', "spec.owner"),
    run("owner missing", "  owner: org:ai:rai:sys\n", "", "spec.owner"),
    run("owner with a space", "owner: org:ai:rai:sys", 'owner: "org:ai rai"', "spec.owner"),
    run("owner 300 characters", "owner: org:ai:rai:sys", "owner: " + "o" * 300, "spec.owner"),
    run("owner a number", "owner: org:ai:rai:sys", "owner: 42", "spec.owner"),
    run("owner with no budget", "owner: org:ai:rai:sys", "owner: org:ai:nobody", "no Budget", user="alice"),
    Case("run: owner the caller may not act for", ("submit", "-f", "{file}"), "spec.owner", RUN, user="mallory"),
    run("name 300 characters", "name: corpus-run", "name: " + "a" * 300, "metadata.name"),
    run("name 254 characters", "name: corpus-run", "name: " + "a" * 254, "metadata.name"),
    run("name uppercase", "name: corpus-run", "name: Corpus-Run", "metadata.name"),
    run("name with a space", "name: corpus-run", 'name: "corpus run"', "metadata.name"),
    run("name emoji", "name: corpus-run", 'name: "run-\U0001f680"', "metadata.name"),
    run("name empty", "name: corpus-run", 'name: ""', "metadata.name"),
    run("name leading dash", "name: corpus-run", 'name: "-run"', "metadata.name"),
    run("name underscore", "name: corpus-run", "name: corpus_run", "metadata.name"),
    run("name double dot", "name: corpus-run", "name: corpus..run", "metadata.name"),
    run("name with a slash", "name: corpus-run", "name: corpus/run", "metadata.name"),
    run("name a number", "name: corpus-run", "name: 12", "metadata.name"),
    run("namespace 70 characters", "namespace: rai-sys", "namespace: " + "n" * 70, "metadata.namespace"),
    run("namespace 64 characters", "namespace: rai-sys", "namespace: " + "n" * 64, "metadata.namespace"),
    run("namespace with a dot", "namespace: rai-sys", "namespace: rai.sys", "metadata.namespace"),
    run("namespace uppercase", "namespace: rai-sys", "namespace: RAI", "metadata.namespace"),
    run("metadata label not a string", "namespace: rai-sys", "namespace: rai-sys\n  labels: {a: [1]}", "labels"),
    run("metadata unknown field", "namespace: rai-sys", "namespace: rai-sys\n  uid: x", "metadata.uid"),
    run("same name as an active run", "name: corpus-run", "name: resnet-small", "metadata.name"),
    spec("unknown spec field", "  colour: blue", "spec.colour: unknown field"),
    run("unknown top-level field", "kind: Run", "kind: Run\nstatus: {}", "status: unknown field"),
    run("unknown resources field", *_TOTAL, "totalGPUs: 8\n    memory: 80Gi", "spec.resources.memory"),
    run("wrong kind", "kind: Run", "kind: Job", "kind"),
    run("kind missing", "kind: Run\n", "", "kind"),
    run("kind a list", "kind: Run", "kind: [Run]", "kind"),
    run("wrong apiVersion", "rq.davidlangworthy.io/v1", "batch/v1", "apiVersion"),
    run("metadata missing", "metadata:\n  name: corpus-run\n  namespace: rai-sys\n", "", "metadata"),
    run("spec a number", "spec:\n", "spec: 5\nx:\n", "spec"),
    spec("template a list", "  template: [1, 2]", "spec.template"),
    spec("template a string", "  template: pod", "spec.template"),
    spec("template NUL (escaped)", '  template: {spec: {containers: [{name: "a\\0b"}]}}', "control character"),
    spec("template 65 levels", "  template: " + _deep_flow(65), "spec.template"),
    spec("template 5000 levels (flow)", "  template: " + _deep_flow(5000), "spec.template"),
    spec("template 200 levels (block)", "  template:\n" + _deep_block(200), "spec.template"),
    spec("template 300 KiB", '  template: {a: "' + "x" * (300 * 1024) + '"}', "spec.template"),
    spec("template alias bomb", _BOMB, "alias"),
    spec("template recursive alias", "  template: &t {a: *t}", "recursive"),
    spec("template 2000 aliases", "  template:\n    x: &x 1\n    y: [" + ", ".join(["*x"] * 2000) + "]", "alias"),
    run("duplicate key owner", "  owner: org:ai:rai:sys", "  owner: org:ai:rai:sys\n  owner: org:ai:mm", "spec.owner"),
    run("duplicate key kind", "kind: Run", "kind: Run\nkind: Run", "kind: duplicate key"),
    run("duplicate key totalGPUs", *_TOTAL, "totalGPUs: 8\n    totalGPUs: 9", "spec.resources.totalGPUs"),
    raw("one bad document of two", RUN + "---\n" + _edit(RUN, "totalGPUs: 8", "totalGPUs: -3"), "totalGPUs"),
    raw("a List with a bad item", "kind: List\nitems:\n  - {kind: Run, apiVersion: x}\n", "apiVersion"),
    raw("a list of scalars", "[1, 2]\n", "(document)"),
    raw("a scalar document", "hello\n", "(document)"),
    raw("malformed YAML", "spec: [unclosed\n", "malformed YAML"),
    raw("tab indentation", "spec:\n\towner: x\n", "malformed YAML"),
    raw("JSON duplicate key", '{"apiVersion": "rq.davidlangworthy.io/v1", "kind": "Run", "kind": "Run"}', "kind"),
    raw("JSON 3000 levels", '{"a": ' * 3000 + "1" + "}" * 3000, "nested deeper"),
    raw("an empty file", "", "no manifest"),
    raw("only comments", "# nothing here\n", "no manifest"),
    raw("a raw NUL byte", _edit(RUN, "owner: org", "owner: \x00org"), "control character U+0000"),
    raw("a raw BEL byte", _edit(RUN, "owner: org", "owner: \x07org"), "control character U+0007"),
    raw("a raw DEL byte", _edit(RUN, "owner: org", "owner: \x7forg"), "control character U+007F"),
    raw("non-UTF-8 (latin-1)", _edit(RUN, "org:ai:rai:sys", "org:\xe9t\xe9").encode("latin-1"), "UTF-8"),
    raw("non-UTF-8 (lone byte 0xff)", b"\xff" + RUN.encode(), "UTF-8"),
    raw("UTF-16 with a byte-order mark", RUN.encode("utf-16"), "UTF-8"),
    raw("20 MB of run documents", ("---\n" + RUN) * (20_000_000 // len(RUN)), "10 MiB"),
    raw("11 MiB comment", "#" + "x" * (11 * 1024 * 1024) + "\n" + RUN, "10 MiB"),
    raw("20 MB template", RUN + '  template: {a: "' + "x" * 20_000_000 + '"}\n', "10 MiB"),
    raw("10 MiB and one byte", RUN + "#" * (_TEN_MIB + 1 - len(RUN)), "10 MiB"),
]

BUDGETS = [
    budget("empty owner", "owner: org:ai:rai:sys", 'owner: ""', "spec.owner"),
    budget("blank owner", "owner: org:ai:rai:sys", 'owner: "  "', "spec.owner"),
    budget("owner NUL", "owner: org:ai:rai:sys", 'owner: "org\\0"', "spec.owner"),
    budget("owner tab", "owner: org:ai:rai:sys", 'owner: "org\\tai"', "spec.owner"),
    budget(
        "duplicate envelopes",
        "      maxGPUHours: 50000",
        "      maxGPUHours: 50000\n    - {name: west-h100, gpuType: H100-80GB, concurrency: 1}",
        "appears twice",
    ),
    budget("concurrency negative", "concurrency: 64", "concurrency: -1", "concurrency"),
    budget("concurrency 2^31", "concurrency: 64", "concurrency: 2147483648", "concurrency"),
    budget("concurrency 2^40", "concurrency: 64", "concurrency: 1099511627776", "concurrency"),
    budget("concurrency 1000001", "concurrency: 64", "concurrency: 1000001", "concurrency"),
    budget("concurrency true", "concurrency: 64", "concurrency: true", "concurrency"),
    budget("concurrency a fraction", "concurrency: 64", "concurrency: 1.5", "concurrency"),
    budget("concurrency a string", "concurrency: 64", 'concurrency: "64"', "concurrency"),
    budget("maxGPUHours 0", "maxGPUHours: 50000", "maxGPUHours: 0", "maxGPUHours"),
    budget("maxGPUHours negative", "maxGPUHours: 50000", "maxGPUHours: -5", "maxGPUHours"),
    budget("maxGPUHours .inf", "maxGPUHours: 50000", "maxGPUHours: .inf", "maxGPUHours"),
    budget("maxGPUHours .nan", "maxGPUHours: 50000", "maxGPUHours: .nan", "maxGPUHours"),
    budget("maxGPUHours 1e10", "maxGPUHours: 50000", "maxGPUHours: 1.0e+10", "maxGPUHours"),
    budget("maxGPUHours true", "maxGPUHours: 50000", "maxGPUHours: true", "maxGPUHours"),
    budget("maxGPUHours a word", "maxGPUHours: 50000", "maxGPUHours: lots", "maxGPUHours"),
    envelope("window backwards", "      window: {start: 2026-02-01T00:00:00Z, end: 2026-01-01T00:00:00Z}", "window"),
    envelope("window without a zone", "      window: {start: 2026-02-01T00:00:00}", "window"),
    envelope("window not a time", "      window: {start: soon}", "window.start"),
    envelope("unknown sharing", "      sharing: friends", "sharing"),
    envelope(
        "lending maxConcurrency 0", "      lending: {allow: true, to: ['*'], maxConcurrency: 0}", "maxConcurrency"
    ),
    envelope("lending maxGPUHours 0", "      lending: {allow: true, to: ['*'], maxGPUHours: 0}", "lending.maxGPUHours"),
    envelope("lending maxGPUHours .inf", "      lending: {allow: true, maxGPUHours: .inf}", "lending.maxGPUHours"),
    envelope("lending maxConcurrency 2^40", "      lending: {maxConcurrency: 1099511627776}", "maxConcurrency"),
    envelope("lending to a blank", "      lending: {allow: true, to: ['']}", "lending.to[0]"),
    envelope("selector value a list", "      selector: {region: [a]}", "selector"),
    envelope("unknown envelope field", "      colour: blue", "colour: unknown field"),
    budget("a cycle in the family tree", "parents: [org:ai:rai]", "parents: [org:ai:rai:sys]", "spec.parents"),
    budget("submitter NUL", "submitters: [alice, group:rai]", 'submitters: ["al\\0ice"]', "spec.submitters[0]"),
    budget("parent blank", "parents: [org:ai:rai]", 'parents: [" "]', "spec.parents[0]"),
    budget("envelope name blank", "- name: west-h100", '- name: ""', "spec.envelopes[0].name"),
    budget("envelope gpuType blank", "      gpuType: H100-80GB", '      gpuType: " "', "gpuType"),
    budget("metadata name 300", "metadata: {name: rai-sys}", "metadata: {name: " + "b" * 300 + "}", "metadata.name"),
    budget("envelopes not a list", "  envelopes:\n", "  envelopes: 5\n  x:\n", "spec.envelopes"),
    Case("budget: by a non-admin", ("budgets", "apply", "-f", "{file}"), "admin", BUDGET, user="alice"),
    Case("budget: a Run through budgets apply", ("budgets", "apply", "-f", "{file}"), "kind", RUN),
]

CLUSTERS = [
    node("gpus 10^12", "{name: z-0, gpuType: H100-80GB, gpus: 1000000000000}", "spec.nodes[0].gpus"),
    node("gpus 0", "{name: z-0, gpuType: H100-80GB, gpus: 0}", "spec.nodes[0].gpus"),
    node("gpus negative", "{name: z-0, gpuType: H100-80GB, gpus: -8}", "spec.nodes[0].gpus"),
    node("gpus true", "{name: z-0, gpuType: H100-80GB, gpus: true}", "spec.nodes[0].gpus"),
    node("gpus a string", '{name: z-0, gpuType: H100-80GB, gpus: "8"}', "spec.nodes[0].gpus"),
    node("name with a space", '{name: "z 0", gpuType: H100-80GB, gpus: 8}', "spec.nodes[0].name"),
    node("name emoji", '{name: "z-\U0001f600", gpuType: H100-80GB, gpus: 8}', "spec.nodes[0].name"),
    node("name 300 characters", "{name: " + "z" * 300 + ", gpuType: H100-80GB, gpus: 8}", "spec.nodes[0].name"),
    node("name uppercase", "{name: Z-0, gpuType: H100-80GB, gpus: 8}", "spec.nodes[0].name"),
    node("name NUL", '{name: "z\\0", gpuType: H100-80GB, gpus: 8}', "spec.nodes[0].name"),
    node("name empty", '{name: "", gpuType: H100-80GB, gpus: 8}', "spec.nodes[0].name"),
    node(
        "duplicate names", "{name: z-0, gpuType: H, gpus: 8}\n    - {name: z-0, gpuType: H, gpus: 8}", "appears twice"
    ),
    node("gpuType blank", '{name: z-0, gpuType: "", gpus: 8}', "spec.nodes[0].gpuType"),
    node("label not a string", "{name: z-0, gpuType: H, gpus: 8, labels: {fabricDomain: [1]}}", "fabricDomain"),
    node("unknown node field", "{name: z-0, gpuType: H, gpus: 8, colour: red}", "colour: unknown field"),
    Case(
        "cluster: nodes missing",
        ("nodes", "apply", "-f", "{file}"),
        "spec.nodes",
        "apiVersion: rq.davidlangworthy.io/v1\nkind: Cluster\nmetadata: {name: c}\nspec: {}\n",
    ),
    Case("cluster: by a non-admin", ("nodes", "apply", "-f", "{file}"), "admin", CLUSTER, user="alice"),
]

POLICIES = [
    policy("spareChargeRate above 1", "spareChargeRate: 0.5", "spareChargeRate: 2", "spec.spareChargeRate"),
    policy("spareChargeRate .nan", "spareChargeRate: 0.5", "spareChargeRate: .nan", "spec.spareChargeRate"),
    policy(
        "reservationNotice not a duration", "reservationNotice: 15m", "reservationNotice: soon", "reservationNotice"
    ),
    policy(
        "reservationNotice over 10 years", "reservationNotice: 15m", "reservationNotice: 90000h", "reservationNotice"
    ),
    policy("accountingPeriod 0s", "accountingPeriod: 24h", "accountingPeriod: 0s", "spec.accountingPeriod"),
    policy("accountingPeriod 11 years", "accountingPeriod: 24h", "accountingPeriod: P4020D", "spec.accountingPeriod"),
    policy("admin blank", "admins: [root-admin]", 'admins: [""]', "spec.admins[0]"),
    policy("unknown binder", "admins: [root-admin]", "admins: [root-admin]\n  binder: slurm", "spec.binder"),
    policy("unknown policy field", "admins: [root-admin]", "admins: [root-admin]\n  colour: red", "spec.colour"),
]

ARGS = [
    argv("-o toml", ("get", "runs", "-o", "toml"), "-o"),
    argv("-o empty", ("get", "runs", "-o", ""), "-o"),
    argv("--output=xml", ("nodes", "list", "--output=xml"), "-o"),
    argv("--now not a time", ("get", "runs", "--now", "yesterday"), "--now"),
    argv("--now month 13", ("get", "runs", "--now", "2026-13-45T00:00:00Z"), "--now"),
    argv("--now +abc", ("get", "runs", "--now", "+abc"), "--now"),
    argv("--now +99999999999h", ("get", "runs", "--now", "+99999999999h"), "--now"),
    argv("--now before the newest event", ("get", "runs", "--now", "2000-01-01T00:00:00Z"), "--now"),
    argv("--now year 99999", ("get", "runs", "--now", "99999-01-01T00:00:00Z"), "--now"),
    argv("--now NUL", ("get", "runs", "--now", "2026\x00"), "--now"),
    argv("--as by a non-admin", ("get", "runs", "--as", "alice"), "--as", user="mallory"),
    argv("--db-timeout a word", ("get", "runs", "--db-timeout", "soon"), "--db-timeout"),
    argv("--db-timeout 0", ("get", "runs", "--db-timeout", "0"), "--db-timeout"),
    argv("--db-timeout negative", ("get", "runs", "--db-timeout=-5"), "--db-timeout"),
    argv("--db-timeout three parts", ("get", "runs", "--db-timeout", "1:2:3"), "--db-timeout"),
    argv("--db-timeout inf", ("get", "runs", "--db-timeout", "inf"), "--db-timeout"),
    argv("$JOBTREE_DB_TIMEOUT a word", ("get", "runs"), "$JOBTREE_DB_TIMEOUT", env={"JOBTREE_DB_TIMEOUT": "soon"}),
    argv("shrink --by 0", ("shrink", EXISTING, "--by", "0"), "--by"),
    argv("shrink --by negative", ("shrink", EXISTING, "--by", "-4"), "--by"),
    argv("shrink --by 2^40", ("shrink", ELASTIC, "--by", "1099511627776"), "--by"),
    argv("shrink --by off step", ("shrink", ELASTIC, "--by", "3"), "--by"),
    argv("shrink below the minimum", ("shrink", ELASTIC, "--by", "16"), "--by"),
    argv("shrink a fixed-width run", ("shrink", EXISTING, "--by", "8"), "not malleable"),
    argv("shrink --by a word", ("shrink", EXISTING, "--by", "some"), "--by", usage=True),
    argv("shrink --by missing", ("shrink", EXISTING), "--by", usage=True),
    argv("shrink an unknown run", ("shrink", UNKNOWN, "--by", "8"), "no-such-run", code=1),
    argv("cancel an unknown run", ("cancel", UNKNOWN), "no-such-run", code=1),
    argv("complete an unknown run", ("complete", UNKNOWN), "no-such-run", code=1),
    argv("explain an unknown run", ("explain", UNKNOWN), "no-such-run", code=1),
    argv("plan an unknown run", ("plan", UNKNOWN), "no-such-run", code=1),
    argv("leases of an unknown run", ("leases", UNKNOWN), "no-such-run", code=1),
    argv("history of an unknown run", ("audit", "history", UNKNOWN), "no-such-run", code=1),
    argv("watch an unknown run", ("watch", UNKNOWN, "--timeout", "1"), "no-such-run", code=1),
    argv("cancel a run ref with an empty name", ("cancel", "rai-sys/"), "not found", code=1),
    argv("cordon an unknown node", ("nodes", "cordon", "no-such-node"), "no-such-node", code=1),
    argv("fail an unknown node", ("nodes", "fail", "no-such-node"), "no-such-node", code=1),
    argv("recover an unknown node", ("nodes", "recover", "no-such-node"), "no-such-node", code=1),
    argv("uncordon an unknown node", ("nodes", "uncordon", "no-such-node"), "no-such-node", code=1),
    argv("cordon by a non-admin", ("nodes", "cordon", "a-0"), "admin", user="alice"),
    argv("gpu-hours --by colour", ("audit", "gpu-hours", "--by", "colour"), "--by"),
    argv("gpu-hours --from not a time", ("audit", "gpu-hours", "--from", "soon"), "--from"),
    argv(
        "gpu-hours --to before --from",
        ("audit", "gpu-hours", "--from", "2026-02-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z"),
        "--to",
    ),
    argv("budgets usage --period a word", ("budgets", "usage", "--period", "soon"), "--period"),
    argv("get widgets", ("get", "widgets"), "widgets"),
    argv("get runs -l not key=value", ("get", "runs", "-l", "owner"), "-l"),
    argv("submit a missing file", ("submit", "-f", "/nonexistent/run.yaml"), "-f"),
    argv("submit a directory", ("submit", "-f", "/"), "-f"),
    argv("submit without -f", ("submit",), "-f", usage=True),
    argv("budgets apply a missing file", ("budgets", "apply", "-f", "/nonexistent/b.yaml"), "-f"),
    argv("nodes apply a missing file", ("nodes", "apply", "-f", "/nonexistent/c.yaml"), "-f"),
    argv("an unknown command", ("teleport",), "teleport", usage=True),
    argv("an unknown option", ("get", "runs", "--colour"), "--colour", usage=True),
    argv("-o without a value", ("get", "runs", "-o"), "-o"),
    argv("a NUL in --owner", ("leases", "--owner", "org\x00"), "--owner"),
    argv("a BEL in a run name", ("cancel", "rai-sys/x\x07"), "argument 2"),
    argv("an ESC in -n", ("get", "runs", "-n", "\x1b[2J"), "-n"),
]

_SIM = ("sim", "check", "{file}")
SCENARIOS = [
    Case("sim: non-UTF-8 scenario", _SIM, "UTF-8", b"kind: Scenario\nmetadata: {name: \xff}\n"),
    Case("sim: duplicate key", _SIM, "kind: duplicate key", "kind: Scenario\nkind: Scenario\n"),
    Case("sim: alias bomb", _SIM, "alias", "kind: Scenario\nspec:\n" + _BOMB + "\n"),
    Case("sim: a raw NUL", _SIM, "control character", "kind: Scenario\nmetadata: {name: \x00}\n"),
    Case("sim: a missing file", ("sim", "check", "/nonexistent/scenario.yaml"), "SCENARIO"),
]

ALL: list[Case] = [*RUNS, *BUDGETS, *CLUSTERS, *POLICIES, *ARGS, *SCENARIOS]
