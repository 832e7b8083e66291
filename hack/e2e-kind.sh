#!/usr/bin/env bash
# End-to-end on a real (kind) cluster, for users with Docker, kind, kubectl and helm.
# Not run in CI here (no container runtime on the CI machines): the tests drive the same
# code against an HTTP-level API double instead (tests/k8s/).
#
#   hack/e2e-kind.sh            # create the cluster, install, check, delete the cluster
#   KEEP=1 hack/e2e-kind.sh     # keep the cluster afterwards (kind delete cluster --name jobtree-e2e)
#
# Flow: kind cluster with two workers advertising 8 fake nvidia.com/gpu each (a status
# patch, as in "Advertise Extended Resources for a Node") → Postgres → helm install →
# kubectl apply a Budget and examples/resnet-small.yaml → the Run turns Running and its
# pod is bound by Jobtree (schedulerName: jobtree) to a labelled GPU node.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${CLUSTER:-jobtree-e2e}"
NS=jobtree-system
IMAGE=jobtree:e2e

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: needs $tool on PATH" >&2; exit 2; }
done

cleanup() { if [ "${KEEP:-0}" != "1" ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

cat <<KIND | kind create cluster --name "$CLUSTER" --wait 120s --config -
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
KIND

docker build -t "$IMAGE" -f deploy/docker/Dockerfile .
kind load docker-image "$IMAGE" --name "$CLUSTER"

# Fake GPU nodes: labels for location and type, and nvidia.com/gpu capacity.
i=0
for node in $(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name); do
  name="${node#node/}"
  kubectl label --overwrite "$node" \
    topology.kubernetes.io/region=us-west jobtree.io/cluster=c1 \
    jobtree.io/fabric-domain=A jobtree.io/gpu-type=H100-80GB
  kubectl patch node "$name" --subresource=status --type=merge \
    -p '{"status":{"capacity":{"nvidia.com/gpu":"8"}}}'
  i=$((i + 1))
done
echo "e2e-kind: $i fake GPU node(s)"

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$NS" -f - <<'PG'
apiVersion: apps/v1
kind: Deployment
metadata: {name: postgres}
spec:
  selector: {matchLabels: {app: postgres}}
  template:
    metadata: {labels: {app: postgres}}
    spec:
      containers:
        - name: postgres
          image: postgres:16
          env:
            - {name: POSTGRES_USER, value: jobtree}
            - {name: POSTGRES_PASSWORD, value: jobtree}
            - {name: POSTGRES_DB, value: jobtree}
          ports: [{containerPort: 5432}]
          readinessProbe: {exec: {command: [pg_isready, -U, jobtree]}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: postgres}
spec:
  selector: {app: postgres}
  ports: [{port: 5432}]
PG
kubectl rollout status -n "$NS" deployment/postgres --timeout=180s

helm upgrade --install jobtree deploy/helm/jobtree -n "$NS" \
  --set image.repository=jobtree --set image.tag=e2e --set image.pullPolicy=Never \
  --set database.url="postgresql://jobtree:jobtree@postgres.$NS:5432/jobtree"
for component in planner intake binder; do
  kubectl rollout status -n "$NS" "deployment/jobtree-$component" --timeout=180s
done

kubectl create namespace rai-sys --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n rai-sys -f examples/budget-rai-sys.yaml
kubectl wait -n rai-sys budget/rai-sys --for=jsonpath='{.status.phase}'=Applied --timeout=120s
kubectl apply -f examples/resnet-small.yaml
kubectl wait -n rai-sys run/resnet-small --for=jsonpath='{.status.phase}'=Running --timeout=180s

pod_node="$(kubectl get pods -n rai-sys -l rq.davidlangworthy.io/run=resnet-small -o jsonpath='{.items[0].spec.nodeName}')"
scheduler="$(kubectl get pods -n rai-sys -l rq.davidlangworthy.io/run=resnet-small -o jsonpath='{.items[0].spec.schedulerName}')"
[ -n "$pod_node" ] && [ "$scheduler" = jobtree ] || { echo "e2e-kind: pod not bound by jobtree" >&2; exit 1; }
kubectl get runs -n rai-sys
echo "e2e-kind: ok: resnet-small is Running, its pod is bound to $pod_node by jobtree"

kubectl delete -f examples/resnet-small.yaml
kubectl wait -n rai-sys pods -l rq.davidlangworthy.io/run=resnet-small --for=delete --timeout=120s
echo "e2e-kind: ok: deleting the Run cancelled it and removed its pod"
