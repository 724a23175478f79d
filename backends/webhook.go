package backends

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/phxgate/phxgate/backends/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
)

// URL schemes of the webhook engine. Plain http is the operator's choice
// (a game on the same host or private network); https is expected in
// production.
const (
	SchemeHTTP  = "http"
	SchemeHTTPS = "https"
)

// Paths appended to a webhook URL, one per call.
const (
	WebhookPathJoin     = "/join"
	WebhookPathHandleIn = "/handle_in"
	WebhookPathLeave    = "/leave"
)

// Headers of every webhook request. WebhookSignatureHeader is
// "v1=<hex HMAC-SHA256 of "<timestamp>.<body>">" keyed with the secret;
// WebhookTimestampHeader is the sending time in Unix seconds;
// IdempotencyKeyHeader repeats the body's call.idempotency_key.
const (
	WebhookTimestampHeader = "X-Phxgate-Timestamp"
	WebhookSignatureHeader = "X-Phxgate-Signature"
	IdempotencyKeyHeader   = "Idempotency-Key"

	webhookSignatureScheme = "v1="
)

// Defaults of the webhook engine's options (see doc.go for the URL syntax).
const (
	DefaultWebhookTimeout         = 3 * time.Second
	DefaultWebhookMaxInflight     = 256
	DefaultWebhookMaxQueue        = 1024
	DefaultWebhookRetries         = 2
	DefaultWebhookBackoff         = 25 * time.Millisecond
	DefaultWebhookBreakerFailures = 5
	DefaultWebhookBreakerCooldown = 5 * time.Second
	DefaultWebhookMaxMessage      = 4 << 20
	// DefaultWebhookMaxSkew is how far from the receiver's clock
	// VerifyWebhook accepts a request's timestamp when given no skew.
	DefaultWebhookMaxSkew = 5 * time.Minute
	// MinWebhookSecret is the shortest signing secret, in bytes, that the
	// engine and VerifyWebhook accept.
	MinWebhookSecret = 32
)

// Transport limits of the webhook engine. A call's deadline bounds it as
// a whole; these bound its parts and the idle connections.
const (
	webhookDialTimeout         = 5 * time.Second
	webhookTLSHandshakeTimeout = 5 * time.Second
	webhookTCPKeepAlive        = 30 * time.Second
	webhookIdleConnTimeout     = 90 * time.Second
	webhookMaxHeaderBytes      = 64 << 10
	// A failed response's body is read up to this many bytes, so that its
	// connection can be reused; the error gives its length, never its
	// content (which may echo the payload or carry player data, and the
	// error is logged).
	webhookErrorBodyDrain = 64 << 10
)

// Errors of VerifyWebhook. A request it refuses should be answered 401
// and not acted upon.
var (
	// ErrWebhookUnsigned: the timestamp or signature header is missing,
	// or the signature header holds no v1 signature.
	ErrWebhookUnsigned = errors.New("backends: webhook request not signed")
	// ErrWebhookSignature: no v1 signature matches the timestamp and body
	// (wrong secret, tampered body or timestamp), or the receiver's
	// secret is shorter than MinWebhookSecret.
	ErrWebhookSignature = errors.New("backends: webhook signature mismatch")
	// ErrWebhookTimestamp: the signed timestamp is not Unix seconds, or is
	// further from the receiver's clock than the allowed skew (a replay,
	// or clocks apart).
	ErrWebhookTimestamp = errors.New("backends: webhook timestamp out of range")
	// ErrWebhookKeyMismatch: the Idempotency-Key header is not the signed
	// body's call.idempotency_key.
	ErrWebhookKeyMismatch = errors.New("backends: webhook idempotency key does not match the body")
)

var errTooBig = errors.New("message over max_message")

// WebhookSecret is a webhook signing key. It formats as "[redacted]", so
// a config printed in a log does not leak it.
type WebhookSecret []byte

func (WebhookSecret) String() string   { return "[redacted]" }
func (WebhookSecret) GoString() string { return "[redacted]" }

// WebhookConfig configures the webhook engine. NewWebhookConfig returns
// the defaults; New fills one in from an http:// or https:// URL.
type WebhookConfig struct {
	// URL is the game's base URL, http:// or https://, with neither query,
	// fragment nor credentials; calls are POSTed to URL+"/join",
	// URL+"/handle_in" and URL+"/leave".
	URL string
	// Secret signs every request; at least MinWebhookSecret bytes. Nil
	// only when Unsigned is set.
	Secret WebhookSecret
	// Unsigned sends requests without a signature. It must be asked for
	// explicitly, and never together with a Secret.
	Unsigned bool
	// CallLimits: deadline, caps, retries, breaker, body size.
	CallLimits

	// For tests: the breaker's clock (time.Now when nil) and the roots of
	// https (the system's when nil).
	now     func() time.Time
	rootCAs *x509.CertPool
}

// NewWebhookConfig returns the defaults for the base URL rawURL, with no
// secret: set Secret, or Unsigned.
func NewWebhookConfig(rawURL string) WebhookConfig {
	return WebhookConfig{
		URL: rawURL,
		CallLimits: CallLimits{
			Timeout:         DefaultWebhookTimeout,
			MaxInflight:     DefaultWebhookMaxInflight,
			MaxQueue:        DefaultWebhookMaxQueue,
			Retries:         DefaultWebhookRetries,
			Backoff:         DefaultWebhookBackoff,
			BreakerFailures: DefaultWebhookBreakerFailures,
			BreakerCooldown: DefaultWebhookBreakerCooldown,
			MaxMessage:      DefaultWebhookMaxMessage,
		},
	}
}

// Validate reports the first field out of its bounds, naming it by its URL
// option, with an error wrapping ErrBadSpec.
func (c WebhookConfig) Validate() error {
	if _, err := webhookBase(c.URL); err != nil {
		return err
	}
	switch {
	case c.Unsigned && len(c.Secret) > 0:
		return fmt.Errorf("%w: webhook option \"unsigned\": true conflicts with a secret (secret_env)", ErrBadSpec)
	case !c.Unsigned && len(c.Secret) == 0:
		return fmt.Errorf("%w: webhook option \"secret_env\" is required: the name of an environment variable holding the signing secret "+
			"(or unsigned=true to send unsigned requests)", ErrBadSpec)
	case !c.Unsigned && len(c.Secret) < MinWebhookSecret:
		return fmt.Errorf("%w: webhook option \"secret_env\": the secret is %d bytes, want at least %d", ErrBadSpec, len(c.Secret), MinWebhookSecret)
	}
	return c.CallLimits.check("webhook")
}

// webhookBase checks a webhook URL and returns it without a trailing
// slash, ready for the call paths to be appended.
func webhookBase(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%w: webhook URL: %v", ErrBadSpec, err)
	}
	switch {
	case u.Scheme != SchemeHTTP && u.Scheme != SchemeHTTPS:
		return "", fmt.Errorf("%w: webhook URL scheme %q: want http or https", ErrBadSpec, u.Scheme)
	case u.User != nil:
		return "", fmt.Errorf("%w: webhook URL: credentials in the URL are not supported (the secret comes from secret_env)", ErrBadSpec)
	case u.Hostname() == "":
		return "", fmt.Errorf("%w: webhook URL %q: want http(s)://host[:port][/path]", ErrBadSpec, raw)
	case u.RawQuery != "" || u.ForceQuery:
		return "", fmt.Errorf("%w: webhook URL: unexpected query %q", ErrBadSpec, u.RawQuery)
	case u.Fragment != "":
		return "", fmt.Errorf("%w: webhook URL: unexpected fragment %q", ErrBadSpec, u.Fragment)
	}
	if port := u.Port(); port != "" {
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return "", fmt.Errorf("%w: webhook URL %q: bad port %q", ErrBadSpec, raw, port)
		}
	}
	return u.Scheme + "://" + u.Host + strings.TrimRight(u.EscapedPath(), "/"), nil
}

// webhookOptions are the URL query options, each setting one field.
var webhookOptions = map[string]optionSetter[WebhookConfig]{
	"secret_env":       secretEnvOpt,
	"unsigned":         boolOpt(func(c *WebhookConfig) *bool { return &c.Unsigned }),
	"timeout":          durationOpt(func(c *WebhookConfig) *time.Duration { return &c.Timeout }),
	"max_inflight":     intOpt(func(c *WebhookConfig) *int { return &c.MaxInflight }),
	"max_queue":        intOpt(func(c *WebhookConfig) *int { return &c.MaxQueue }),
	"retries":          intOpt(func(c *WebhookConfig) *int { return &c.Retries }),
	"backoff":          durationOpt(func(c *WebhookConfig) *time.Duration { return &c.Backoff }),
	"breaker_failures": intOpt(func(c *WebhookConfig) *int { return &c.BreakerFailures }),
	"breaker_cooldown": durationOpt(func(c *WebhookConfig) *time.Duration { return &c.BreakerCooldown }),
	"max_message":      intOpt(func(c *WebhookConfig) *int { return &c.MaxMessage }),
}

// secretEnvOpt reads the signing secret from the environment variable
// named v. Errors name the variable, never its value.
func secretEnvOpt(c *WebhookConfig, v string) error {
	if !isEnvName(v) {
		return fmt.Errorf("%q is not an environment variable name", v)
	}
	s, ok := os.LookupEnv(v)
	switch {
	case !ok:
		return fmt.Errorf("environment variable %s is not set", v)
	case len(s) < MinWebhookSecret:
		return fmt.Errorf("environment variable %s holds %d bytes, want a secret of at least %d", v, len(s), MinWebhookSecret)
	}
	c.Secret = WebhookSecret(s)
	return nil
}

func isEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b != '_' && !('A' <= b && b <= 'Z') && !('a' <= b && b <= 'z') && !(i > 0 && '0' <= b && b <= '9') {
			return false
		}
	}
	return true
}

// isWebhookSpec reports whether spec is an http:// or https:// URL.
func isWebhookSpec(spec string) bool {
	scheme, _, ok := strings.Cut(spec, "://")
	return ok && (strings.EqualFold(scheme, SchemeHTTP) || strings.EqualFold(scheme, SchemeHTTPS))
}

// ParseWebhookSpec reads an http(s)://host[:port][/path]?option=value&…
// spec into a validated config, the secret read from the environment
// variable named by secret_env. Errors wrap ErrBadSpec and name the option.
func ParseWebhookSpec(spec string) (WebhookConfig, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return WebhookConfig{}, fmt.Errorf("%w: %v", ErrBadSpec, err)
	}
	query := u.RawQuery
	u.RawQuery, u.ForceQuery = "", false
	c := NewWebhookConfig(u.String())
	if err := applyOptions("webhook", query, webhookOptions, &c); err != nil {
		return WebhookConfig{}, err
	}
	if c.URL, err = webhookBase(c.URL); err != nil {
		return WebhookConfig{}, err
	}
	if err := c.Validate(); err != nil {
		return WebhookConfig{}, err
	}
	return c, nil
}

// Webhook is the HTTP webhook engine: it POSTs Join, HandleIn and Leave as
// signed JSON to a game's URL, with a deadline per call, retries when the
// game is unavailable, a circuit breaker and a cap on the calls in flight.
// It is safe for concurrent use; Close releases its connections.
type Webhook struct {
	cfg                        WebhookConfig
	joinURL, handleURL, byeURL string
	client                     *http.Client
	transport                  *http.Transport
	r                          *runner

	// life is cancelled by Close, cutting the requests in flight short.
	life context.Context
	kill context.CancelFunc
	// mu is held for reading by every request while it is out, for
	// writing by Close: once Close has it, no connection can be made or
	// go back to the idle pool, so closing the idle ones closes them all.
	mu   sync.RWMutex
	shut bool
	once sync.Once
}

// NewWebhook validates cfg and builds the engine. It does not contact the
// game: calls made while it is unreachable fail with ErrUnavailable.
func NewWebhook(cfg WebhookConfig) (*Webhook, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base, _ := webhookBase(cfg.URL)
	if cfg.now == nil {
		cfg.now = time.Now
	}
	transport := &http.Transport{
		// Calls go straight to the game: a proxy set in the environment
		// for other purposes must not see them.
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   webhookDialTimeout,
			KeepAlive: webhookTCPKeepAlive,
		}).DialContext,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.rootCAs},
		TLSHandshakeTimeout: webhookTLSHandshakeTimeout,
		ForceAttemptHTTP2:   true,
		// The bulkhead already caps the requests out, so the connections;
		// keeping as many idle spares a handshake per call at full load.
		MaxIdleConns:           cfg.MaxInflight,
		MaxIdleConnsPerHost:    cfg.MaxInflight,
		IdleConnTimeout:        webhookIdleConnTimeout,
		MaxResponseHeaderBytes: webhookMaxHeaderBytes,
		// Bodies are counted against max_message as sent.
		DisableCompression: true,
	}
	life, kill := context.WithCancel(context.Background())
	return &Webhook{
		cfg:       cfg,
		joinURL:   base + WebhookPathJoin,
		handleURL: base + WebhookPathHandleIn,
		byeURL:    base + WebhookPathLeave,
		transport: transport,
		client: &http.Client{
			Transport: transport,
			// A redirect would carry a signed call elsewhere: it is an
			// answer, and not a 2xx one.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		r:    newRunner(cfg.CallLimits, cfg.now, classifyWebhook),
		life: life,
		kill: kill,
	}, nil
}

// Config returns the engine's configuration.
func (w *Webhook) Config() WebhookConfig { return w.cfg }

// Close cuts the requests in flight short (their calls fail with
// ErrUnavailable, cause ErrClosed, and so does every later call) and
// closes the engine's connections. Close is idempotent.
func (w *Webhook) Close() error {
	w.once.Do(func() {
		w.r.close()
		w.kill()
		w.mu.Lock()
		w.shut = true
		w.mu.Unlock()
		w.transport.CloseIdleConnections()
	})
	return nil
}

// Stats returns a snapshot of the engine's counters and gauges.
func (w *Webhook) Stats() CallStats { return w.r.stats() }

// Collector returns a Prometheus collector of the engine's Stats under
// phxgate_backend_webhook_*, its metrics carrying labels (say, the route),
// so that several engines can be registered side by side. Nothing is
// registered here.
func (w *Webhook) Collector(labels prometheus.Labels) prometheus.Collector {
	return newCallCollector("webhook", w.Stats, labels)
}

// Join implements Backend.
func (w *Webhook) Join(ctx context.Context, c *Call) (*Reply, error) {
	if c == nil {
		return nil, w.r.fail(&CallError{Op: opJoin, Kind: ErrBackend, Err: errNilCall})
	}
	body, err := encodeWebhook(webhookJoinRequest{
		Call:           toWebhookCall(c),
		ResumePosition: c.ResumePosition,
		Recoverable:    c.Recoverable,
		Rejoin:         c.Rejoin,
		RejoinConnID:   rejoinConnID(c.RejoinConnID),
		RejoinJoinRef:  c.RejoinJoinRef,
	})
	if err != nil {
		return nil, w.r.fail(&CallError{Op: opJoin, Kind: ErrBackend, Err: err})
	}
	resp, err := w.call(ctx, opJoin, w.joinURL, c.IdempotencyKey, body, true)
	if err != nil {
		return nil, err
	}
	r, err := decodeWebhookReply(resp, true)
	if err != nil {
		return nil, w.r.malformed(opJoin, err)
	}
	w.r.succeeded()
	return r, nil
}

// HandleIn implements Backend.
func (w *Webhook) HandleIn(ctx context.Context, c *Call) (*Reply, error) {
	if c == nil {
		return nil, w.r.fail(&CallError{Op: opHandleIn, Kind: ErrBackend, Err: errNilCall})
	}
	body, err := encodeWebhook(webhookHandleInRequest{Call: toWebhookCall(c)})
	if err != nil {
		return nil, w.r.fail(&CallError{Op: opHandleIn, Kind: ErrBackend, Err: err})
	}
	resp, err := w.call(ctx, opHandleIn, w.handleURL, c.IdempotencyKey, body, true)
	if err != nil {
		return nil, err
	}
	r, err := decodeWebhookReply(resp, false)
	if err != nil {
		return nil, w.r.malformed(opHandleIn, err)
	}
	w.r.succeeded()
	return r, nil
}

// Leave implements Backend. Any 2xx answer will do; its body is ignored.
func (w *Webhook) Leave(ctx context.Context, c *Call, reason LeaveReason) error {
	if c == nil {
		return w.r.fail(&CallError{Op: opLeave, Kind: ErrBackend, Err: errNilCall})
	}
	body, err := encodeWebhook(webhookLeaveRequest{Call: toWebhookCall(c), Reason: webhookLeaveReason(reason)})
	if err != nil {
		return w.r.fail(&CallError{Op: opLeave, Kind: ErrBackend, Err: err})
	}
	if _, err := w.call(ctx, opLeave, w.byeURL, c.IdempotencyKey, body, false); err != nil {
		return err
	}
	w.r.succeeded()
	return nil
}

// call sends body to endpoint through the runner and returns the 2xx
// response's body (nil unless keep).
func (w *Webhook) call(ctx context.Context, op, endpoint, key string, body []byte, keep bool) ([]byte, error) {
	if len(body) > w.cfg.MaxMessage {
		return nil, w.r.fail(&CallError{Op: op, Kind: ErrBackend,
			Err: fmt.Errorf("%w: the request is %d bytes, max_message %d", errTooBig, len(body), w.cfg.MaxMessage)})
	}
	var resp []byte
	err := w.r.run(ctx, op, func(ctx context.Context) error {
		var err error
		resp, err = w.post(ctx, endpoint, key, body, keep)
		return err
	})
	return resp, err
}

// attemptError is a failed request, classified where the failure is best
// understood.
type attemptError struct {
	kind error // ErrUnavailable, ErrTimeout, ErrOverloaded or ErrBackend
	out  outcome
	err  error
}

func (e *attemptError) Error() string { return e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

func classifyWebhook(err error) (outcome, error) {
	if err == nil {
		return outcomeSuccess, nil
	}
	if ae, ok := errors.AsType[*attemptError](err); ok {
		return ae.out, ae.kind
	}
	return outcomeSuccess, ErrBackend
}

// statusError is a non-2xx answer. It keeps the body's length only: the
// error is logged, and a game's error body may echo the payload.
type statusError struct {
	code int
	size int64 // bytes of body read, at most webhookErrorBodyDrain
}

func (e *statusError) Error() string {
	switch {
	case e.size == 0:
		return "HTTP " + strconv.Itoa(e.code)
	case e.size >= webhookErrorBodyDrain:
		return fmt.Sprintf("HTTP %d (body of %d bytes or more)", e.code, e.size)
	}
	return fmt.Sprintf("HTTP %d (%d-byte body)", e.code, e.size)
}

// post makes one request: signed, carrying the idempotency key, cut short
// by Close. It returns the body of a 2xx answer (when keep) or an
// *attemptError.
func (w *Webhook) post(ctx context.Context, endpoint, key string, body []byte, keep bool) ([]byte, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.shut {
		return nil, &attemptError{kind: ErrUnavailable, out: outcomeNeutral, err: ErrClosed}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(w.life, cancel)()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, &attemptError{kind: ErrBackend, out: outcomeNeutral, err: err}
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json")
	h.Set("User-Agent", "phxgate")
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	h.Set(WebhookTimestampHeader, ts)
	if !w.cfg.Unsigned {
		h.Set(WebhookSignatureHeader, signWebhook(w.cfg.Secret, ts, body))
	}
	if headerSafe(key) {
		h.Set(IdempotencyKeyHeader, key)
	}
	// The call's span (none when tracing is off) continues in the game.
	telemetry.Inject(ctx, propagation.HeaderCarrier(h))
	resp, err := w.client.Do(req)
	if err != nil {
		return nil, transportFailure(ctx, err)
	}
	defer resp.Body.Close()
	code := resp.StatusCode
	switch {
	case code >= 200 && code <= 299 && !keep:
		// The answer is all a leave needs; what is read of its body only
		// lets the connection be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, webhookErrorBodyDrain))
		return nil, nil
	case code >= 200 && code <= 299:
		b, err := readCapped(resp, w.cfg.MaxMessage)
		switch {
		case errors.Is(err, errTooBig):
			// Closing the body unread drops the connection; that is the
			// price of not reading an unbounded answer.
			return nil, &attemptError{kind: ErrBackend, out: outcomeSuccess, err: err}
		case err != nil:
			return nil, transportFailure(ctx, err)
		}
		return b, nil
	}
	se := &statusError{code: code, size: drainCount(resp.Body)}
	switch code {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return nil, &attemptError{kind: ErrUnavailable, out: outcomeFailure, err: se}
	case http.StatusTooManyRequests:
		return nil, &attemptError{kind: ErrOverloaded, out: outcomeSuccess, err: se}
	default:
		return nil, &attemptError{kind: ErrBackend, out: outcomeSuccess, err: se}
	}
}

// transportFailure classifies a request that got no complete answer: the
// deadline passed (ErrTimeout), the caller or Close gave up (neutral), or
// the game could not be reached or dropped the connection (ErrUnavailable:
// refused, reset, DNS, TLS).
func transportFailure(ctx context.Context, err error) *attemptError {
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(cerr, context.DeadlineExceeded) {
			return &attemptError{kind: ErrTimeout, out: outcomeFailure, err: fmt.Errorf("%w: %w", cerr, err)}
		}
		return &attemptError{kind: ErrBackend, out: outcomeNeutral, err: fmt.Errorf("%w: %w", cerr, err)}
	}
	return &attemptError{kind: ErrUnavailable, out: outcomeFailure, err: err}
}

// readCapped reads a whole body of at most max bytes, so the connection
// can be reused; a bigger one fails with errTooBig without being read.
func readCapped(resp *http.Response, max int) ([]byte, error) {
	if resp.ContentLength > int64(max) {
		return nil, fmt.Errorf("%w: the response is %d bytes, max_message %d", errTooBig, resp.ContentLength, max)
	}
	var buf bytes.Buffer
	if resp.ContentLength > 0 {
		buf.Grow(int(resp.ContentLength))
	}
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, int64(max)+1)); err != nil {
		return nil, err
	}
	if buf.Len() > max {
		return nil, fmt.Errorf("%w: the response is over max_message %d bytes", errTooBig, max)
	}
	return buf.Bytes(), nil
}

// drainCount reads a failed answer's body up to webhookErrorBodyDrain
// bytes, so that a short one leaves the connection reusable, and returns
// how many it read.
func drainCount(body io.Reader) int64 {
	n, _ := io.Copy(io.Discard, io.LimitReader(body, webhookErrorBodyDrain))
	return n
}

// headerSafe reports whether an idempotency key can travel as a header
// value unchanged by any receiver: printable ASCII, no space at either
// end. Any other key is sent in the body only.
func headerSafe(key string) bool {
	if key == "" || key[0] == ' ' || key[len(key)-1] == ' ' {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] > 0x7e {
			return false
		}
	}
	return true
}

// signWebhook returns the signature header's value for ts and body.
func signWebhook(secret []byte, ts string, body []byte) string {
	return webhookSignatureScheme + hex.EncodeToString(webhookMAC(secret, ts, body))
}

func webhookMAC(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// VerifyWebhook checks a webhook request, for game servers written in Go:
// body is the request's whole body as read. It accepts the request when
// one v1 signature of X-Phxgate-Signature (a comma-separated list) is the
// HMAC-SHA256, keyed with secret, of "<X-Phxgate-Timestamp>.<body>"
// (compared in constant time), the timestamp is within maxSkew of the
// local clock (DefaultWebhookMaxSkew when maxSkew ≤ 0), and an
// Idempotency-Key header, when present, is the body's
// call.idempotency_key. It refuses with an error wrapping
// ErrWebhookUnsigned, ErrWebhookSignature, ErrWebhookTimestamp or
// ErrWebhookKeyMismatch. The signature covers the body, not the path:
// check that the body is the call the path names.
func VerifyWebhook(secret []byte, r *http.Request, body []byte, maxSkew time.Duration) error {
	return verifyWebhook(secret, r.Header, body, maxSkew, time.Now())
}

func verifyWebhook(secret []byte, h http.Header, body []byte, maxSkew time.Duration, now time.Time) error {
	if len(secret) < MinWebhookSecret {
		return fmt.Errorf("%w: the receiver's secret is %d bytes, want at least %d", ErrWebhookSignature, len(secret), MinWebhookSecret)
	}
	if maxSkew <= 0 {
		maxSkew = DefaultWebhookMaxSkew
	}
	ts := h.Get(WebhookTimestampHeader)
	if ts == "" {
		return fmt.Errorf("%w: no %s header", ErrWebhookUnsigned, WebhookTimestampHeader)
	}
	want := webhookMAC(secret, ts, body)
	found, match := false, false
	for _, v := range h.Values(WebhookSignatureHeader) {
		for part := range strings.SplitSeq(v, ",") {
			sig, ok := strings.CutPrefix(strings.TrimSpace(part), webhookSignatureScheme)
			if !ok {
				continue
			}
			found = true
			if got, err := hex.DecodeString(sig); err == nil && hmac.Equal(got, want) {
				match = true
			}
		}
	}
	if !found {
		return fmt.Errorf("%w: no %s signature in %s", ErrWebhookUnsigned, strings.TrimSuffix(webhookSignatureScheme, "="), WebhookSignatureHeader)
	}
	if !match {
		return ErrWebhookSignature
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %s %q is not Unix seconds", ErrWebhookTimestamp, WebhookTimestampHeader, ts)
	}
	if skew := now.Sub(time.Unix(sec, 0)); skew > maxSkew || skew < -maxSkew {
		return fmt.Errorf("%w: signed %v from the local clock, at most %v allowed", ErrWebhookTimestamp, skew.Round(time.Second), maxSkew)
	}
	if keys := h.Values(IdempotencyKeyHeader); len(keys) > 0 {
		var b struct {
			Call struct {
				IdempotencyKey string `json:"idempotency_key"`
			} `json:"call"`
		}
		if len(keys) > 1 {
			return fmt.Errorf("%w: %d %s headers", ErrWebhookKeyMismatch, len(keys), IdempotencyKeyHeader)
		}
		if err := json.Unmarshal(body, &b); err != nil || b.Call.IdempotencyKey != keys[0] {
			return ErrWebhookKeyMismatch
		}
	}
	return nil
}

// The JSON of the requests and responses mirrors the messages of
// backend.proto, field for field and with their names, except that
// conn_id is a decimal string (as in proto's own JSON mapping: a JSON
// number loses precision past 2⁵³), claims and params are embedded JSON,
// payloads are webhookPayload, and enums are the lower-case names of
// their values without the prefix ("disconnected", "normal").

// webhookPayload is a payload on the wire: data is the JSON value itself,
// or, when binary, a base64 string (standard alphabet, padded). Missing
// or empty data is {} (or no bytes, when binary).
type webhookPayload struct {
	Data   json.RawMessage `json:"data"`
	Binary bool            `json:"binary"`
}

type webhookCall struct {
	NodeID         string          `json:"node_id"`
	ConnID         string          `json:"conn_id"`
	PlayerID       string          `json:"player_id"`
	Claims         json.RawMessage `json:"claims"`
	Params         json.RawMessage `json:"params"`
	Topic          string          `json:"topic"`
	Event          string          `json:"event"`
	JoinRef        string          `json:"join_ref"`
	Ref            string          `json:"ref"`
	Payload        webhookPayload  `json:"payload"`
	IdempotencyKey string          `json:"idempotency_key"`
}

// rejoinConnID is a rejoin's previous connection id as a decimal string
// ("" when none), as conn_id is written.
func rejoinConnID(id uint64) string {
	if id == 0 {
		return ""
	}
	return strconv.FormatUint(id, 10)
}

type webhookJoinRequest struct {
	Call           webhookCall `json:"call"`
	ResumePosition string      `json:"resume_position"`
	Recoverable    bool        `json:"recoverable"`
	Rejoin         bool        `json:"rejoin"`
	RejoinConnID   string      `json:"rejoin_conn_id,omitempty"` // decimal, like conn_id
	RejoinJoinRef  string      `json:"rejoin_join_ref,omitempty"`
}

type webhookHandleInRequest struct {
	Call webhookCall `json:"call"`
}

type webhookLeaveRequest struct {
	Call   webhookCall `json:"call"`
	Reason string      `json:"reason"`
}

// webhookResponse is JoinResponse and HandleInResponse in one (the join
// only fields are ignored on handle_in).
type webhookResponse struct {
	Reply            *webhookReply    `json:"reply"`
	Broadcasts       []webhookMessage `json:"broadcasts"`
	Pushes           []webhookMessage `json:"pushes"`
	Stop             string           `json:"stop"`
	PresenceMeta     json.RawMessage  `json:"presence_meta"`
	SnapshotPosition string           `json:"snapshot_position"`
}

type webhookReply struct {
	Status   string          `json:"status"`
	Response *webhookPayload `json:"response"`
}

// webhookMessage is a Broadcast or a Push (whose topic is ignored).
type webhookMessage struct {
	Topic   string          `json:"topic"`
	Event   string          `json:"event"`
	Payload *webhookPayload `json:"payload"`
}

var jsonEmptyObject = json.RawMessage(`{}`)

func toWebhookCall(c *Call) webhookCall {
	params := json.RawMessage(c.Params)
	if len(params) == 0 {
		params = jsonEmptyObject
	}
	var claims json.RawMessage
	if len(c.Claims) > 0 {
		claims = c.Claims
	}
	return webhookCall{
		NodeID:         c.NodeID,
		ConnID:         strconv.FormatUint(c.ConnID, 10),
		PlayerID:       c.PlayerID,
		Claims:         claims,
		Params:         params,
		Topic:          c.Topic,
		Event:          c.Event,
		JoinRef:        c.JoinRef,
		Ref:            c.Ref,
		Payload:        toWebhookPayload(c.Payload),
		IdempotencyKey: c.IdempotencyKey,
	}
}

func toWebhookPayload(p Payload) webhookPayload {
	if p.Binary {
		b := make([]byte, 0, base64.StdEncoding.EncodedLen(len(p.Data))+2)
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, p.Data)
		b = append(b, '"')
		return webhookPayload{Data: b, Binary: true}
	}
	if len(p.Data) == 0 {
		return webhookPayload{Data: jsonEmptyObject}
	}
	return webhookPayload{Data: p.Data}
}

// webhookLeaveReason names a reason as backend.proto does, so that both
// engines tell a game the same thing: "left", "timeout", "unspecified"….
func webhookLeaveReason(r LeaveReason) string {
	return strings.ToLower(strings.TrimPrefix(toProtoLeaveReason(r).String(), "LEAVE_REASON_"))
}

// encodeWebhook marshals a request. Embedded JSON (payloads, claims,
// params) is checked and compacted, never HTML-escaped.
func encodeWebhook(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encoding the request: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// decodeWebhookReply reads a join (join set) or handle_in response: a
// JSON object whose fields have the types of webhookResponse; unknown
// fields are ignored. A broadcast or push without an event, a binary
// payload that is not base64 or a presence_meta that is not an object
// breaks the contract.
func decodeWebhookReply(body []byte, join bool) (*Reply, error) {
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return nil, errors.New("the response is not a JSON object")
	}
	var resp webhookResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, err
	}
	r := &Reply{Stop: fromWebhookStop(resp.Stop)}
	var err error
	if resp.Reply != nil {
		r.Status = resp.Reply.Status
		if r.Response, err = fromWebhookPayload(resp.Reply.Response); err != nil {
			return nil, fmt.Errorf("reply response: %w", err)
		}
	}
	if len(resp.Broadcasts) > 0 {
		r.Broadcasts = make([]Message, len(resp.Broadcasts))
		for i, b := range resp.Broadcasts {
			if b.Event == "" {
				return nil, fmt.Errorf("broadcast %d has no event", i)
			}
			r.Broadcasts[i] = Message{Topic: b.Topic, Event: b.Event}
			if r.Broadcasts[i].Payload, err = fromWebhookPayload(b.Payload); err != nil {
				return nil, fmt.Errorf("broadcast %d: %w", i, err)
			}
		}
	}
	if len(resp.Pushes) > 0 {
		r.Pushes = make([]Message, len(resp.Pushes))
		for i, p := range resp.Pushes {
			if p.Event == "" {
				return nil, fmt.Errorf("push %d has no event", i)
			}
			r.Pushes[i] = Message{Event: p.Event}
			if r.Pushes[i].Payload, err = fromWebhookPayload(p.Payload); err != nil {
				return nil, fmt.Errorf("push %d: %w", i, err)
			}
		}
	}
	if join {
		if m := resp.PresenceMeta; len(m) > 0 && string(m) != "null" {
			if m[0] != '{' {
				return nil, errors.New("presence_meta is not a JSON object")
			}
			r.PresenceMeta = m
		}
		r.SnapshotPosition = resp.SnapshotPosition
	}
	return r, nil
}

func fromWebhookPayload(p *webhookPayload) (Payload, error) {
	switch {
	case p == nil:
		return Payload{}, nil
	case !p.Binary:
		return Payload{Data: p.Data}, nil
	case len(p.Data) == 0:
		return Payload{Binary: true}, nil
	}
	var s string
	if err := json.Unmarshal(p.Data, &s); err != nil {
		return Payload{}, errors.New("binary data is not a base64 string")
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return Payload{}, fmt.Errorf("binary data: %w", err)
	}
	if len(b) == 0 {
		b = nil
	}
	return Payload{Data: b, Binary: true}, nil
}

// fromWebhookStop reads a stop: "none", "normal" or "error" (STOP_NONE,
// STOP_NORMAL, STOP_ERROR); missing or a value this version does not
// know keeps the channel, as the contract says.
func fromWebhookStop(s string) Stop {
	switch s {
	case "normal":
		return StopNormal
	case "error":
		return StopCrash
	default:
		return StopNone
	}
}

var (
	_ Backend   = (*Webhook)(nil)
	_ io.Closer = (*Webhook)(nil)
)
