package drive

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache/informertest"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// testCache hands out the informers it holds and records the field indexes asked of
// it.
type testCache struct {
	informertest.FakeInformers
	pods, nodes cache.Informer
	indexed     []string
}

func (c *testCache) GetInformer(_ context.Context, obj client.Object, _ ...cache.InformerGetOption) (cache.Informer, error) {
	if _, ok := obj.(*corev1.Pod); ok {
		return c.pods, nil
	}
	return c.nodes, nil
}

func (c *testCache) IndexField(_ context.Context, _ client.Object, field string, _ client.IndexerFunc) error {
	c.indexed = append(c.indexed, field)
	return nil
}

// storeless hides an informer's store, as a cache split by namespace does.
type storeless struct{ cache.Informer }

// A pass reads the informers' own objects (no copy) through their indexes; a cache
// without stores falls back to controller-runtime's field indexes and the client.
func TestPassesReadTheInformerStores(t *testing.T) {
	pods := toolscache.NewSharedIndexInformer(nil, &corev1.Pod{}, 0, toolscache.Indexers{})
	nodes := toolscache.NewSharedIndexInformer(nil, &corev1.Node{}, 0, toolscache.Indexers{})
	c := &testCache{pods: pods, nodes: nodes}
	stores, err := NewStores(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if stores == nil || len(c.indexed) != 0 {
		t.Fatalf("stores %v, field indexes %v: want the informers' stores and no field index", stores, c.indexed)
	}
	r := &Env{Stores: stores}
	n1 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	ztunnel := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "ztunnel-a", Labels: map[string]string{"app": "ztunnel"}}, Spec: corev1.PodSpec{NodeName: "n1"}}
	app := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "web"}, Spec: corev1.PodSpec{NodeName: "n1"}}
	elsewhere := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "db"}, Spec: corev1.PodSpec{NodeName: "n2"}}
	for _, o := range []any{n1, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}}} {
		if err := nodes.GetStore().Add(o); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*corev1.Pod{ztunnel, app, elsewhere} {
		if err := pods.GetIndexer().Add(p); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	got, err := r.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["n1"] != n1 {
		t.Errorf("listNodes = %v, want n1 and n2, n1 the cached object itself", got)
	}
	names := func(ps []*corev1.Pod) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		slices.Sort(out)
		return out
	}
	on, err := r.PodsOn(ctx, PodNodeIndex, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names(on), []string{"web", "ztunnel-a"}) {
		t.Errorf("pods on n1: %v, want web and ztunnel-a", names(on))
	}
	zt, err := r.PodsOn(ctx, ZtunnelNodeIndex, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if len(zt) != 1 || zt[0] != ztunnel {
		t.Errorf("ztunnel pods on n1: %v, want ztunnel-a, the cached object itself", names(zt))
	}

	fallback := &testCache{pods: storeless{pods}, nodes: storeless{nodes}}
	stores, err = NewStores(ctx, fallback)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(fallback.indexed)
	if stores != nil || !slices.Equal(fallback.indexed, []string{PodNodeIndex, ZtunnelNodeIndex}) {
		t.Errorf("without stores: stores %v, field indexes %v; want none and both field indexes", stores, fallback.indexed)
	}
}
