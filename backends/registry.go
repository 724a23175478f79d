package backends

import (
	"errors"
	"fmt"
)

// Specs of the built-in in-process backends, as written in a route's
// backend field.
const (
	SpecEcho  = "echo"
	SpecBench = "bench"
)

// ErrUnknownBackend is returned by New for a spec no engine accepts.
var ErrUnknownBackend = errors.New("backends: unknown backend")

// New builds the backend named by spec: "echo", "bench", a
// grpc://host:port or grpcs://host:port URL, or an http:// or https://
// webhook URL, with options (see the package doc). A spec an engine
// claims but cannot accept fails with an error wrapping ErrBadSpec that
// names the bad part; anything else with an error wrapping
// ErrUnknownBackend that names the spec.
//
// A backend that holds resources (the gRPC engine's connection, the
// webhook engine's connection pool) also implements io.Closer; its owner
// closes it once no call can be made.
func New(spec string) (Backend, error) {
	switch {
	case spec == SpecEcho:
		return Echo{}, nil
	case spec == SpecBench:
		return Bench{}, nil
	case isGRPCSpec(spec):
		cfg, err := ParseGRPCSpec(spec)
		if err != nil {
			return nil, err
		}
		g, err := NewGRPC(cfg)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return g, nil
	case isWebhookSpec(spec):
		cfg, err := ParseWebhookSpec(spec)
		if err != nil {
			return nil, err
		}
		w, err := NewWebhook(cfg)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return w, nil
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnknownBackend, spec)
	}
}
