package sim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

// TestIstiodInjectsPodsOfItsRevision runs the real istiod out of cluster for one
// revision and checks that a Deployment's pod, created through the API server's
// admission in a namespace labelled with that revision, gets the revision's sidecar in
// its spec, and that a pod of an unlabelled namespace does not.
func TestIstiodInjectsPodsOfItsRevision(t *testing.T) {
	simtest.SkipShort(t, "builds istiod and runs it against the shared simulated cluster")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	bin, err := sim.EnsureIstiod(ctx, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	const rev = "1-30-9"
	d, err := cluster.StartIstiod(ctx, bin, sim.IstiodOptions{Revision: rev})
	if err != nil {
		t.Fatal(err)
	}
	kube := cluster.Client
	t.Cleanup(func() {
		_ = d.Stop()
		for _, name := range d.Webhooks {
			_ = kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), name, metav1.DeleteOptions{})
		}
	})
	if !strings.HasPrefix(d.WebhookURL, "https://127.0.0.1:") {
		t.Errorf("webhook %s is not on loopback", d.WebhookURL)
	}
	mwc, err := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "istio-sidecar-injector-"+rev, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if mwc.Labels["istio.io/rev"] != rev || len(mwc.Webhooks) == 0 || len(mwc.Webhooks[0].ClientConfig.CABundle) == 0 {
		t.Errorf("webhook configuration: labels %v, %d webhooks", mwc.Labels, len(mwc.Webhooks))
	}

	podOf := func(ns string, labels map[string]string) *corev1.Pod {
		t.Helper()
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
		sel := map[string]string{"app": "web"}
		dep := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To[int32](1),
				Selector: &metav1.LabelSelector{MatchLabels: sel},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: sel},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "example/web"}}},
				},
			},
		}
		if _, err := kube.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var pod *corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil || len(pods.Items) == 0 {
				return false, err
			}
			pod = &pods.Items[0]
			return true, nil
		})
		if err != nil {
			rs, _ := kube.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
			var conds []string
			for _, r := range rs.Items {
				for _, c := range r.Status.Conditions {
					conds = append(conds, fmt.Sprintf("%s: %s", c.Type, c.Message))
				}
			}
			t.Fatalf("no pod of %s/web: %v; ReplicaSet conditions: %v", ns, err, conds)
		}
		return pod
	}

	t.Run("a pod of a namespace labelled with the revision gets its sidecar", func(t *testing.T) {
		pod := podOf("inject-"+rev, map[string]string{"istio.io/rev": rev})
		var proxy *corev1.Container
		for _, list := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
			for i := range list {
				if list[i].Name == "istio-proxy" {
					proxy = &list[i]
				}
			}
		}
		if proxy == nil {
			t.Fatalf("pod %s has no istio-proxy container: containers %v, init %v", pod.Name, names(pod.Spec.Containers), names(pod.Spec.InitContainers))
		}
		if !strings.HasSuffix(proxy.Image, ":"+sim.IstioTag) || !strings.Contains(proxy.Image, "proxyv2") {
			t.Errorf("istio-proxy image %q, want proxyv2:%s", proxy.Image, sim.IstioTag)
		}
		var status struct{ Revision string }
		if err := json.Unmarshal([]byte(pod.Annotations["sidecar.istio.io/status"]), &status); err != nil || status.Revision != rev {
			t.Errorf("sidecar.istio.io/status = %q (%v), want revision %s", pod.Annotations["sidecar.istio.io/status"], err, rev)
		}
		// Istio's current injection template records the revision as an annotation.
		if pod.Annotations["istio.io/rev"] != rev {
			t.Errorf("pod annotation istio.io/rev = %q, want %s", pod.Annotations["istio.io/rev"], rev)
		}
	})
	t.Run("a pod of an unlabelled namespace gets none", func(t *testing.T) {
		pod := podOf("plain-"+rev, nil)
		if _, ok := pod.Annotations["sidecar.istio.io/status"]; ok || len(pod.Spec.Containers) != 1 {
			t.Errorf("pod %s was injected: containers %v", pod.Name, names(pod.Spec.Containers))
		}
	})
	t.Run("stop ends the process", func(t *testing.T) {
		if err := d.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(d.PID, 0); err == nil {
			t.Errorf("istiod (pid %d) still runs after Stop", d.PID)
		}
	})
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}
