package orchestrator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
)

// A status holds one entry per node in scope; a pass usually changes a few of them
// and a field or two. So the status is written as a JSON patch (RFC 6902) of what
// changed: each changed node entry, each changed top-level field. A merge patch would
// carry the whole node list (merge patches replace lists), and computing it
// serialises the whole object twice.

// jsonPatchOp is one operation of a JSON patch.
type jsonPatchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value,omitempty"`
}

// statusOps returns the operations turning before's status into after's, nil when
// they serialise the same. The first operation replaces metadata.resourceVersion
// with the one read: the API server refuses the patch with a Conflict if the object
// changed since, as with a merge patch's optimistic lock.
func statusOps(before, after *ztv1.RevisionUpgrade) ([]jsonPatchOp, error) {
	var ops []jsonPatchOp
	add := func(op, path string, v any) error {
		var raw json.RawMessage
		if v != nil {
			b, err := json.Marshal(v)
			if err != nil {
				return err
			}
			raw = b
		}
		ops = append(ops, jsonPatchOp{Op: op, Path: path, Value: raw})
		return nil
	}
	bf, err := statusFields(&before.Status)
	if err != nil {
		return nil, err
	}
	af, err := statusFields(&after.Status)
	if err != nil {
		return nil, err
	}
	nodesSame := slices.Equal(before.Status.Nodes, after.Status.Nodes)
	if reflect.DeepEqual(before.Status, ztv1.RevisionUpgradeStatus{}) {
		// No status yet: the object may have no status key at all, so set it whole
		// ("add" replaces a member that exists).
		if len(af) == 0 && nodesSame {
			return nil, nil
		}
		if err := add("add", "/status", &after.Status); err != nil {
			return nil, err
		}
		return withLock(before, ops), nil
	}
	for _, k := range slices.Sorted(maps.Keys(af)) {
		if !bytes.Equal(bf[k], af[k]) {
			ops = append(ops, jsonPatchOp{Op: "add", Path: "/status/" + k, Value: af[k]})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(bf)) {
		if _, ok := af[k]; !ok {
			ops = append(ops, jsonPatchOp{Op: "remove", Path: "/status/" + k})
		}
	}
	switch {
	case nodesSame:
	case len(before.Status.Nodes) == len(after.Status.Nodes):
		for i := range after.Status.Nodes {
			if before.Status.Nodes[i] != after.Status.Nodes[i] {
				if err := add("replace", "/status/nodes/"+strconv.Itoa(i), &after.Status.Nodes[i]); err != nil {
					return nil, err
				}
			}
		}
	case len(after.Status.Nodes) == 0:
		ops = append(ops, jsonPatchOp{Op: "remove", Path: "/status/nodes"})
	default:
		if err := add("add", "/status/nodes", after.Status.Nodes); err != nil {
			return nil, err
		}
	}
	if len(ops) == 0 {
		return nil, nil
	}
	return withLock(before, ops), nil
}

func withLock(before *ztv1.RevisionUpgrade, ops []jsonPatchOp) []jsonPatchOp {
	rv, _ := json.Marshal(before.ResourceVersion)
	return append([]jsonPatchOp{{Op: "replace", Path: "/metadata/resourceVersion", Value: rv}}, ops...)
}

// statusFields serialises every top-level status field but the node list, by JSON
// name, as the API server stores them.
func statusFields(s *ztv1.RevisionUpgradeStatus) (map[string]json.RawMessage, error) {
	c := *s // shallow: only Nodes is dropped
	c.Nodes = nil
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("marshal status: %w", err)
	}
	out := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("split status: %w", err)
	}
	return out, nil
}

// patchStatus writes the status changes of u since before, if any, and reports
// whether it wrote. The object must not have changed since before was read (else
// the API server answers Conflict).
func (r *Reconciler) patchStatus(ctx context.Context, before, u *ztv1.RevisionUpgrade) (bool, error) {
	ops, err := statusOps(before, u)
	if err != nil || ops == nil {
		return false, err
	}
	if u.Status.ObservedGeneration != u.Generation {
		u.Status.ObservedGeneration = u.Generation
		if ops, err = statusOps(before, u); err != nil {
			return false, err
		}
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return false, err
	}
	drive.CountWrite("status")
	// The answer is asked for as metadata only: the whole object holds an entry per
	// node in scope, and decoding it back would double the cost of every status write
	// on a large cluster. u already holds what was written; only its resourceVersion
	// is new.
	meta := &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: ztv1.GroupVersion.String(), Kind: "RevisionUpgrade"},
		ObjectMeta: metav1.ObjectMeta{Name: u.Name, Namespace: u.Namespace},
	}
	if err := r.Client.Status().Patch(ctx, meta, client.RawPatch(types.JSONPatchType, body)); err != nil {
		return true, err
	}
	u.ResourceVersion = meta.ResourceVersion
	return true, nil
}
