//go:build !linux

package gateway

import (
	"context"
	"errors"
	"net"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrUnsupportedOS is returned by Start on systems without epoll. The
// transport is Linux-only (DESIGN.md §3 allows a portable fallback later).
var ErrUnsupportedOS = errors.New("gateway: the epoll transport requires Linux")

// Server is a running gateway (Linux only).
type Server struct{}

// Start fails on this OS.
func Start(context.Context, Config, ...Option) (*Server, error) { return nil, ErrUnsupportedOS }

// Run fails on this OS.
func Run(context.Context, Config, ...Option) error { return ErrUnsupportedOS }

// Addr is nil on this OS.
func (*Server) Addr() net.Addr { return nil }

// AdminAddr is nil on this OS.
func (*Server) AdminAddr() net.Addr { return nil }

// Registry is nil on this OS.
func (*Server) Registry() *prometheus.Registry { return nil }

// Connections is 0 on this OS.
func (*Server) Connections() int { return 0 }

// Shutdown does nothing on this OS.
func (*Server) Shutdown(context.Context) error { return nil }
