package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// SocketHandler is the gateway's port to the Phoenix protocol layer: one per
// upgraded socket. Methods are called on the socket's poller goroutine, one
// at a time, and must not block. data is valid only until the call returns.
type SocketHandler interface {
	// HandleText receives one complete text message (valid UTF-8). A
	// returned error closes the socket: a *CloseError chooses the code,
	// anything else closes with 1011.
	HandleText(data []byte) error
	// HandleBinary receives one complete binary message; errors as above.
	HandleBinary(data []byte) error
	// Terminate is called exactly once when the socket is gone; no Handle*
	// call follows it.
	Terminate(reason backends.LeaveReason)
}

// ConnectFunc creates the handler of a socket during the handshake, before
// the 101 is written; an error refuses the connection with HTTP 403 and an
// empty body. c may be used (Send, Close) right away: frames queue until
// the upgrade completes.
type ConnectFunc func(c channels.Conn, info channels.ConnectInfo) (SocketHandler, error)

// CloseError is returned by a SocketHandler to close its socket with a
// specific code and disconnect reason.
type CloseError struct {
	Code   channels.CloseCode
	Reason channels.DisconnectReason
	Err    error
}

func (e *CloseError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("close %d (%s): %v", e.Code, e.Reason, e.Err)
	}
	return fmt.Sprintf("close %d (%s)", e.Code, e.Reason)
}

func (e *CloseError) Unwrap() error { return e.Err }

// ErrRefused may be returned by a ConnectFunc; any error refuses with 403.
var ErrRefused = errors.New("gateway: connection refused")

// Request is what is known about an upgrade request before the 101 is
// written. It is the seam for admission control (per-IP caps, origin
// checks, token verification): Options.Admit sees it after the request head
// has been parsed and validated and before Connect runs.
type Request struct {
	// Path is the request path (without the query).
	Path string
	// RawQuery is the query string without '?'.
	RawQuery string
	// Origin and XForwardedFor are the raw header values ("" when absent).
	Origin        string
	XForwardedFor string
	// UserAgent is the raw User-Agent header.
	UserAgent string
	// RemoteAddr is the host part of the TCP peer.
	RemoteAddr string
	// ConnID is the id the socket will have (for log lines).
	ConnID uint64
	// Info is the ConnectInfo that will be handed to Connect (serializer,
	// params, authToken). Admit may fill Info.PlayerID, Info.Claims,
	// Info.Identity and Info.RateKey after verifying the token, and rewrite
	// Info.Params (to drop the token); what it leaves there is what Connect
	// receives.
	Info channels.ConnectInfo
	// Expires, when Admit sets it, is when the socket is closed with 1008
	// (token expired). The poller's once-a-second sweep enforces it, so the
	// close comes at most a second later. Zero: never.
	Expires time.Time
	// RetryAfter, when Admit refuses with 429 or 503 and sets it, is sent
	// as a Retry-After header (whole seconds, rounded up).
	RetryAfter time.Duration
}

// AdmitFunc decides on a Request before the upgrade. It returns status 0 to
// admit, or the HTTP status (4xx/5xx) to refuse with; the refusal has an
// empty body. When it admits, release.Release (if release is non-nil) is
// called exactly once: when the socket is finally closed, or at once if the
// upgrade fails after admission (this is where per-IP/per-player connection
// counts are given back). It runs on a handshake worker and may block
// briefly (bounded by the handshake timeout); it must not keep r.
type AdmitFunc func(r *Request) (status int, release Releaser)

// Releaser gives back what an admission took. It is an interface rather
// than a func so that the admission's own handle (a pointer) is stored as
// is: a method value such as t.Release would be one more allocation per
// connection. Return a nil interface, not a typed nil pointer, for
// "nothing to release".
type Releaser interface{ Release() }

// ReleaseFunc adapts a function to Releaser.
type ReleaseFunc func()

// Release calls f.
func (f ReleaseFunc) Release() { f() }

// Options are the code-level dependencies of a Server (as opposed to Config,
// which is what an operator sets).
type Options struct {
	// Connect creates a handler per socket. Nil wires the production
	// channels server from Config.Routes.
	Connect ConnectFunc
	// Admit runs before Connect; nil admits everything.
	Admit AdmitFunc
	// HTTP serves every request on the client port that is not the
	// WebSocket endpoint; nil answers 404.
	HTTP http.Handler
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registry receives the gateway's metrics; nil creates a private
	// registry (served on /metrics together with Go and process collectors).
	Registry *prometheus.Registry
	// Closers run during Shutdown after the sockets are closed (the
	// production wiring closes the channels server and broker here), with
	// what is left of the drain window (at least closerFloor).
	Closers []func(context.Context) error
	// Backends are in-process backends for routes whose backend is
	// "inproc:<name>" (embedders' own engines, tests).
	Backends map[string]backends.Backend
	// TracerProvider traces connects, joins and pushes (nil: tracing
	// off); see WithTracerProvider.
	TracerProvider trace.TracerProvider
}

// WithBackend registers an in-process backend for routes that name it as
// "inproc:<name>".
func WithBackend(name string, b backends.Backend) Option {
	return func(o *Options) {
		if o.Backends == nil {
			o.Backends = map[string]backends.Backend{}
		}
		o.Backends[name] = b
	}
}

// Option sets a field of Options.
type Option func(*Options)

// WithConnect sets Options.Connect.
func WithConnect(f ConnectFunc) Option { return func(o *Options) { o.Connect = f } }

// WithAdmit sets Options.Admit.
func WithAdmit(f AdmitFunc) Option { return func(o *Options) { o.Admit = f } }

// WithHTTP sets Options.HTTP.
func WithHTTP(h http.Handler) Option { return func(o *Options) { o.HTTP = h } }

// WithLogger sets Options.Logger.
func WithLogger(l *slog.Logger) Option { return func(o *Options) { o.Logger = l } }

// WithRegistry sets Options.Registry.
func WithRegistry(r *prometheus.Registry) Option { return func(o *Options) { o.Registry = r } }

// leaveReason maps why a socket ended to what its channels are told.
func leaveReason(r channels.DisconnectReason) backends.LeaveReason {
	switch r {
	case channels.ReasonDrain:
		return backends.LeaveDrained
	case channels.ReasonKicked:
		return backends.LeaveKicked
	case channels.ReasonIdleTimeout:
		return backends.LeaveTimedOut
	case channels.ReasonTokenExpired:
		return backends.LeaveExpired
	default:
		return backends.LeaveDisconnected
	}
}
