// Package simnet gives tests HTTP backends with real, non-loopback addresses: each
// server runs inside a network namespace the test creates, reached from the host
// over a veth pair. The API server refuses loopback addresses in EndpointSlices, so
// this is how traffic through a real data plane (Traefik) reaches test backends
// without leaving the machine. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
package simnet

import (
	"errors"
	"net/http"
)

// ErrNeedsRoot is Serve's answer when the process may not create network namespaces.
var ErrNeedsRoot = errors.New("simnet needs root to create network namespaces")

// Server is an HTTP server inside a network namespace of its own.
type Server struct {
	// NetNS is the network namespace's name (under /var/run/netns).
	NetNS string
	// IP is the server's address inside the namespace, reachable from the host.
	IP string
	// Port is the port it listens on.
	Port int

	srv      *http.Server
	hostLink string
}
