package sim

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// IstioVersion is the istio.io/istio pseudo-version kind/tools/istiod builds istiod
// from (the module has no release tags on the Go module proxy). IstioTag is the proxy
// image tag istiod reports and StartIstiod renders into the injector's values.
const (
	IstioVersion = "v0.0.0-20260827124520-eed52ebb66ad"
	IstioTag     = "1.31-dev"
)

var istiodComponent = component{name: "istiod", tool: "istiod", pkg: "istio.io/istio/pilot/cmd/pilot-discovery", version: IstioVersion,
	ldflags: "-s -w -X istio.io/istio/pkg/version.buildVersion=" + IstioTag + " -X istio.io/istio/pkg/version.buildGitRevision=eed52ebb66ad -X istio.io/istio/pkg/version.buildStatus=Clean"}

// EnsureIstiod returns the path of istiod (Istio's pilot-discovery: config
// distribution, CA and the sidecar injection webhook), building it from the Go module
// proxy into the cache on first use. The simulated cluster never needs it; the
// sidecar-mode tests run it out of cluster, one process per revision, so that pods
// created in a namespace labelled istio.io/rev really get that revision's proxy.
func EnsureIstiod(ctx context.Context, progress io.Writer) (string, error) {
	return ensureOnDemand(ctx, istiodComponent, progress)
}

// IstioNamespace is where StartIstiod puts the injector's configuration, as Istio's
// charts do.
const IstioNamespace = "istio-system"

// chartDir is Istio's istio-discovery chart inside the istio.io/istio module.
const chartDir = "manifests/charts/istio-control/istio-discovery"

// IstiodOptions configure one istiod revision.
type IstiodOptions struct {
	// Revision is the istio.io/rev value istiod serves.
	Revision string
	// DefaultTag also installs the "default" revision tag for this revision
	// (MutatingWebhookConfiguration istio-revision-tag-default, as the chart renders
	// it with revisionTags=[default]): it injects namespaces labelled
	// istio-injection=enabled.
	DefaultTag bool
}

// Istiod is an istiod process of one revision, out of cluster, whose sidecar
// injection webhook the API server calls over loopback.
type Istiod struct {
	Revision string
	// PID is the process id; Stop (or the cluster's Stop) ends it.
	PID int
	// Log is the path of istiod's log.
	Log string
	// WebhookURL is the injection endpoint the webhooks call.
	WebhookURL string
	// CABundle is the PEM CA that signed istiod's serving certificate.
	CABundle []byte
	// Webhooks names the MutatingWebhookConfigurations created for it.
	Webhooks []string

	exe string
	cmd *exec.Cmd
}

// StartIstiod runs istiod (from EnsureIstiod) for a revision against the cluster:
// its mesh config (ConfigMap istio-<rev>) and injector config (ConfigMap
// istio-sidecar-injector-<rev>, the injection templates and values taken from
// Istio's istio-discovery chart files in the module), a serving certificate for
// 127.0.0.1 given through its --tlsCertFile/--tlsKeyFile/--caCertFile flags, and the
// chart's MutatingWebhookConfiguration istio-sidecar-injector-<rev> (plus the
// default tag's with DefaultTag) with clientConfig.url pointing at it. It returns
// once the injector answers an AdmissionReview with a patch. The process is
// registered with the cluster, so the cluster's Stop ends it too.
func (c *Cluster) StartIstiod(ctx context.Context, binary string, opts IstiodOptions) (*Istiod, error) {
	rev := opts.Revision
	if rev == "" {
		return nil, fmt.Errorf("start istiod: no revision")
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	mod, err := moduleDir(ctx, filepath.Join(root, "kind", "tools", "istiod"), "istio.io/istio")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.Dir, "istiod-"+rev)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	caPEM, certFile, keyFile, caFile, err := writeIstiodCerts(dir, rev)
	if err != nil {
		return nil, err
	}
	configMaps, err := istiodConfigMaps(filepath.Join(mod, chartDir), rev)
	if err != nil {
		return nil, err
	}
	if err := c.applyIstioObjects(ctx, configMaps); err != nil {
		return nil, err
	}
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	httpPort, httpsPort := ports[0], ports[1]
	name := "istiod-" + rev
	logPath := filepath.Join(c.Dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	cmd := exec.Command(binary, "discovery",
		"--kubeconfig="+c.Kubeconfig,
		"--httpAddr="+addr(httpPort),
		"--httpsAddr="+addr(httpsPort),
		"--grpcAddr="+addr(ports[2]),
		"--secureGRPCAddr="+addr(ports[3]),
		"--monitoringAddr="+addr(ports[4]),
		"--tlsCertFile="+certFile, "--tlsKeyFile="+keyFile, "--caCertFile="+caFile,
		"--domain=cluster.local",
		"--log_output_level=default:info",
	)
	cmd.Env = append(os.Environ(),
		"KUBECONFIG="+c.Kubeconfig,
		"REVISION="+rev,
		"POD_NAMESPACE="+IstioNamespace,
		"POD_NAME=istiod-"+rev+"-sim",
		"CLUSTER_ID=Kubernetes",
		"INJECTION_WEBHOOK_CONFIG_NAME=istio-sidecar-injector-"+rev,
		"VALIDATION_WEBHOOK_CONFIG_NAME=",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir // istiod reads ./etc/istio/config and ./var/lib/istio/inject: absent, so it watches the ConfigMaps
	setProcAttrs(cmd, false)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start istiod %s: %w", rev, err)
	}
	c.children = append(c.children, cmd)
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
	if exe == "" {
		exe = binary
	}
	c.state.Processes = append(c.state.Processes, process{Name: name, PID: cmd.Process.Pid, Exe: exe})
	if err := c.saveState(); err != nil {
		return nil, err
	}
	d := &Istiod{Revision: rev, PID: cmd.Process.Pid, Log: logPath, WebhookURL: "https://" + addr(httpsPort) + "/inject", CABundle: caPEM, exe: exe, cmd: cmd}
	fail := func(err error) (*Istiod, error) {
		_ = d.Stop()
		return nil, err
	}
	if err := c.waitHTTP(ctx, name, "http://"+addr(httpPort)+"/ready", "", 2*time.Minute); err != nil {
		return fail(err)
	}
	if err := c.waitInjector(ctx, d); err != nil {
		return fail(err)
	}
	hooks := []*admissionregistrationv1.MutatingWebhookConfiguration{injectorWebhookConfig(rev, "", d.WebhookURL, caPEM)}
	if opts.DefaultTag {
		hooks = append(hooks, injectorWebhookConfig(rev, "default", d.WebhookURL, caPEM))
	}
	var objs []runtimeObject
	for _, h := range hooks {
		objs = append(objs, h)
		d.Webhooks = append(d.Webhooks, h.Name)
	}
	if err := c.applyIstioObjects(ctx, objs); err != nil {
		return fail(err)
	}
	return d, nil
}

// Stop ends istiod (SIGTERM, then SIGKILL after 10 s). Its webhooks stay, with
// failurePolicy Fail as in the chart: pods of the namespaces it injects are refused
// until it runs again. Safe to call twice.
func (d *Istiod) Stop() error {
	err := stopProcesses([]process{{Name: "istiod-" + d.Revision, PID: d.PID, Exe: d.exe}}, 10*time.Second)
	if d.cmd != nil {
		_ = d.cmd.Wait()
		d.cmd = nil
	}
	return err
}

// runtimeObject is what applyIstioObjects creates or updates.
type runtimeObject interface {
	metav1.Object
	runtime.Object
}

// applyIstioObjects creates the objects (the istio-system namespace first if
// needed), updating those that exist.
func (c *Cluster) applyIstioObjects(ctx context.Context, objs []runtimeObject) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IstioNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", IstioNamespace, err)
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			api := c.Client.CoreV1().ConfigMaps(o.Namespace)
			_, err = api.Create(ctx, o, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				_, err = api.Update(ctx, o, metav1.UpdateOptions{})
			}
		case *admissionregistrationv1.MutatingWebhookConfiguration:
			api := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
			_, err = api.Create(ctx, o, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				var cur *admissionregistrationv1.MutatingWebhookConfiguration
				if cur, err = api.Get(ctx, o.Name, metav1.GetOptions{}); err == nil {
					o.ResourceVersion = cur.ResourceVersion
					_, err = api.Update(ctx, o, metav1.UpdateOptions{})
				}
			}
		default:
			err = fmt.Errorf("unexpected %T", o)
		}
		if err != nil {
			return fmt.Errorf("apply %s: %w", o.GetName(), err)
		}
	}
	return nil
}

// writeIstiodCerts writes a throw-away CA and istiod's serving certificate for
// 127.0.0.1 (and istiod-<rev>.istio-system.svc, the name Istio's charts use).
func writeIstiodCerts(dir, rev string) (caPEM []byte, certFile, keyFile, caFile string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", "", "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "istiod-" + rev + "-sim-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, "", "", "", fmt.Errorf("create istiod CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, "", "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", "", "", err
	}
	svc := "istiod-" + rev
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: svc},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost", svc, svc + "." + IstioNamespace, svc + "." + IstioNamespace + ".svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, "", "", "", fmt.Errorf("create istiod serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, "", "", "", err
	}
	certFile, keyFile, caFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
		return nil, "", "", "", err
	}
	if err := writePEM(keyFile, "EC PRIVATE KEY", keyDER); err != nil {
		return nil, "", "", "", err
	}
	if err := writePEM(caFile, "CERTIFICATE", caDER); err != nil {
		return nil, "", "", "", err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), certFile, keyFile, caFile, nil
}

// istiodConfigMaps builds the two ConfigMaps istiod of a revision watches, as the
// istio-discovery chart renders them (templates/configmap.yaml and
// templates/istiod-injector-configmap.yaml): the mesh config, and the injector's
// config (the chart's injection templates, verbatim from its files/) and values (the
// chart's defaults with the revision, hub and tag set).
func istiodConfigMaps(chart, rev string) ([]runtimeObject, error) {
	raw, err := os.ReadFile(filepath.Join(chart, "values.yaml"))
	if err != nil {
		return nil, fmt.Errorf("read istio-discovery values: %w", err)
	}
	var top map[string]any
	if err := yaml.Unmarshal(raw, &top); err != nil {
		return nil, fmt.Errorf("parse istio-discovery values: %w", err)
	}
	vals, ok := top["_internal_defaults_do_not_set"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("istio-discovery values: no _internal_defaults_do_not_set")
	}
	global, _ := vals["global"].(map[string]any)
	if global == nil {
		return nil, fmt.Errorf("istio-discovery values: no global")
	}
	global["hub"], global["tag"], global["istioNamespace"] = "docker.io/istio", IstioTag, IstioNamespace
	gateways, _ := vals["gateways"].(map[string]any)
	picked := map[string]any{
		"global":                 global,
		"sidecarInjectorWebhook": vals["sidecarInjectorWebhook"],
		"revision":               rev,
		"pilot":                  map[string]any{"cni": vals["cni"], "env": vals["env"]},
		"gateways":               map[string]any{"securityContext": gateways["securityContext"], "seccompProfile": gateways["seccompProfile"]},
	}
	valuesJSON, err := json.MarshalIndent(picked, "", "  ")
	if err != nil {
		return nil, err
	}
	templates := map[string]any{}
	for name, file := range map[string]string{
		"sidecar": "injection-template.yaml", "gateway": "gateway-injection-template.yaml",
		"grpc-simple": "grpc-simple.yaml", "grpc-agent": "grpc-agent.yaml",
		"waypoint": "waypoint.yaml", "kube-gateway": "kube-gateway.yaml",
	} {
		b, err := os.ReadFile(filepath.Join(chart, "files", file))
		if err != nil {
			return nil, fmt.Errorf("read injection template %s: %w", file, err)
		}
		templates[name] = strings.TrimSpace(string(b)) + "\n"
	}
	config, err := yaml.Marshal(map[string]any{
		"defaultTemplates":     []string{"sidecar"},
		"policy":               "enabled",
		"alwaysInjectSelector": []any{},
		"neverInjectSelector":  []any{},
		"injectedAnnotations":  map[string]any{},
		"template":             "{{ Template_Version_And_Istio_Version_Mismatched_Check_Installation }}",
		"templates":            templates,
	})
	if err != nil {
		return nil, err
	}
	mesh, err := yaml.Marshal(map[string]any{
		"trustDomain":   "cluster.local",
		"rootNamespace": IstioNamespace,
		"defaultConfig": map[string]any{"discoveryAddress": "istiod-" + rev + "." + IstioNamespace + ".svc:15012"},
	})
	if err != nil {
		return nil, err
	}
	labels := map[string]string{"istio.io/rev": rev, "app.kubernetes.io/name": "istiod", "operator.istio.io/component": "Pilot"}
	return []runtimeObject{
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "istio-" + rev, Namespace: IstioNamespace, Labels: labels},
			Data:       map[string]string{"mesh": string(mesh), "meshNetworks": "networks: {}\n"},
		},
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector-" + rev, Namespace: IstioNamespace, Labels: labels},
			Data:       map[string]string{"values": string(valuesJSON), "config": string(config)},
		},
	}, nil
}

// injectorWebhookConfig is the chart's MutatingWebhookConfiguration for a revision
// (templates/mutatingwebhook.yaml), or for a revision tag (revision-tags-mwc.yaml;
// the "default" tag adds the istio-injection=enabled webhooks), calling url.
func injectorWebhookConfig(rev, tag, url string, caBundle []byte) *admissionregistrationv1.MutatingWebhookConfiguration {
	sel := func(reqs ...metav1.LabelSelectorRequirement) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchExpressions: reqs}
	}
	req := func(key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelectorRequirement {
		return metav1.LabelSelectorRequirement{Key: key, Operator: op, Values: values}
	}
	notDisabled := req("sidecar.istio.io/inject", metav1.LabelSelectorOpNotIn, "false")
	selects := rev
	name := "istio-sidecar-injector-" + rev
	labels := map[string]string{"istio.io/rev": rev, "app": "sidecar-injector", "app.kubernetes.io/name": "istiod", "operator.istio.io/component": "Pilot"}
	if tag != "" {
		selects, name = tag, "istio-revision-tag-"+tag
		labels["istio.io/tag"] = tag
	}
	hook := func(prefix string, ns, obj *metav1.LabelSelector) admissionregistrationv1.MutatingWebhook {
		return admissionregistrationv1.MutatingWebhook{
			Name:                    prefix + "sidecar-injector.istio.io",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: ptr.To(url), CABundle: caBundle},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			ReinvocationPolicy:      ptr.To(admissionregistrationv1.NeverReinvocationPolicy),
			AdmissionReviewVersions: []string{"v1"},
			NamespaceSelector:       ns,
			ObjectSelector:          obj,
		}
	}
	webhooks := []admissionregistrationv1.MutatingWebhook{
		hook("rev.namespace.",
			sel(req("istio.io/rev", metav1.LabelSelectorOpIn, selects), req("istio-injection", metav1.LabelSelectorOpDoesNotExist)),
			sel(notDisabled)),
		hook("rev.object.",
			sel(req("istio.io/rev", metav1.LabelSelectorOpDoesNotExist), req("istio-injection", metav1.LabelSelectorOpDoesNotExist)),
			sel(notDisabled, req("istio.io/rev", metav1.LabelSelectorOpIn, selects))),
	}
	if tag == "default" {
		webhooks = append(webhooks,
			hook("namespace.", sel(req("istio-injection", metav1.LabelSelectorOpIn, "enabled")), sel(notDisabled)),
			hook("object.",
				sel(req("istio-injection", metav1.LabelSelectorOpDoesNotExist), req("istio.io/rev", metav1.LabelSelectorOpDoesNotExist)),
				sel(req("sidecar.istio.io/inject", metav1.LabelSelectorOpIn, "true"), req("istio.io/rev", metav1.LabelSelectorOpDoesNotExist))),
		)
	}
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Webhooks:   webhooks,
	}
}

// waitInjector posts an AdmissionReview for a pod to istiod's injection endpoint,
// trusting only the CA it was given, until the answer allows the pod with a patch:
// the injector has loaded its templates and values.
func (c *Cluster) waitInjector(ctx context.Context, d *Istiod) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(d.CABundle)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	pod := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default", Labels: map[string]string{"app": "probe"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example/probe"}}},
	}
	podJSON, err := json.Marshal(pod)
	if err != nil {
		return err
	}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "probe", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "default", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: podJSON},
		},
	}
	body, err := json.Marshal(review)
	if err != nil {
		return err
	}
	var last string
	err = c.poll(ctx, "istiod-"+d.Revision+" injector", 2*time.Minute, func() (bool, error) {
		if !alive(d.PID, d.exe) {
			return false, fmt.Errorf("istiod %s exited:\n%s", d.Revision, c.logTail("istiod-"+d.Revision))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.WebhookURL, bytes.NewReader(body))
		if err != nil {
			return false, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var out admissionv1.AdmissionReview
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil || out.Response == nil {
			last = fmt.Sprintf("HTTP %d: %.300s", resp.StatusCode, b)
			return false, nil
		}
		if !out.Response.Allowed || len(out.Response.Patch) == 0 {
			last = fmt.Sprintf("allowed=%v, %d-byte patch, result %+v", out.Response.Allowed, len(out.Response.Patch), out.Response.Result)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last answer: %s)", err, last)
	}
	return nil
}
