package mesh

import (
	"slices"
	"testing"
	"time"

	"istio.io/api/annotation"
	"istio.io/api/label"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNamesAreIstios checks the names against Istio's own API definitions.
func TestNamesAreIstios(t *testing.T) {
	for _, c := range []struct{ ours, istios string }{
		{RevisionKey, label.IoIstioRev.Name},
		{RevisionKey, annotation.IoIstioRev.Name},
		{LabelTag, label.IoIstioTag.Name},
		{LabelDataplaneMode, label.IoIstioDataplaneMode.Name},
		{SidecarInjectKey, label.SidecarInject.Name},
		{SidecarInjectKey, annotation.SidecarInject.Name},
		{AnnotationSidecarStatus, annotation.SidecarStatus.Name},
		{AnnotationInjectTemplates, annotation.InjectTemplates.Name},
	} {
		if c.ours != c.istios {
			t.Errorf("%q, Istio says %q", c.ours, c.istios)
		}
	}
}

type podOpt func(*corev1.Pod)

func newPod(ns string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func labelled(k, v string) podOpt {
	return func(p *corev1.Pod) {
		if p.Labels == nil {
			p.Labels = map[string]string{}
		}
		p.Labels[k] = v
	}
}

func annotated(k, v string) podOpt {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[k] = v
	}
}

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }

func terminating(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{Time: time.Now()} }

func hostNetwork(p *corev1.Pod) { p.Spec.HostNetwork = true }

func ready(s corev1.ConditionStatus) podOpt {
	return func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: s})
	}
}

const injected = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"revision":"1-18-0"}`

func TestAmbient(t *testing.T) {
	enrolled := map[string]string{LabelDataplaneMode: DataplaneModeAmbient, "team": "a"}
	plain := map[string]string{"team": "b"}
	for _, c := range []struct {
		name     string
		ns       map[string]string
		pod      *corev1.Pod
		enrolled bool
		ambient  bool
	}{
		{"a pod of a namespace labelled ambient is ambient", enrolled, newPod("mesh"), true, true},
		{"a pod of a namespace not labelled is not", plain, newPod("plain"), false, false},
		{"a pod of a namespace the caller has no labels for is not", nil, newPod("plain"), false, false},
		{"a pod labelled ambient in a namespace that is not enrolled is ambient", plain, newPod("plain", labelled(LabelDataplaneMode, DataplaneModeAmbient)), true, true},
		{"a pod labelled ambient in a namespace the caller has no labels for is ambient", nil, newPod("plain", labelled(LabelDataplaneMode, DataplaneModeAmbient)), true, true},
		{"a pod opted out with dataplane-mode=none is not", enrolled, newPod("mesh", labelled(LabelDataplaneMode, DataplaneModeNone)), false, false},
		{"a pod with another dataplane-mode value in an enrolled namespace is ambient", enrolled, newPod("mesh", labelled(LabelDataplaneMode, "sidecar")), true, true},
		{"a pod with another dataplane-mode value in a namespace not enrolled is not", plain, newPod("plain", labelled(LabelDataplaneMode, "sidecar")), false, false},
		{"a pod whose namespace carries dataplane-mode=none but labelled ambient is ambient", map[string]string{LabelDataplaneMode: DataplaneModeNone}, newPod("x", labelled(LabelDataplaneMode, DataplaneModeAmbient)), true, true},
		{"a hostNetwork pod is not", enrolled, newPod("mesh", hostNetwork), false, false},
		{"a hostNetwork pod labelled ambient is not", plain, newPod("plain", hostNetwork, labelled(LabelDataplaneMode, DataplaneModeAmbient)), false, false},
		{"a pod with a sidecar is not", enrolled, newPod("mesh", annotated(AnnotationSidecarStatus, injected)), false, false},
		{"a pod with an unreadable sidecar status is not", enrolled, newPod("mesh", annotated(AnnotationSidecarStatus, "")), false, false},
		{"a pod labelled ambient with a sidecar is not", plain, newPod("plain", labelled(LabelDataplaneMode, DataplaneModeAmbient), annotated(AnnotationSidecarStatus, injected)), false, false},
		{"a pod of kube-system labelled ambient is not", plain, newPod(CNIExcludedNamespace, labelled(LabelDataplaneMode, DataplaneModeAmbient)), false, false},
		{"a pod of kube-system labelled ambient as a namespace is not", enrolled, newPod(CNIExcludedNamespace), false, false},
		{"a ztunnel pod of Istio's chart is not", enrolled, newPod("istio-system", labelled(LabelApp, AppZtunnel), labelled(LabelDataplaneMode, DataplaneModeNone)), false, false},
		{"a terminating pod is enrolled but not ambient", enrolled, newPod("mesh", terminating), true, false},
		{"a succeeded pod is enrolled but not ambient", enrolled, newPod("mesh", phase(corev1.PodSucceeded)), true, false},
		{"a failed pod is enrolled but not ambient", enrolled, newPod("mesh", phase(corev1.PodFailed)), true, false},
		{"a pending pod without an IP is ambient", enrolled, newPod("mesh", phase(corev1.PodPending), func(p *corev1.Pod) { p.Status.PodIP = "" }), true, true},
		{"a DaemonSet's pod is ambient", enrolled, newPod("mesh", func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "DaemonSet", Name: "ds", Controller: new(true)}}
		}), true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Enrolled(c.ns, c.pod); got != c.enrolled {
				t.Errorf("Enrolled = %v, want %v", got, c.enrolled)
			}
			if got := Ambient(c.ns, c.pod); got != c.ambient {
				t.Errorf("Ambient = %v, want %v", got, c.ambient)
			}
		})
	}
}

func TestRevision(t *testing.T) {
	for _, c := range []struct {
		name        string
		labels, ann map[string]string
		want        string
	}{
		{"the annotation (Istio's ztunnel chart) gives the revision", nil, map[string]string{RevisionKey: "1-18-0"}, "1-18-0"},
		{"a label gives the revision", map[string]string{RevisionKey: "1-18-1"}, nil, "1-18-1"},
		{"the annotation wins over the label", map[string]string{RevisionKey: "1-18-1"}, map[string]string{RevisionKey: "1-18-0"}, "1-18-0"},
		{"an empty annotation gives way to the label", map[string]string{RevisionKey: "1-18-1"}, map[string]string{RevisionKey: ""}, "1-18-1"},
		{"an object without either has no revision", map[string]string{"app": "x"}, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Revision(&metav1.ObjectMeta{Labels: c.labels, Annotations: c.ann}); got != c.want {
				t.Errorf("Revision = %q, want %q", got, c.want)
			}
		})
	}
}

func TestDaemonSetRevisionAndZtunnel(t *testing.T) {
	ds := func(ann, tmplAnn map[string]string, app string) *appsv1.DaemonSet {
		d := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Annotations: ann}}
		d.Spec.Template.Annotations = tmplAnn
		d.Spec.Template.Labels = map[string]string{LabelApp: app}
		return d
	}
	for _, c := range []struct {
		name    string
		ds      *appsv1.DaemonSet
		rev     string
		ztunnel bool
	}{
		{"a ztunnel DaemonSet annotated with its revision has it", ds(map[string]string{RevisionKey: "1-18-0"}, map[string]string{RevisionKey: "other"}, AppZtunnel), "1-18-0", true},
		{"a ztunnel DaemonSet without one has its pod template's", ds(nil, map[string]string{RevisionKey: "1-18-1"}, AppZtunnel), "1-18-1", true},
		{"a revisionless ztunnel DaemonSet has none", ds(nil, nil, AppZtunnel), "", true},
		{"another DaemonSet is not a ztunnel", ds(nil, nil, "istio-cni-node"), "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := DaemonSetRevision(c.ds); got != c.rev {
				t.Errorf("DaemonSetRevision = %q, want %q", got, c.rev)
			}
			if got := IsZtunnelDaemonSet(c.ds); got != c.ztunnel {
				t.Errorf("IsZtunnelDaemonSet = %v, want %v", got, c.ztunnel)
			}
		})
	}
}

func TestIsZtunnelPod(t *testing.T) {
	for _, c := range []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		{"a pod labelled app=ztunnel in the system namespace is a ztunnel", newPod("istio-system", labelled(LabelApp, AppZtunnel)), true},
		{"a pod labelled app=ztunnel elsewhere is not", newPod("mesh", labelled(LabelApp, AppZtunnel)), false},
		{"another pod of the system namespace is not", newPod("istio-system", labelled(LabelApp, AppIstiod)), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := IsZtunnelPod("istio-system", c.pod); got != c.want {
				t.Errorf("IsZtunnelPod = %v, want %v", got, c.want)
			}
		})
	}
}

func TestProxyRevision(t *testing.T) {
	native := `{"initContainers":["istio-proxy"],"containers":[],"revision":"1-18-0"}`
	for _, c := range []struct {
		name     string
		pod      *corev1.Pod
		rev      string
		describe string
	}{
		{"a pod injected by a revision, annotated with it, has its proxy", newPod("a", annotated(AnnotationSidecarStatus, injected), annotated(RevisionKey, "1-18-0")), "1-18-0", "the 1-18-0 proxy"},
		{"a pod injected by an older template, labelled with the revision, has its proxy", newPod("a", annotated(AnnotationSidecarStatus, injected), labelled(RevisionKey, "1-18-0")), "1-18-0", "the 1-18-0 proxy"},
		{"a native sidecar (an init container) is a proxy", newPod("a", annotated(AnnotationSidecarStatus, native), annotated(RevisionKey, "1-18-0")), "1-18-0", "the 1-18-0 proxy"},
		{"a status and a revision that disagree make no proxy", newPod("a", annotated(AnnotationSidecarStatus, injected), annotated(RevisionKey, "1-19-0")), "", `an injector status ` + injected + ` with istio.io/rev="1-19-0"`},
		{"a status without the proxy container makes no proxy", newPod("a", annotated(AnnotationSidecarStatus, `{"containers":["other"],"revision":"1-18-0"}`), annotated(RevisionKey, "1-18-0")), "", `an injector status {"containers":["other"],"revision":"1-18-0"} with istio.io/rev="1-18-0"`},
		{"an unreadable status makes no proxy", newPod("a", annotated(AnnotationSidecarStatus, "{"), annotated(RevisionKey, "1-18-0")), "", `an injector status { with istio.io/rev="1-18-0"`},
		{"a pod without a status has no proxy", newPod("a", annotated(RevisionKey, "1-18-0")), "", "no injected proxy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := ProxyRevision(c.pod); got != c.rev {
				t.Errorf("ProxyRevision = %q, want %q", got, c.rev)
			}
			if got := DescribeProxy(c.pod); got != c.describe {
				t.Errorf("DescribeProxy = %q, want %q", got, c.describe)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	for _, c := range []struct {
		name                                      string
		pod                                       *corev1.Pod
		ready, serving, finished, term, daemonSet bool
	}{
		{"a running pod with Ready=True is ready and serving", newPod("a", ready(corev1.ConditionTrue)), true, true, false, false, false},
		{"a running pod with Ready=False is neither", newPod("a", ready(corev1.ConditionFalse)), false, false, false, false, false},
		{"a pod without a Ready condition is neither", newPod("a"), false, false, false, false, false},
		{"a terminating Ready pod is ready but not serving", newPod("a", ready(corev1.ConditionTrue), terminating), true, false, false, true, false},
		{"a pending pod with Ready=True is not serving", newPod("a", ready(corev1.ConditionTrue), phase(corev1.PodPending)), true, false, false, false, false},
		{"a succeeded pod is finished", newPod("a", phase(corev1.PodSucceeded)), false, false, true, false, false},
		{"a failed pod is finished", newPod("a", phase(corev1.PodFailed)), false, false, true, false, false},
		{"a pod a DaemonSet controls is a DaemonSet pod", newPod("a", func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "DaemonSet", Name: "ds", Controller: new(true)}}
		}), false, false, false, false, true},
		{"a pod a DaemonSet owns without controlling is not", newPod("a", func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "DaemonSet", Name: "ds"}}
		}), false, false, false, false, false},
		{"a ReplicaSet's pod is not a DaemonSet pod", newPod("a", func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "rs", Controller: new(true)}}
		}), false, false, false, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, f := range []struct {
				name      string
				got, want bool
			}{
				{"Ready", Ready(c.pod), c.ready},
				{"Serving", Serving(c.pod), c.serving},
				{"Finished", Finished(c.pod), c.finished},
				{"Terminating", Terminating(c.pod), c.term},
				{"DaemonSetPod", DaemonSetPod(c.pod), c.daemonSet},
			} {
				if f.got != f.want {
					t.Errorf("%s = %v, want %v", f.name, f.got, f.want)
				}
			}
		})
	}
}

func TestPodIPs(t *testing.T) {
	for _, c := range []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{"status.podIPs wins (dual stack)", newPod("a", func(p *corev1.Pod) {
			p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}
		}), []string{"10.0.0.1", "fd00::1"}},
		{"status.podIP alone is used", newPod("a"), []string{"10.0.0.1"}},
		{"a pod without an IP has none", newPod("a", func(p *corev1.Pod) { p.Status.PodIP = "" }), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := PodIPs(c.pod); !slices.Equal(got, c.want) {
				t.Errorf("PodIPs = %v, want %v", got, c.want)
			}
		})
	}
}
