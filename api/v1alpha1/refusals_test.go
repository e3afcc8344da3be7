package v1alpha1_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/sim"
)

var update = flag.Bool("update", false, "rewrite docs/refusals-admission.md from what the API server answers")

// refusalsFile is the golden table of every input the API server refuses.
var refusalsFile = filepath.Join("..", "..", "docs", "refusals-admission.md")

// refusalCase is one input the API server must refuse. submit sends it and returns
// the API server's answer; it reports (with t.Errorf) anything the refused request
// changed anyway.
type refusalCase struct {
	name   string // the input, as the table says it; the subtest adds "is refused"
	submit func(t *testing.T, c client.Client) error
	want   string // a part of the message the user must see
}

// refusalRow is one line of the table.
type refusalRow struct {
	input, layer, field, message string
	causes                       []metav1.StatusCause
}

// runRefusals sends every case to the API server, checks that it is refused as
// Invalid with the wanted message, and returns the table's rows in the cases' order.
func runRefusals(t *testing.T, c client.Client, cases []refusalCase, rules []celRule) []refusalRow {
	var rows []refusalRow
	for _, tc := range cases {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			err := tc.submit(t, c)
			var se *apierrors.StatusError
			if !apierrors.IsInvalid(err) || !errors.As(err, &se) {
				t.Fatalf("err = %v, want Invalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("message does not say %q:\n%v", tc.want, err)
			}
			row := refusalRow{input: tc.name, field: causeFields(se), message: err.Error()}
			if d := se.ErrStatus.Details; d != nil {
				row.causes = d.Causes
			}
			row.layer = admissionLayer(row.causes, rules)
			rows = append(rows, row)
		})
	}
	return rows
}

// admissionLayer says whether the OpenAPI schema or a CEL rule
// (x-kubernetes-validations) refused the input, or both.
func admissionLayer(causes []metav1.StatusCause, rules []celRule) string {
	var schema, cel bool
	for _, c := range causes {
		if !namedField(c) {
			continue
		}
		if slices.ContainsFunc(rules, func(r celRule) bool { return strings.Contains(c.Message, r.message) }) {
			cel = true
		} else {
			schema = true
		}
	}
	switch {
	case schema && cel:
		return "admission: schema and CEL rule"
	case cel:
		return "admission: CEL rule"
	}
	return "admission: schema"
}

// namedField is false for the cause the API server adds when it skipped the CEL
// rules of an object the schema already refused ("<nil>: some validation rules
// were not checked").
func namedField(c metav1.StatusCause) bool { return c.Field != "" && c.Field != "<nil>" }

func causeFields(se *apierrors.StatusError) string {
	var fields []string
	if d := se.ErrStatus.Details; d != nil {
		for _, c := range d.Causes {
			if namedField(c) && !slices.Contains(fields, c.Field) {
				fields = append(fields, c.Field)
			}
		}
	}
	return strings.Join(fields, ", ")
}

// celRule is one x-kubernetes-validations rule of a generated CRD.
type celRule struct {
	crd, path, rule, message string
}

// crdRules reads every CEL rule of the generated CRDs in deploy/crds.
func crdRules(t *testing.T) []celRule {
	t.Helper()
	crds, err := sim.ReadCRDs(filepath.Join("..", "..", "deploy", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	var out []celRule
	var walk func(crd, path string, s *apiextensionsv1.JSONSchemaProps)
	walk = func(crd, path string, s *apiextensionsv1.JSONSchemaProps) {
		for _, v := range s.XValidations {
			out = append(out, celRule{crd: crd, path: path, rule: v.Rule, message: v.Message})
		}
		for _, k := range sortedKeys(s.Properties) {
			p := s.Properties[k]
			walk(crd, path+"."+k, &p)
		}
		if s.Items != nil && s.Items.Schema != nil {
			walk(crd, path+"[*]", s.Items.Schema)
		}
		if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
			walk(crd, path+"{*}", s.AdditionalProperties.Schema)
		}
	}
	for _, crd := range crds {
		for _, v := range crd.Spec.Versions {
			if v.Schema != nil && v.Schema.OpenAPIV3Schema != nil {
				walk(crd.Spec.Names.Kind, "", v.Schema.OpenAPIV3Schema)
			}
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// uncoveredRules lists every CEL rule of the CRDs that no row triggered (or that
// has no message to match): a new rule cannot be added without its row in the table.
func uncoveredRules(rules []celRule, rows []refusalRow) []string {
	var out []string
	for _, r := range rules {
		switch {
		case r.message == "":
			out = append(out, fmt.Sprintf("%s%s: rule %q has no message: give it one that names the field and the fix", r.crd, r.path, r.rule))
		case !slices.ContainsFunc(rows, func(row refusalRow) bool { return strings.Contains(row.message, r.message) }):
			out = append(out, fmt.Sprintf("%s%s: no refusal case triggers rule %q (message %q): add one to the table", r.crd, r.path, r.rule, r.message))
		}
	}
	return out
}

// cell escapes a table cell: pipes, and line breaks (none expected).
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", "<br>")
}

// refusalsTable renders the rows as the markdown of docs/refusals-admission.md.
func refusalsTable(rows []refusalRow, rules []celRule, constraints int) string {
	var b strings.Builder
	b.WriteString("# Refused inputs: admission\n\n")
	b.WriteString("<!-- Generated by `make refusals` (go test ./api/v1alpha1 -run TestAdmissionRefusesBadInputWithAClearMessage -update); do not edit. -->\n\n")
	b.WriteString("Every input the Kubernetes API server refuses when a RevisionUpgrade or a NodeCapture is\n")
	b.WriteString("created or changed, by the OpenAPI schema or a CEL rule of the CRDs in `deploy/crds`,\n")
	b.WriteString("with the message exactly as the API server returns it (what `kubectl apply` shows).\n")
	b.WriteString("Nothing is stored. What only the cluster can judge is refused later by the orchestrator,\n")
	b.WriteString("as the `Ready` condition: see [refusals-preflight.md](refusals-preflight.md).\n\n")
	fmt.Fprintf(&b, "%d refused inputs. The CRDs hold %d CEL rules and %d schema constraints on what people and agents\n", len(rows), len(rules), constraints)
	b.WriteString("write (lengths, patterns, bounds, enums, list sizes); each is triggered by at least one row. The rows\n")
	b.WriteString("after the written cases are generated from the schema, one per constraint no written case covers.\n\n")
	b.WriteString("| input | layer | field | message shown |\n")
	b.WriteString("|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", cell(r.input), cell(r.layer), cell(r.field), cell(r.message))
	}
	return b.String()
}

// created sends base() with one mistake as a new RevisionUpgrade named "bad", and
// reports it if the API server stored it anyway.
func created(base func() *ztv1.RevisionUpgrade, mutate func(*ztv1.RevisionUpgrade)) func(*testing.T, client.Client) error {
	return func(t *testing.T, c client.Client) error {
		ctx := context.Background()
		u := base()
		u.Name = "bad"
		mutate(u)
		err := c.Create(ctx, u)
		if gerr := c.Get(ctx, client.ObjectKey{Name: u.Name}, &ztv1.RevisionUpgrade{}); !apierrors.IsNotFound(gerr) {
			t.Errorf("refused object was stored (get: %v)", gerr)
			_ = c.Delete(ctx, u)
		}
		return err
	}
}

// changed creates base() as RevisionUpgrade "existing", then sends change of it
// as an update, and reports it if the stored spec changed anyway.
func changed(base func() *ztv1.RevisionUpgrade, change func(*ztv1.RevisionUpgrade)) func(*testing.T, client.Client) error {
	return changedIn("", base, change)
}

// changedIn is changed, with the upgrade first recorded in phase (through the
// status subresource, as the orchestrator does) unless phase is "".
func changedIn(phase ztv1.Phase, base func() *ztv1.RevisionUpgrade, change func(*ztv1.RevisionUpgrade)) func(*testing.T, client.Client) error {
	return func(t *testing.T, c client.Client) error {
		ctx := context.Background()
		u := base()
		u.Name = "existing"
		if err := c.Create(ctx, u); err != nil {
			t.Fatalf("create the valid upgrade: %v", err)
		}
		t.Cleanup(func() { _ = c.Delete(ctx, u) })
		if phase != "" {
			u.Status.Phase = phase
			if err := c.Status().Update(ctx, u); err != nil {
				t.Fatalf("record the upgrade as %s: %v", phase, err)
			}
		}
		stored := u.DeepCopy()
		change(u)
		err := c.Update(ctx, u)
		got := &ztv1.RevisionUpgrade{}
		if gerr := c.Get(ctx, client.ObjectKey{Name: u.Name}, got); gerr != nil {
			t.Fatal(gerr)
		}
		if !equality.Semantic.DeepEqual(got.Spec, stored.Spec) {
			t.Errorf("refused update changed the spec:\n%+v\nwas\n%+v", got.Spec, stored.Spec)
		}
		return err
	}
}

// reported creates NodeCapture "ambient-worker" with a valid status, then sends
// change of its status, and reports it if the stored status changed anyway.
func reported(change func(*ztv1.NodeCaptureStatus)) func(*testing.T, client.Client) error {
	return func(t *testing.T, c client.Client) error {
		ctx := context.Background()
		nc := &ztv1.NodeCapture{ObjectMeta: metav1.ObjectMeta{Name: "ambient-worker"}}
		if err := c.Create(ctx, nc); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Delete(ctx, nc) })
		nc.Status = ztv1.NodeCaptureStatus{NodeRevision: "1-18-1", Verdict: ztv1.VerdictMatch,
			Pods: []ztv1.PodCapture{{Namespace: "bookinfo", Name: "reviews-v1", State: ztv1.CaptureSingle, CapturedBy: "1-18-1"}}}
		if err := c.Status().Update(ctx, nc); err != nil {
			t.Fatalf("valid status update: %v", err)
		}
		stored := nc.Status.DeepCopy()
		change(&nc.Status)
		err := c.Status().Update(ctx, nc)
		got := &ztv1.NodeCapture{}
		if gerr := c.Get(ctx, client.ObjectKey{Name: nc.Name}, got); gerr != nil {
			t.Fatal(gerr)
		}
		if !equality.Semantic.DeepEqual(got.Status, *stored) {
			t.Errorf("refused status update changed the status:\n%+v\nwas\n%+v", got.Status, *stored)
		}
		return err
	}
}

// changeRefusals are refused changes of an existing RevisionUpgrade.
func changeRefusals() []refusalCase {
	return []refusalCase{
		{"changing spec.from of an existing upgrade", changed(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.From = "1-17-0" }),
			"spec.from cannot change once the upgrade exists"},
		{"changing spec.to of an existing upgrade", changed(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.To = "1-19-0" }),
			"spec.to cannot change once the upgrade exists"},
		{"changing spec.mode of an existing upgrade", changed(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Mode = ztv1.ModeAmbient
			u.Spec.NamespaceSelector = nil
			for i := range u.Spec.Steps {
				u.Spec.Steps[i].Nodes, u.Spec.Steps[i].Namespaces = *u.Spec.Steps[i].Namespaces, nil
			}
		}), "spec.mode cannot change once the upgrade exists"},
	}
}

// captureRefusals are refused NodeCapture reports (written by the node agents).
func captureRefusals() []refusalCase {
	return []refusalCase{
		{"an unknown NodeCapture verdict", reported(func(s *ztv1.NodeCaptureStatus) { s.Verdict = "Great" }),
			`status.verdict: Unsupported value: "Great"`},
		{"an unknown pod capture state", reported(func(s *ztv1.NodeCaptureStatus) { s.Pods[0].State = "Half" }),
			`status.pods[0].state: Unsupported value: "Half"`},
	}
}

// schemaConstraint is one OpenAPI constraint of a field a person writes.
type schemaConstraint struct {
	path    string // spec.steps[*].traffic.weight
	keyword string // minLength, maxLength, pattern, minimum, maximum, enum, minItems, maxItems
	limit   int64  // the bound, for the length, value and item keywords
}

// specConstraints lists the constraints of the RevisionUpgrade spec and of the
// NodeCapture status (what the node agents write) in the generated CRDs, in a
// stable order. Label selectors are Kubernetes' own and left out.
func specConstraints(t *testing.T) []schemaConstraint {
	t.Helper()
	crds, err := sim.ReadCRDs(filepath.Join("..", "..", "deploy", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	var out []schemaConstraint
	var walk func(path string, s *apiextensionsv1.JSONSchemaProps)
	walk = func(path string, s *apiextensionsv1.JSONSchemaProps) {
		if strings.HasSuffix(path, "Selector") || strings.HasSuffix(path, ".conditions") {
			return
		}
		add := func(k string, n int64) { out = append(out, schemaConstraint{path: path, keyword: k, limit: n}) }
		if s.MinLength != nil {
			add("minLength", *s.MinLength)
		}
		if s.MaxLength != nil {
			add("maxLength", *s.MaxLength)
		}
		if s.Pattern != "" {
			add("pattern", 0)
		}
		if s.Minimum != nil {
			add("minimum", int64(*s.Minimum))
		}
		if s.Maximum != nil {
			add("maximum", int64(*s.Maximum))
		}
		if len(s.Enum) > 0 {
			add("enum", 0)
		}
		if s.MinItems != nil {
			add("minItems", *s.MinItems)
		}
		if s.MaxItems != nil {
			add("maxItems", *s.MaxItems)
		}
		for _, k := range sortedKeys(s.Properties) {
			p := s.Properties[k]
			walk(path+"."+k, &p)
		}
		if s.Items != nil && s.Items.Schema != nil {
			walk(path+"[*]", s.Items.Schema)
		}
	}
	for _, crd := range crds {
		root := crd.Spec.Versions[0].Schema.OpenAPIV3Schema
		switch crd.Spec.Names.Kind {
		case "RevisionUpgrade":
			p := root.Properties["spec"]
			walk("spec", &p)
		case "NodeCapture":
			p := root.Properties["status"]
			walk("status", &p)
		}
	}
	return out
}

var index = regexp.MustCompile(`\[\d+\]`)

// refuses reports whether a cause of the API server's answer is this constraint.
func (sc schemaConstraint) refuses(cause metav1.StatusCause) bool {
	if index.ReplaceAllString(cause.Field, "[*]") != sc.path {
		return false
	}
	m := cause.Message
	switch sc.keyword {
	case "enum":
		return cause.Type == metav1.CauseTypeFieldValueNotSupported
	case "maxLength":
		return cause.Type == metav1.CauseTypeTooLong
	case "maxItems":
		return cause.Type == metav1.CauseTypeTooMany
	case "minLength":
		return strings.Contains(m, "should be at least") && strings.Contains(m, "chars long")
	case "minItems":
		return strings.Contains(m, "should have at least")
	case "minimum":
		return strings.Contains(m, "should be greater than or equal to")
	case "maximum":
		return strings.Contains(m, "should be less than or equal to")
	case "pattern":
		return strings.Contains(m, "should match")
	}
	return false
}

func (sc schemaConstraint) coveredBy(rows []refusalRow) bool {
	for _, r := range rows {
		if slices.ContainsFunc(r.causes, sc.refuses) {
			return true
		}
	}
	return false
}

// input says what the generated case sends, for the table.
func (sc schemaConstraint) input() string {
	field := strings.ReplaceAll(sc.path, "[*]", "[0]")
	switch sc.keyword {
	case "minLength":
		return field + " empty"
	case "maxLength":
		return fmt.Sprintf("%s longer than %d characters", field, sc.limit)
	case "pattern":
		return field + " not matching its pattern"
	case "minimum":
		return fmt.Sprintf("%s below %d", field, sc.limit)
	case "maximum":
		return fmt.Sprintf("%s above %d", field, sc.limit)
	case "enum":
		return field + " not one of its values"
	case "minItems":
		return fmt.Sprintf("%s with fewer than %d items", field, sc.limit)
	case "maxItems":
		return fmt.Sprintf("%s with more than %d items", field, sc.limit)
	}
	return field
}

// violation is a value of the field that breaks only this constraint, given the
// valid value v it replaces.
func (sc schemaConstraint) violation(v any) any {
	switch sc.keyword {
	case "minLength":
		return ""
	case "maxLength":
		return strings.Repeat("a", int(sc.limit)+1)
	case "pattern":
		return "not valid"
	case "minimum":
		return sc.limit - 1
	case "maximum":
		return sc.limit + 1
	case "enum":
		return "Bogus"
	case "minItems":
		return []any{}
	case "maxItems":
		list, _ := v.([]any)
		var out []any
		for i := range int(sc.limit) + 1 {
			item := runtime.DeepCopyJSONValue(list[len(list)-1])
			if m, ok := item.(map[string]any); ok && m["namespace"] != nil {
				m["namespace"] = fmt.Sprintf("ns-%d", i) // a list-map's key
			}
			out = append(out, item)
		}
		return out
	}
	return nil
}

// sweepBases are valid objects that between them hold every field: the generated
// cases change one field of the first that has it.
func sweepBases() []*ztv1.RevisionUpgrade {
	full := validUpgrade()
	full.Spec.NodeLabel = "istio.io/rev"
	full.Spec.Ztunnel = ztv1.ZtunnelSpec{Namespace: "istio-system", HandoffLabel: "ztcanary.io/handoff"}
	full.Spec.Workloads = []ztv1.WorkloadPin{{Namespace: "bookinfo", Revision: "1-18-1"}}
	full.Spec.Route = &ztv1.RouteSpec{
		HTTPRoute: &ztv1.ObjectRef{Namespace: "bookinfo", Name: "reviews"},
		Stable:    ztv1.BackendRef{Namespace: "bookinfo", Name: "reviews", Port: 9080},
		Canary:    ztv1.BackendRef{Namespace: "bookinfo-canary", Name: "reviews", Port: 9080},
	}
	full.Spec.Analysis = ztv1.Analysis{AgentVerification: ztv1.AgentVerificationOptional, TrafficTest: &ztv1.TrafficTest{
		URL: "http://gateway/", Requests: 200, Concurrency: 8, MinSuccessRate: 99, CanaryHeader: &ztv1.HeaderMatch{Name: "x-version", Value: "v2"}}}
	vs := validUpgrade()
	vs.Spec.Route = vsRoute()
	vs.Spec.Route.VirtualService.Host = "reviews"
	vs.Spec.Analysis.TrafficTest = &ztv1.TrafficTest{URL: "http://gateway/", CanaryBodyRegex: "v2"}
	sc := validSidecarUpgrade()
	sc.Spec.Sidecar = ztv1.SidecarSpec{IstiodNamespace: "istio-system", MaxConcurrentRestarts: 2}
	return []*ztv1.RevisionUpgrade{full, vs, sc}
}

// generatedCase is a case for a constraint no written case covers: the first sweep
// base that has the field, with the field set to a violating value.
func generatedCase(sc schemaConstraint) refusalCase {
	return refusalCase{name: sc.input(), submit: func(t *testing.T, c client.Client) error {
		for _, base := range sweepBases() {
			obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(base)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(sc.path, "spec") || !setPath(obj, strings.Split(strings.ReplaceAll(sc.path, "[*]", ".[*]"), "."), sc.violation) {
				continue
			}
			u := &unstructured.Unstructured{Object: obj}
			u.SetGroupVersionKind(ztv1.GroupVersion.WithKind("RevisionUpgrade"))
			u.SetName("bad")
			ctx := context.Background()
			err = c.Create(ctx, u)
			if gerr := c.Get(ctx, client.ObjectKey{Name: "bad"}, &ztv1.RevisionUpgrade{}); !apierrors.IsNotFound(gerr) {
				t.Errorf("refused object was stored (get: %v)", gerr)
				_ = c.Delete(ctx, u)
			}
			return err
		}
		t.Fatalf("no sweep base has %s (%s): add a base that does, or write the case", sc.path, sc.keyword)
		return nil
	}}
}

// setPath replaces the value at path (keys, and "[*]" for a list's first item) with
// violate(the value), if the value exists.
func setPath(obj map[string]any, path []string, violate func(any) any) bool {
	var cur any = obj
	for i, seg := range path {
		last := i == len(path)-1
		switch node := cur.(type) {
		case map[string]any:
			v, ok := node[seg]
			if !ok {
				return false
			}
			if last {
				node[seg] = violate(v)
				return true
			}
			cur = v
		case []any:
			if seg != "[*]" || len(node) == 0 {
				return false
			}
			if last {
				node[0] = violate(node[0])
				return true
			}
			cur = node[0]
		default:
			return false
		}
	}
	return false
}

// TestUncoveredRulesNamesARuleWithoutACase: the coverage check, on a rule no row
// triggers and on a rule without a message.
func TestUncoveredRulesNamesARuleWithoutACase(t *testing.T) {
	rules := []celRule{
		{crd: "RevisionUpgrade", path: ".spec", rule: "self.from != self.to", message: "spec.to must differ from spec.from"},
		{crd: "RevisionUpgrade", path: ".spec.steps", rule: "size(self) < 9", message: "spec.steps: at most 8 steps"},
		{crd: "RevisionUpgrade", path: ".spec.to", rule: "self != 'x'"},
	}
	rows := []refusalRow{{message: `RevisionUpgrade.ztcanary.io "bad" is invalid: spec.to: Invalid value: spec.to must differ from spec.from`}}
	got := uncoveredRules(rules, rows)
	if len(got) != 2 || !strings.Contains(got[0], "spec.steps: at most 8 steps") || !strings.Contains(got[1], "has no message") {
		t.Errorf("uncovered rules:\n%s", strings.Join(got, "\n"))
	}
	if got := uncoveredRules(crdRules(t), nil); len(got) == 0 {
		t.Error("no CEL rule read from deploy/crds")
	}
}
