#!/usr/bin/env bash
# End to end on a real kind cluster: the seed flow, with ztcanary instead of hand
# edits. Needs Docker, kind, kubectl, helm, Go and internet access (node, MetalLB and
# Istio images; Istio release archives).
#
#   kind/e2e.sh                               # Istio 1.27.2 → 1.27.3 on cluster "ambient"
#   ISTIO_FROM=1.27.3 ISTIO_TO=1.28.0 kind/e2e.sh
#
# 1. creates the cluster (kind/create-cluster.sh: 1 control plane, 2 workers,
#    MetalLB, Gateway API CRDs), or reuses it if it exists;
# 2. labels both workers with the stable revision (istio.io/rev=FROM);
# 3. installs Istio's charts from the release archives: base and istio-cni once
#    (a cluster singleton), then istiod and ztunnel per revision, each ztunnel
#    DaemonSet pinned by nodeSelector to its revision's nodes, and each istiod
#    trusting both ztunnel ServiceAccounts (CA_TRUSTED_NODE_ACCOUNTS);
# 4. the Bookinfo Gateway and HTTPRoute (namespace bookinfo, to the stable
#    productpage) and Bookinfo per revision in bookinfo-REV (ambient), with the
#    ReferenceGrants the cross-namespace backends need;
# 5. builds the ztcanary images, loads them into kind and installs ztcanary from
#    deploy/ (kustomize, with the images' tag set in an overlay);
# 6. one `ztcanary start` (after `ztcanary plan`) moving the nodes and the traffic,
#    followed with `ztcanary status --watch` to the end, then a traffic test through
#    the gateway and `ztcanary inventory`.
#
# The cluster stays for inspection: kind delete cluster --name ambient
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cluster=${CLUSTER_NAME:-ambient}
istio_from=${ISTIO_FROM:-1.27.2}
istio_to=${ISTIO_TO:-1.27.3}
from=${istio_from//./-}
to=${istio_to//./-}
tag=${IMAGE_TAG:-e2e}
work=$root/.e2e
ns=istio-system
export KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config}

log() { echo "e2e: $*"; }
die() { echo "e2e: $*" >&2; exit 1; }

for tool in docker kind kubectl helm go curl tar; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
[ "$from" != "$to" ] || die "ISTIO_FROM and ISTIO_TO are the same ($istio_from)"
mkdir -p "$work"

# 1. The cluster.
if kind get clusters | grep -qx "$cluster"; then
  log "reusing kind cluster $cluster"
else
  CLUSTER_NAME=$cluster "$here/create-cluster.sh"
fi
kubectl config use-context "kind-$cluster" >/dev/null
workers=("$cluster-worker" "$cluster-worker2")

# Istio's release archives hold the Helm charts and the Bookinfo sample.
istio_dir() { echo "$work/istio-$1"; }
for v in "$istio_from" "$istio_to"; do
  if [ ! -d "$(istio_dir "$v")" ]; then
    log "downloading Istio $v"
    curl -fsSL "https://github.com/istio/istio/releases/download/$v/istio-$v-linux-amd64.tar.gz" | tar -xz -C "$work"
  fi
done
charts_from=$(istio_dir "$istio_from")/manifests/charts
charts_to=$(istio_dir "$istio_to")/manifests/charts

# 2. Every worker starts on the stable revision.
log "labelling ${workers[*]} istio.io/rev=$from"
kubectl label node "${workers[@]}" "istio.io/rev=$from" --overwrite

# 3. Istio: base and istio-cni once, istiod and ztunnel per revision.
trusted="$ns/ztunnel\\,$ns/ztunnel-$to"
helm upgrade --install istio-base "$charts_from/base" -n "$ns" --create-namespace --wait
helm upgrade --install istio-cni "$charts_from/istio-cni" -n "$ns" --set profile=ambient --wait
install_revision() { # version revision charts resourceName
  local version=$1 rev=$2 charts=$3 resource=$4
  log "installing istiod-$rev and ztunnel $resource (Istio $version)"
  helm upgrade --install "istiod-$rev" "$charts/istio-control/istio-discovery" -n "$ns" \
    --set profile=ambient --set revision="$rev" \
    --set-string "pilot.env.CA_TRUSTED_NODE_ACCOUNTS=$trusted" --wait
  helm upgrade --install "ztunnel-$rev" "$charts/ztunnel" -n "$ns" \
    --set revision="$rev" --set resourceName="$resource" \
    --set-string "nodeSelector.istio\\.io/rev=$rev"
}
install_revision "$istio_from" "$from" "$charts_from" ztunnel
install_revision "$istio_to" "$to" "$charts_to" "ztunnel-$to"
kubectl -n "$ns" rollout status daemonset/ztunnel --timeout=180s

# 4. Bookinfo per revision, the Gateway and the route to the stable one.
bookinfo=$(istio_dir "$istio_from")/samples/bookinfo/platform/kube/bookinfo.yaml
for rev in "$from" "$to"; do
  kubectl create namespace "bookinfo-$rev" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace "bookinfo-$rev" istio.io/dataplane-mode=ambient --overwrite
  kubectl -n "bookinfo-$rev" apply -f "$bookinfo"
done
kubectl create namespace bookinfo --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f - <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
  namespace: bookinfo
  labels:
    istio.io/rev: $from
spec:
  gatewayClassName: istio
  listeners:
    - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: bookinfo
  namespace: bookinfo
spec:
  parentRefs:
    - name: bookinfo-gateway
  rules:
    - matches:
        - path: {type: Exact, value: /productpage}
        - path: {type: PathPrefix, value: /static}
        - path: {type: Exact, value: /login}
        - path: {type: Exact, value: /logout}
        - path: {type: PathPrefix, value: /api/v1/products}
      backendRefs:
        - {namespace: bookinfo-$from, name: productpage, port: 9080}
YAML
for rev in "$from" "$to"; do
  kubectl apply -f - <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata:
  name: bookinfo-routes
  namespace: bookinfo-$rev
spec:
  from:
    - {group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: bookinfo}
  to:
    - {group: "", kind: Service}
YAML
done
for rev in "$from" "$to"; do
  kubectl -n "bookinfo-$rev" rollout status deployment/productpage-v1 --timeout=300s
done
kubectl -n bookinfo wait gateway/bookinfo-gateway --for=condition=Programmed --timeout=180s
gateway=$(kubectl -n bookinfo get gateway bookinfo-gateway -o jsonpath='{.status.addresses[0].value}')
log "gateway at http://$gateway/productpage"

# 5. ztcanary: images into kind, then deploy/ with their tag.
log "building ztcanary (CLI in bin/, images ztcanary/orchestrator:$tag and ztcanary/agent:$tag)"
make -C "$root" build >/dev/null
for image in orchestrator agent; do
  docker build -q -f "$root/deploy/Dockerfile" --build-arg "BINARY=ztcanary-$image" -t "ztcanary/$image:$tag" "$root" >/dev/null
  kind load docker-image --name "$cluster" "ztcanary/$image:$tag"
done
overlay=$work/overlay
mkdir -p "$overlay"
rel=$(realpath --relative-to="$overlay" "$root/deploy")
cat >"$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel
images:
  - {name: ztcanary/orchestrator, newTag: $tag}
  - {name: ztcanary/agent, newTag: $tag}
YAML
kubectl apply --server-side -k "$overlay"
kubectl -n ztcanary-system rollout status deployment/ztcanary-orchestrator --timeout=180s
kubectl -n ztcanary-system rollout status daemonset/ztcanary-agent --timeout=180s || log "the node agent is not ready (eBPF in kind nodes?): the upgrade runs without its proof"

# 6. The upgrade, by ztcanary.
ztcanary=$root/bin/ztcanary
upgrade=(--name "e2e-$to" --from "$from" --to "$to" --strategy "${STRATEGY:-Drain}"
  --workload "bookinfo-$from=$from" --workload "bookinfo-$to=$to"
  --httproute bookinfo/bookinfo --stable "bookinfo-$from/productpage:9080" --canary "bookinfo-$to/productpage:9080"
  --step "nodes=1,header=traffic:test,pause=30s" --step "nodes=1,weight=10,pause=30s"
  --step "nodes=1,weight=50,pause=30s" --step "nodes=100%,weight=100")
"$ztcanary" inventory
"$ztcanary" plan "${upgrade[@]}"
"$ztcanary" start "${upgrade[@]}"
"$ztcanary" status "e2e-$to" --watch --timeout 30m
"$ztcanary" traffic-test --url "http://$gateway/productpage" -n 200 -c 10 --min-success-rate 0.99
"$ztcanary" inventory
log "done: every worker runs the $to ztunnel and Bookinfo serves from bookinfo-$to"
