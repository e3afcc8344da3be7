// Package faultproxy puts a misbehaving network between a Kubernetes client and a
// kube-apiserver, on loopback, to prove that a controller survives what real control
// planes do under load: conflicts, throttling, internal errors, dropped connections,
// slow answers and watch streams cut in the middle.
//
// The proxy listens with TLS on 127.0.0.1 (its own self-signed certificate: clientcmd
// sends credentials only over TLS) and forwards to the apiserver over TLS, passing the
// client's own credentials through, so the client keeps its identity (and its RBAC). Each request draws, from a seeded random source, whether it is answered by
// a fault instead of the apiserver; faults can be switched on and off while clients run
// (Proxy.SetConfig), so a test can let a client start cleanly and then starve it.
// Every request is counted per verb and resource, and per second, so a test can show
// that retries back off instead of looping.
package faultproxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Fault is one kind of injected failure.
type Fault string

// The faults the proxy injects. Conflict is only injected on writes (a read cannot
// conflict); the others on any request.
const (
	Conflict    Fault = "409"  // the object changed under the writer
	TooMany     Fault = "429"  // API priority and fairness throttling, with Retry-After
	Internal    Fault = "500"  // an apiserver or etcd hiccup
	Drop        Fault = "drop" // the connection is closed without an answer
	CutWatch    Fault = "cut"  // a watch stream is closed after a random time
	Delay       Fault = "delay"
	noFaultName Fault = ""
)

// Config says how often and how the proxy misbehaves. The zero value forwards every
// request untouched.
type Config struct {
	// ErrorRate is the share of requests (0-1) answered with one of Faults instead of
	// being forwarded.
	ErrorRate float64
	// Faults are drawn uniformly for an erroring request (default Conflict, TooMany,
	// Internal, Drop).
	Faults []Fault
	// DelayRate is the share of forwarded requests held for up to MaxDelay first.
	DelayRate float64
	MaxDelay  time.Duration
	// WatchCutAfter, when set, closes every watch stream after a random time up to it,
	// as an apiserver restart or a load balancer does.
	WatchCutAfter time.Duration
}

// Stats is what the proxy saw.
type Stats struct {
	Requests int            // every request received
	Faults   map[Fault]int  // injected faults by kind (delays and cut watches included)
	ByVerb   map[string]int // "GET nodes", "PATCH revisionupgrades/status", "WATCH pods"...
	// PeakPerSecond is the largest number of requests received within one second
	// (watches counted when they start): a tight retry loop shows here.
	PeakPerSecond int
}

// Proxy is a running fault-injecting proxy.
type Proxy struct {
	// URL is where clients connect (https://127.0.0.1:PORT).
	URL string
	// CAData is the PEM certificate clients must trust to reach URL.
	CAData []byte

	target *rest.Config
	srv    *http.Server
	ln     net.Listener

	mu      sync.Mutex
	cfg     Config
	rng     *rand.Rand
	stats   Stats
	second  int64 // unix second of the current bucket
	inSec   int
	stopped chan struct{}
}

// Start listens on a free loopback port and forwards to target (an apiserver's REST
// config: its host and CA are used; credentials come from the clients). seed makes the
// sequence of faults reproducible for a given sequence of requests.
func Start(target *rest.Config, cfg Config, seed uint64) (*Proxy, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if len(cfg.Faults) == 0 {
		cfg.Faults = []Fault{Conflict, TooMany, Internal, Drop}
	}
	upstream, err := url.Parse(target.Host)
	if err != nil || upstream.Host == "" {
		return nil, fmt.Errorf("faultproxy: target host %q is not a URL", target.Host)
	}
	tlsCfg, err := rest.TLSConfigFor(&rest.Config{TLSClientConfig: rest.TLSClientConfig{CAFile: target.CAFile, CAData: target.CAData, ServerName: target.ServerName, Insecure: target.Insecure}})
	if err != nil {
		return nil, fmt.Errorf("faultproxy: TLS for %s: %w", target.Host, err)
	}
	cert, caPEM, err := selfSigned()
	if err != nil {
		return nil, fmt.Errorf("faultproxy: certificate: %w", err)
	}
	// HTTP/1.1 only: a dropped request hijacks and closes its connection.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{
		URL:     "https://" + ln.Addr().String(),
		CAData:  caPEM,
		target:  target,
		ln:      ln,
		cfg:     cfg,
		rng:     rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		stats:   Stats{Faults: map[Fault]int{}, ByVerb: map[string]int{}},
		stopped: make(chan struct{}),
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Host = upstream.Host
		},
		Transport:     &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 100},
		FlushInterval: -1, // watches stream event by event
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if !errors.Is(err, context.Canceled) {
				status(w, http.StatusBadGateway, "InternalError", "faultproxy: upstream: "+err.Error())
			}
		},
	}
	p.srv = &http.Server{Handler: p.handler(rp), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		_ = p.srv.Serve(ln)
		close(p.stopped)
	}()
	return p, nil
}

func (c Config) validate() error {
	if c.ErrorRate < 0 || c.ErrorRate > 1 {
		return fmt.Errorf("faultproxy: ErrorRate %v is outside 0-1", c.ErrorRate)
	}
	if c.DelayRate < 0 || c.DelayRate > 1 {
		return fmt.Errorf("faultproxy: DelayRate %v is outside 0-1", c.DelayRate)
	}
	if c.DelayRate > 0 && c.MaxDelay <= 0 {
		return errors.New("faultproxy: DelayRate without a MaxDelay")
	}
	for _, f := range c.Faults {
		switch f {
		case Conflict, TooMany, Internal, Drop:
		default:
			return fmt.Errorf("faultproxy: %q is not an injectable fault (409, 429, 500, drop)", f)
		}
	}
	return nil
}

// SetConfig changes how the proxy misbehaves from the next request on.
func (p *Proxy) SetConfig(cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if len(cfg.Faults) == 0 {
		cfg.Faults = []Fault{Conflict, TooMany, Internal, Drop}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg = cfg
	return nil
}

// Stats returns a copy of the counts so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{Requests: p.stats.Requests, PeakPerSecond: p.stats.PeakPerSecond, Faults: map[Fault]int{}, ByVerb: map[string]int{}}
	for k, v := range p.stats.Faults {
		s.Faults[k] = v
	}
	for k, v := range p.stats.ByVerb {
		s.ByVerb[k] = v
	}
	return s
}

// ResetStats zeroes the counts, to measure one phase of a test.
func (p *Proxy) ResetStats() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats = Stats{Faults: map[Fault]int{}, ByVerb: map[string]int{}}
	p.second, p.inSec = 0, 0
}

// Top returns the n most frequent "VERB resource" keys with their counts, for reports.
func (s Stats) Top(n int) []string {
	keys := make([]string, 0, len(s.ByVerb))
	for k := range s.ByVerb {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if s.ByVerb[keys[i]] != s.ByVerb[keys[j]] {
			return s.ByVerb[keys[i]] > s.ByVerb[keys[j]]
		}
		return keys[i] < keys[j]
	})
	out := make([]string, 0, n)
	for _, k := range keys[:min(n, len(keys))] {
		out = append(out, fmt.Sprintf("%s=%d", k, s.ByVerb[k]))
	}
	return out
}

// Config returns a REST config that reaches the apiserver through the proxy with the
// credentials of user (a bearer token or client certificate config).
func (p *Proxy) Config(user *rest.Config) *rest.Config {
	c := rest.CopyConfig(user)
	c.Host = p.URL
	c.TLSClientConfig = rest.TLSClientConfig{CAData: p.CAData}
	return c
}

// WriteKubeconfig writes a kubeconfig for the proxy carrying user's bearer token (the
// simulated cluster's clients authenticate by token).
func (p *Proxy) WriteKubeconfig(path string, user *rest.Config) error {
	if user.BearerToken == "" {
		return errors.New("faultproxy: the user config has no bearer token to pass through")
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["faultproxy"] = &clientcmdapi.Cluster{Server: p.URL, CertificateAuthorityData: p.CAData}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: user.BearerToken}
	cfg.Contexts["faultproxy"] = &clientcmdapi.Context{Cluster: "faultproxy", AuthInfo: "user"}
	cfg.CurrentContext = "faultproxy"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// CertPool holds the proxy's certificate, for raw HTTP clients.
func (p *Proxy) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAData)
	return pool
}

// selfSigned makes a short-lived certificate for 127.0.0.1.
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "ztcanary-faultproxy"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	return cert, certPEM, err
}

// Close stops listening and cuts every open connection.
func (p *Proxy) Close() error {
	err := p.srv.Close()
	<-p.stopped
	return err
}

// decision is what happens to one request.
type decision struct {
	fault Fault
	delay time.Duration
	cut   time.Duration
}

func (p *Proxy) decide(r *http.Request, watch bool) decision {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.Requests++
	p.stats.ByVerb[verbKey(r, watch)]++
	now := time.Now().Unix()
	if now != p.second {
		p.second, p.inSec = now, 0
	}
	p.inSec++
	p.stats.PeakPerSecond = max(p.stats.PeakPerSecond, p.inSec)

	var d decision
	if p.cfg.ErrorRate > 0 && p.rng.Float64() < p.cfg.ErrorRate {
		f := p.cfg.Faults[p.rng.IntN(len(p.cfg.Faults))]
		if f == Conflict && !isWrite(r.Method) {
			f = Internal
		}
		d.fault = f
		p.stats.Faults[f]++
		return d
	}
	if p.cfg.DelayRate > 0 && p.rng.Float64() < p.cfg.DelayRate {
		d.delay = time.Duration(p.rng.Int64N(int64(p.cfg.MaxDelay)) + 1)
		p.stats.Faults[Delay]++
	}
	if watch && p.cfg.WatchCutAfter > 0 {
		d.cut = time.Duration(p.rng.Int64N(int64(p.cfg.WatchCutAfter)) + 1)
		p.stats.Faults[CutWatch]++
	}
	return d
}

func (p *Proxy) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		watch := r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1"
		d := p.decide(r, watch)
		switch d.fault {
		case Conflict:
			status(w, http.StatusConflict, "Conflict", "faultproxy: injected conflict: the object has been modified; please apply your changes to the latest version and try again")
			return
		case TooMany:
			w.Header().Set("Retry-After", "1")
			status(w, http.StatusTooManyRequests, "TooManyRequests", "faultproxy: injected throttling, please try again later")
			return
		case Internal:
			status(w, http.StatusInternalServerError, "InternalError", "faultproxy: injected internal error")
			return
		case Drop:
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					_ = conn.Close()
					return
				}
			}
			panic(http.ErrAbortHandler) // HTTP/2: abort the stream
		case noFaultName:
		}
		if d.delay > 0 {
			select {
			case <-time.After(d.delay):
			case <-r.Context().Done():
				return
			}
		}
		if d.cut > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), d.cut)
			defer cancel()
			r = r.WithContext(ctx)
		}
		next.ServeHTTP(w, r)
	})
}

func isWrite(method string) bool {
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

// verbKey names a request like "PATCH revisionupgrades/status" or "WATCH pods".
func verbKey(r *http.Request, watch bool) string {
	verb := r.Method
	if watch {
		verb = "WATCH"
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	// /api/v1/[namespaces/NS/]RES[/NAME[/SUB]] or /apis/G/V/[namespaces/NS/]RES[/NAME[/SUB]]
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return verb + " " + r.URL.Path
	}
	if len(parts) >= 2 && parts[0] == "namespaces" && len(parts) > 2 {
		parts = parts[2:]
	}
	switch len(parts) {
	case 0:
		return verb + " discovery"
	case 1, 2:
		return verb + " " + parts[0]
	default:
		return verb + " " + parts[0] + "/" + parts[2]
	}
}

func status(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":%q,"reason":%q,"code":%d}`, msg, reason, code)
}
