//go:build !linux

package simnet

import (
	"net/http"
	"testing"
)

// Start needs Linux network namespaces; elsewhere the test is skipped.
func Start(t testing.TB, index, port int, handler http.Handler) *Server {
	t.Skip("simnet needs Linux network namespaces")
	return nil
}

// Serve needs Linux network namespaces.
func Serve(index, port int, handler http.Handler) (*Server, error) { return nil, ErrNeedsRoot }

// Close does nothing where Serve cannot run.
func (s *Server) Close() error { return nil }
