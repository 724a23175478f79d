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

// New builds the backend named by spec ("echo" or "bench"; later also
// grpc:// and http(s):// URLs). Anything else fails with an error wrapping
// ErrUnknownBackend that names the spec.
func New(spec string) (Backend, error) {
	switch spec {
	case SpecEcho:
		return Echo{}, nil
	case SpecBench:
		return Bench{}, nil
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnknownBackend, spec)
	}
}
