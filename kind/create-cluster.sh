#!/usr/bin/env bash
# Creates the seed topology on a real kind cluster: needs Docker, kind, kubectl and
# internet access (it pulls node and MetalLB images). It installs MetalLB with an
# address pool taken from the kind Docker network, so LoadBalancer Services (the
# Gateway) get reachable addresses, and the Gateway API CRDs.
#
#   kind/create-cluster.sh            # standard Gateway API channel
#   GATEWAY_API_CHANNEL=experimental kind/create-cluster.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cluster=${CLUSTER_NAME:-ambient}
metallb_version=${METALLB_VERSION:-v0.15.2}
gateway_api_version=${GATEWAY_API_VERSION:-v1.6.3}
channel=${GATEWAY_API_CHANNEL:-standard}

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "create-cluster: $tool is required" >&2; exit 1; }
done
case $channel in standard|experimental) ;; *) echo "create-cluster: GATEWAY_API_CHANNEL must be standard or experimental" >&2; exit 1 ;; esac

if kind get clusters | grep -qx "$cluster"; then
  echo "create-cluster: kind cluster $cluster exists; delete it with: kind delete cluster --name $cluster" >&2
  exit 1
fi
kind create cluster --name "$cluster" --config "$here/ambient-cluster.yaml" --wait 120s

echo "create-cluster: installing MetalLB $metallb_version"
kubectl apply -f "https://raw.githubusercontent.com/metallb/metallb/$metallb_version/config/manifests/metallb-native.yaml"
kubectl -n metallb-system rollout status deployment/controller --timeout=180s
kubectl -n metallb-system wait pod --selector=app=metallb --for=condition=Ready --timeout=180s

# The kind network's IPv4 subnet, e.g. 172.18.0.0/16: hand out the top of it.
subnet=$(docker network inspect kind --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}' | tr ' ' '\n' | grep -m1 -E '^[0-9]+\.')
prefix=$(echo "$subnet" | cut -d. -f1-2)
echo "create-cluster: MetalLB pool $prefix.255.200-$prefix.255.250 from kind network $subnet"
kubectl apply -f - <<YAML
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: kind
  namespace: metallb-system
spec:
  addresses:
    - $prefix.255.200-$prefix.255.250
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: kind
  namespace: metallb-system
spec:
  ipAddressPools: [kind]
YAML

echo "create-cluster: installing Gateway API $gateway_api_version ($channel channel)"
kubectl apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$gateway_api_version/$channel-install.yaml"
kubectl wait crd/httproutes.gateway.networking.k8s.io --for=condition=Established --timeout=60s

echo "create-cluster: ready; kubectl context kind-$cluster"
