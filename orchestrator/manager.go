package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/ambient"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
)

// Options configure the orchestrator process.
type Options struct {
	// MetricsAddr serves Prometheus metrics ("0" disables).
	MetricsAddr string
	// HealthAddr serves /healthz and /readyz ("0" disables).
	HealthAddr string
	// LeaderElection makes replicas elect one active orchestrator.
	LeaderElection bool
	// LeaderElectionNamespace holds the Lease (default: the pod's namespace in a
	// pod; out of cluster, see LeaseNamespace).
	LeaderElectionNamespace string
	// LeaseDuration bounds how long a dead leader blocks the others (default 15s).
	LeaseDuration time.Duration
	// PprofAddr serves net/http/pprof for profiling ("" or "0" disables).
	PprofAddr string
}

// LeaderElectionID names the Lease the orchestrator replicas compete for.
const LeaderElectionID = "ztcanary-orchestrator"

// podNamespaceFile is where a pod finds its namespace; controller-runtime puts the
// Lease there when no namespace is given, and fails where the file is missing.
const podNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// LeaseNamespace returns the namespace of the leader election Lease when none is
// given: "" in a pod (controller-runtime then uses the pod's namespace), else the
// namespace of the kubeconfig's current context, or "default" when it names none,
// the namespace kubectl would use with the same kubeconfig. Out-of-cluster replicas
// run with one kubeconfig so compete for one Lease. kubeconfig is the --kubeconfig
// path; empty means $KUBECONFIG or ~/.kube/config, as controller-runtime loads them.
func LeaseNamespace(kubeconfig string) (string, error) {
	if _, err := os.Stat(podNamespaceFile); err == nil {
		return "", nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("check whether in a pod: %w", err)
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules = &clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}
	}
	ns, _, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).Namespace()
	if err != nil {
		return "", fmt.Errorf("read the namespace of the kubeconfig's context: %w", err)
	}
	return ns, nil
}

// NewScheme returns the types the orchestrator reads and writes.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := ztv1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// NewManager builds the controller manager with the RevisionUpgrade reconciler
// registered. Its cache keeps pods, nodes and workloads without managedFields, the
// bulk of their size, so memory follows the cluster's object count, not its history.
func NewManager(cfg *rest.Config, log *zap.Logger, opts Options) (ctrl.Manager, *Reconciler, error) {
	scheme, err := NewScheme()
	if err != nil {
		return nil, nil, err
	}
	lease := opts.LeaseDuration
	if lease == 0 {
		lease = 15 * time.Second
	}
	renew := lease * 2 / 3
	retry := lease / 5
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: opts.MetricsAddr},
		HealthProbeBindAddress:        opts.HealthAddr,
		PprofBindAddress:              opts.PprofAddr,
		LeaderElection:                opts.LeaderElection,
		LeaderElectionID:              LeaderElectionID,
		LeaderElectionNamespace:       opts.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &lease,
		RenewDeadline:                 &renew,
		RetryPeriod:                   &retry,
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				&corev1.Pod{}:  {Transform: slimPod},
				&corev1.Node{}: {Transform: slimNode},
			},
		},
		Client: client.Options{Cache: &client.CacheOptions{Unstructured: false}},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("create manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, nil, err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return nil, nil, err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	gw, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	istio, err := istioclient.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	recorder := mgr.GetEventRecorderFor("ztcanary-orchestrator")
	r := NewReconciler(&drive.Env{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: recorder, Log: log.Named("orchestrator")},
		ambient.Routers(kube, gw, istio), ambient.TrafficGate{Recorder: recorder})
	if err := r.SetupWithManager(mgr); err != nil {
		return nil, nil, fmt.Errorf("set up reconciler: %w", err)
	}
	// Keep the kinds the reconciler reads in the cache from the start, so the first
	// reconcile does not wait for informers one by one.
	for _, obj := range []client.Object{&corev1.Namespace{}, &ztv1.NodeCapture{}, &appsv1.StatefulSet{}} {
		if _, err := mgr.GetCache().GetInformer(context.Background(), obj); err != nil {
			return nil, nil, err
		}
	}
	return mgr, r, nil
}

// slimPod keeps, of each cached pod, only what the orchestrator reads: identity,
// labels, the annotations it reads (podAnnotations), owners, deletion, node, phase,
// the Ready condition (type and status) and the pod IP. Pods are most of a cluster's
// objects, so this is most of the orchestrator's memory.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	var conds []corev1.PodCondition
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			conds = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
			break
		}
	}
	return &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, Annotations: keepAnnotations(p.Annotations, podAnnotations), OwnerReferences: p.OwnerReferences,
			DeletionTimestamp: p.DeletionTimestamp, Generation: p.Generation,
			// Rollback evicts only pods created under the upgrade's pinning.
			CreationTimestamp: p.CreationTimestamp,
		},
		// Verification asks the agents to report every pod they can see: running,
		// with an IP, in the pod network.
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, Conditions: conds, PodIP: p.Status.PodIP},
	}, nil
}

// podAnnotations are the pod annotations the orchestrator reads: the revision, the
// injector's status and template (sidecar mode, gateways) and its own restart mark.
var podAnnotations = []string{mesh.RevisionKey, mesh.AnnotationSidecarStatus, mesh.AnnotationInjectTemplates, ztv1.AnnotationRestart}

// keepAnnotations returns the annotations among keys, nil when there are none.
func keepAnnotations(all map[string]string, keys []string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := all[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keys))
			}
			out[k] = v
		}
	}
	return out
}

// slimNode keeps, of each cached node, what the orchestrator reads: identity, labels,
// annotations, whether it is cordoned (and its taints) and its conditions. A real
// node's status (images, addresses, capacity, system info) is most of its size.
func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		TypeMeta: n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion,
			Labels: n.Labels, Annotations: n.Annotations, OwnerReferences: n.OwnerReferences,
			DeletionTimestamp: n.DeletionTimestamp, Generation: n.Generation,
		},
		Spec:   corev1.NodeSpec{Unschedulable: n.Spec.Unschedulable, Taints: n.Spec.Taints},
		Status: corev1.NodeStatus{Conditions: n.Status.Conditions},
	}, nil
}
