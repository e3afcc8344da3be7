package mesh

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// GatewayPod recognises Istio gateway proxies: injected with the gateway template
// (inject.istio.io/templates), labelled istio=ingressgateway/egressgateway as the
// gateway chart does, or deployed by Istio for a Gateway API Gateway
// (gateway.istio.io/managed).
func GatewayPod(p *corev1.Pod) bool {
	if strings.Contains(p.Annotations[AnnotationInjectTemplates], "gateway") {
		return true
	}
	if v := p.Labels["istio"]; strings.HasSuffix(v, "gateway") {
		return true
	}
	_, managed := p.Labels["gateway.istio.io/managed"]
	return managed
}
