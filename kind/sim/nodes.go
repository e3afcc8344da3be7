package sim

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ControlPlaneRole is the label and taint key kind puts on its control-plane node.
const ControlPlaneRole = "node-role.kubernetes.io/control-plane"

// NodeName returns the name of the i-th node (from 0) of the seed topology:
// ambient-control-plane, ambient-worker, ambient-worker2, ambient-worker3...
func NodeName(i int) string {
	switch i {
	case 0:
		return "ambient-control-plane"
	case 1:
		return "ambient-worker"
	default:
		return fmt.Sprintf("ambient-worker%d", i)
	}
}

// NewNode returns a kwok node as a kubelet would register it: the well-known labels
// Istio's charts select on (kubernetes.io/os), allocatable resources for 250 pods, and
// for the control-plane node kind's role label and NoSchedule taint.
func NewNode(name string, controlPlane bool) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"kubernetes.io/hostname": name,
				"type":                   "kwok",
			},
			Annotations: map[string]string{
				// kwok takes over nodes carrying this annotation.
				"kwok.x-k8s.io/node":           "fake",
				"node.alpha.kubernetes.io/ttl": "0",
			},
		},
		Status: corev1.NodeStatus{
			Capacity:    nodeResources(),
			Allocatable: nodeResources(),
			NodeInfo: corev1.NodeSystemInfo{
				Architecture:    "amd64",
				OperatingSystem: "linux",
				KubeletVersion:  KubernetesVersion,
			},
		},
	}
	if controlPlane {
		n.Labels[ControlPlaneRole] = ""
		n.Spec.Taints = []corev1.Taint{{Key: ControlPlaneRole, Effect: corev1.TaintEffectNoSchedule}}
	}
	return n
}

func nodeResources() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("250"),
	}
}

// createNodes registers the seed topology's n nodes and waits until kwok reports
// every one Ready.
func (c *Cluster) createNodes(ctx context.Context, n int) error {
	names := make([]string, n)
	for i := range names {
		names[i] = NodeName(i)
	}
	return c.AddNodes(ctx, names, true)
}

// AddNodes registers nodes with the given names (the first is the control plane when
// firstIsControlPlane) and waits until all are Ready.
func (c *Cluster) AddNodes(ctx context.Context, names []string, firstIsControlPlane bool) error {
	errs := make(chan error, len(names))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			_, err := c.Client.CoreV1().Nodes().Create(ctx, NewNode(name, firstIsControlPlane && i == 0), metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				errs <- fmt.Errorf("create node %s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	return c.poll(ctx, fmt.Sprintf("%d nodes to be Ready", len(names)), 2*time.Minute, func() (bool, error) {
		list, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		ready := 0
		for i := range list.Items {
			if want[list.Items[i].Name] && nodeReady(&list.Items[i]) {
				ready++
			}
		}
		return ready == len(names), nil
	})
}
