package backends

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// This file holds what the remote engines (gRPC, webhook) share: the
// bounds of their common options and the option parser, and the call path
// every call goes through — deadline, circuit breaker, bulkhead, retries
// with backoff — with its counters and Prometheus collector.

// Bounds of the options the remote engines share. Past them a spec is
// refused rather than clamped, so a typo cannot silently turn a limit off.
const (
	minCallTimeout     = time.Millisecond
	maxCallTimeout     = 5 * time.Minute
	maxInflightBound   = 1 << 16
	maxQueueBound      = 1 << 20
	maxRetriesBound    = 10
	minBackoff         = time.Millisecond
	maxBackoff         = 10 * time.Second
	maxBreakerFailures = 1 << 16
	minBreakerCooldown = time.Millisecond
	maxBreakerCooldown = time.Hour
	minMessageBound    = 1 << 10
	maxMessageBound    = 64 << 20
	// A retry waits at most this many times the backoff option.
	backoffCapFactor = 8
)

// Names of the calls, as in CallError.Op.
const (
	opJoin     = "join"
	opHandleIn = "handle_in"
	opLeave    = "leave"
)

var (
	// ErrBadSpec is returned by New for a backend spec an engine claims but
	// cannot accept (a bad URL, an unknown option, a value out of range).
	ErrBadSpec = errors.New("backends: bad backend spec")
	// ErrCircuitOpen is the cause of an ErrUnavailable failure that was
	// never sent because the backend's circuit breaker is open.
	ErrCircuitOpen = errors.New("backends: circuit open")
	// ErrClosed is the cause of an ErrUnavailable failure of a call made
	// on, or cut short by, a closed engine.
	ErrClosed = errors.New("backends: backend closed")

	errQueueFull = errors.New("calls in flight and waiting at their caps")
	errQueueWait = errors.New("no call slot freed before the deadline")
	errMalformed = errors.New("malformed response")
	errNilCall   = errors.New("nil call")
)

// CallLimits are the options every remote engine has (GRPCConfig and
// WebhookConfig embed them), checked by check and enforced by runner.
type CallLimits struct {
	// Timeout bounds each call, retries and any wait for a slot included,
	// on top of the caller's own deadline. Must be > 0.
	Timeout time.Duration
	// MaxInflight caps the calls sent and not yet answered (for webhooks,
	// also the connections to the game). Must be > 0.
	MaxInflight int
	// MaxQueue caps the calls waiting for a slot; past it a call fails at
	// once with ErrOverloaded. Zero means no waiting at all.
	MaxQueue int
	// Retries is how many times a call the game was unavailable for is
	// sent again (same request, same idempotency key). Zero: never.
	Retries int
	// Backoff is the base wait before a retry; the n-th retry waits a
	// random time between half and all of Backoff·2ⁿ⁻¹ (at most 8·Backoff),
	// and is not made when the deadline would pass first. Must be > 0.
	Backoff time.Duration
	// BreakerFailures consecutive calls failing as unavailable or timed
	// out open the circuit breaker. Must be > 0.
	BreakerFailures int
	// BreakerCooldown is how long an open breaker fails calls fast before
	// it lets one probe through. Must be > 0.
	BreakerCooldown time.Duration
	// MaxMessage caps the size in bytes of a request and of a response.
	// Must be > 0.
	MaxMessage int
}

// check reports the first limit out of its bounds, naming it by its URL
// option, with an error wrapping ErrBadSpec.
func (l CallLimits) check(engine string) error {
	checks := []struct {
		name   string
		ok     bool
		val    any
		bounds string
	}{
		{"timeout", l.Timeout >= minCallTimeout && l.Timeout <= maxCallTimeout, l.Timeout, fmt.Sprintf("%v..%v", minCallTimeout, maxCallTimeout)},
		{"max_inflight", l.MaxInflight >= 1 && l.MaxInflight <= maxInflightBound, l.MaxInflight, fmt.Sprintf("1..%d", maxInflightBound)},
		{"max_queue", l.MaxQueue >= 0 && l.MaxQueue <= maxQueueBound, l.MaxQueue, fmt.Sprintf("0..%d", maxQueueBound)},
		{"retries", l.Retries >= 0 && l.Retries <= maxRetriesBound, l.Retries, fmt.Sprintf("0..%d", maxRetriesBound)},
		{"backoff", l.Backoff >= minBackoff && l.Backoff <= maxBackoff, l.Backoff, fmt.Sprintf("%v..%v", minBackoff, maxBackoff)},
		{"breaker_failures", l.BreakerFailures >= 1 && l.BreakerFailures <= maxBreakerFailures, l.BreakerFailures, fmt.Sprintf("1..%d", maxBreakerFailures)},
		{"breaker_cooldown", l.BreakerCooldown >= minBreakerCooldown && l.BreakerCooldown <= maxBreakerCooldown, l.BreakerCooldown, fmt.Sprintf("%v..%v", minBreakerCooldown, maxBreakerCooldown)},
		{"max_message", l.MaxMessage >= minMessageBound && l.MaxMessage <= maxMessageBound, l.MaxMessage, fmt.Sprintf("%d..%d", minMessageBound, maxMessageBound)},
	}
	for _, ch := range checks {
		if !ch.ok {
			return fmt.Errorf("%w: %s option %q: %v is out of range %s", ErrBadSpec, engine, ch.name, ch.val, ch.bounds)
		}
	}
	return nil
}

// An option setter parses one URL query value into a field of config C.
type optionSetter[C any] func(c *C, v string) error

func durationOpt[C any](field func(*C) *time.Duration) optionSetter[C] {
	return func(c *C, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 3s or 250ms", v)
		}
		*field(c) = d
		return nil
	}
}

func intOpt[C any](field func(*C) *int) optionSetter[C] {
	return func(c *C, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not an integer", v)
		}
		*field(c) = n
		return nil
	}
}

func boolOpt[C any](field func(*C) *bool) optionSetter[C] {
	return func(c *C, v string) error {
		switch v {
		case "true":
			*field(c) = true
		case "false":
			*field(c) = false
		default:
			return fmt.Errorf("%q is not true or false", v)
		}
		return nil
	}
}

// applyOptions sets c's fields from a spec's query. An unknown option, one
// given twice or a value that does not parse is refused with an error
// wrapping ErrBadSpec that names it; options are applied in name order so
// the first one reported is always the same.
func applyOptions[C any](engine string, rawQuery string, options map[string]optionSetter[C], c *C) error {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return fmt.Errorf("%w: %s spec: query: %v", ErrBadSpec, engine, err)
	}
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		set, ok := options[name]
		if !ok {
			return fmt.Errorf("%w: %s option %q is unknown (known: %s)", ErrBadSpec, engine, name, knownOptions(options))
		}
		if vs := q[name]; len(vs) != 1 {
			return fmt.Errorf("%w: %s option %q is given %d times", ErrBadSpec, engine, name, len(vs))
		}
		if err := set(c, q.Get(name)); err != nil {
			return fmt.Errorf("%w: %s option %q: %v", ErrBadSpec, engine, name, err)
		}
	}
	return nil
}

func knownOptions[C any](options map[string]optionSetter[C]) string {
	names := make([]string, 0, len(options))
	for name := range options {
		names = append(names, name)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// BreakerState is the state of a circuit breaker.
type BreakerState int32

const (
	// BreakerClosed lets every call through.
	BreakerClosed BreakerState = iota
	// BreakerOpen fails every call fast until the cool-down has passed.
	BreakerOpen
	// BreakerHalfOpen lets one probe through; the others fail fast.
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half_open"
	default:
		return "BreakerState(" + strconv.Itoa(int(s)) + ")"
	}
}

// CallStats is a snapshot of a remote engine's counters (totals since it
// was built) and gauges.
type CallStats struct {
	// Outcomes of the calls made, one per call whatever its retries.
	OK, Unavailable, Timeouts, Overloaded, Errors uint64
	// Attempts counts the requests sent, first tries and retries.
	Attempts uint64
	// Retries counts the requests sent again after the backend was
	// unavailable.
	Retries uint64
	// Breaker is the breaker's state; BreakerOpens counts its openings;
	// BreakerRejected the calls it failed fast.
	Breaker         BreakerState
	BreakerOpens    uint64
	BreakerRejected uint64
	// BulkheadRejected counts the calls refused because MaxInflight calls
	// were in flight and MaxQueue waiting, or because no slot freed before
	// their deadline.
	BulkheadRejected uint64
	// InFlight is the calls holding a slot; Queued the calls waiting.
	InFlight, Queued int
}

// outcome is what a call tells the breaker.
type outcome uint8

const (
	// outcomeNeutral: nothing learnt about the backend (the caller gave
	// up, the call never went out).
	outcomeNeutral outcome = iota
	// outcomeSuccess: the backend answered, even with an error.
	outcomeSuccess
	// outcomeFailure: the backend could not be reached or did not answer.
	outcomeFailure
)

// runner is the call path of a remote engine: a deadline per call, the
// breaker, the bulkhead (MaxInflight slots and a queue of MaxQueue), and
// up to Retries resends of an attempt its engine classifies as
// ErrUnavailable, with backoff, all within the deadline. It counts every
// call's result. Safe for concurrent use.
type runner struct {
	lim CallLimits
	// classify maps an attempt's error to what it tells the breaker and
	// its class; only ErrUnavailable is retried.
	classify func(error) (outcome, error)
	br       breaker
	// slots holds one token per call in flight (cap MaxInflight).
	slots  chan struct{}
	queued atomic.Int64
	closed atomic.Bool

	ok, unavail, timeouts, overloaded, errs atomic.Uint64
	attempts, retries, bulkheadRejected     atomic.Uint64
}

func newRunner(lim CallLimits, now func() time.Time, classify func(error) (outcome, error)) *runner {
	return &runner{
		lim:      lim,
		classify: classify,
		br:       breaker{threshold: lim.BreakerFailures, cooldown: lim.BreakerCooldown, now: now},
		slots:    make(chan struct{}, lim.MaxInflight),
	}
}

// close makes every later call, and every call whose attempt fails from
// now on, fail with ErrUnavailable (cause ErrClosed).
func (r *runner) close() { r.closed.Store(true) }

// run runs one call: breaker, bulkhead, then up to 1+Retries attempts,
// all within the call's deadline. It returns nil or a counted *CallError;
// a nil result is counted by the caller (succeeded or malformed) once the
// response is checked.
func (r *runner) run(ctx context.Context, op string, attempt func(context.Context) error) error {
	if r.closed.Load() {
		return r.fail(&CallError{Op: op, Kind: ErrUnavailable, Err: ErrClosed})
	}
	if err := ctx.Err(); err != nil {
		// The caller gave up before the call began: nothing to tell the
		// breaker about the backend.
		kind := ErrBackend
		if errors.Is(err, context.DeadlineExceeded) {
			kind = ErrTimeout
		}
		return r.fail(&CallError{Op: op, Kind: kind, Err: err})
	}
	ctx, cancel := context.WithTimeout(ctx, r.lim.Timeout)
	defer cancel()
	// A Leave is never failed fast by the breaker: a seat left open on the
	// game (a player counted at a table for ever) costs more than one call
	// to a backend that may be down; it still has its deadline.
	bypass := op == opLeave
	var tk ticket
	if !bypass {
		var ok bool
		if tk, ok = r.br.allow(); !ok {
			return r.fail(&CallError{Op: op, Kind: ErrUnavailable, Err: ErrCircuitOpen})
		}
	}
	done := func(out outcome) {
		if !bypass {
			r.br.done(tk, out)
		}
	}
	if err := r.acquire(ctx); err != nil {
		done(outcomeNeutral)
		r.bulkheadRejected.Add(1)
		return r.fail(&CallError{Op: op, Kind: ErrOverloaded, Err: err})
	}
	defer func() { <-r.slots }()
	var (
		err  error
		out  outcome
		kind error
	)
	for n := 0; ; n++ {
		r.attempts.Add(1)
		err = attempt(ctx)
		out, kind = r.classify(err)
		if err == nil || n == r.lim.Retries || kind != ErrUnavailable || r.closed.Load() {
			break
		}
		if !r.wait(ctx, n) {
			break
		}
		r.retries.Add(1)
	}
	if r.closed.Load() && kind != nil {
		kind, out, err = ErrUnavailable, outcomeNeutral, errors.Join(ErrClosed, err)
	}
	done(out)
	if kind == nil {
		return nil
	}
	return r.fail(&CallError{Op: op, Kind: kind, Err: err})
}

// acquire takes a slot, waiting in the bounded queue when none is free.
func (r *runner) acquire(ctx context.Context) error {
	select {
	case r.slots <- struct{}{}:
		return nil
	default:
	}
	if r.queued.Add(1) > int64(r.lim.MaxQueue) {
		r.queued.Add(-1)
		return errQueueFull
	}
	defer r.queued.Add(-1)
	select {
	case r.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", errQueueWait, ctx.Err())
	}
}

// wait sleeps before retry n+1 and reports whether it should be made: not
// when the deadline would pass first.
func (r *runner) wait(ctx context.Context, n int) bool {
	d := r.lim.Backoff << min(n, 3)
	if most := r.lim.Backoff * backoffCapFactor; d > most {
		d = most
	}
	d = d/2 + rand.N(d/2+1)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// fail counts a failed call by its class and returns it.
func (r *runner) fail(e *CallError) error {
	switch e.Kind {
	case ErrUnavailable:
		r.unavail.Add(1)
	case ErrTimeout:
		r.timeouts.Add(1)
	case ErrOverloaded:
		r.overloaded.Add(1)
	default:
		r.errs.Add(1)
	}
	return e
}

// succeeded counts a call whose response passed its checks.
func (r *runner) succeeded() { r.ok.Add(1) }

// malformed counts and returns the failure of a call whose response broke
// the contract.
func (r *runner) malformed(op string, err error) error {
	return r.fail(&CallError{Op: op, Kind: ErrBackend, Err: fmt.Errorf("%w: %w", errMalformed, err)})
}

func (r *runner) stats() CallStats {
	state, opens, rejected := r.br.stats()
	return CallStats{
		OK:               r.ok.Load(),
		Unavailable:      r.unavail.Load(),
		Timeouts:         r.timeouts.Load(),
		Overloaded:       r.overloaded.Load(),
		Errors:           r.errs.Load(),
		Attempts:         r.attempts.Load(),
		Retries:          r.retries.Load(),
		Breaker:          state,
		BreakerOpens:     opens,
		BreakerRejected:  rejected,
		BulkheadRejected: r.bulkheadRejected.Load(),
		InFlight:         len(r.slots),
		Queued:           int(r.queued.Load()),
	}
}

// breaker is a consecutive-failure circuit breaker. Every state change
// bumps gen; a call's result counts only against the state it was let
// through in, so a slow call from before an opening cannot close it.
type breaker struct {
	threshold int
	cooldown  time.Duration
	now       func() time.Time

	mu       sync.Mutex
	state    BreakerState
	gen      uint64
	failures int       // consecutive, while closed
	until    time.Time // while open: when a probe may go
	probing  bool      // while half-open: the probe is out
	opens    uint64
	rejected uint64
}

// ticket is what allow hands a call and done takes back.
type ticket struct {
	gen   uint64
	probe bool
}

// allow lets a call through, or refuses it while the breaker is open or
// its probe is out.
func (b *breaker) allow() (ticket, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerOpen:
		if b.now().Before(b.until) {
			b.rejected++
			return ticket{}, false
		}
		b.state = BreakerHalfOpen
		b.gen++
	case BreakerClosed:
		return ticket{gen: b.gen}, true
	}
	if b.probing {
		b.rejected++
		return ticket{}, false
	}
	b.probing = true
	return ticket{gen: b.gen, probe: true}, true
}

// done records a let-through call's outcome.
func (b *breaker) done(t ticket, o outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.gen != b.gen {
		return
	}
	if t.probe {
		b.probing = false
	}
	switch o {
	case outcomeSuccess:
		b.failures = 0
		if b.state != BreakerClosed {
			b.state = BreakerClosed
			b.gen++
		}
	case outcomeFailure:
		b.failures++
		if b.state == BreakerHalfOpen || b.failures >= b.threshold {
			b.state = BreakerOpen
			b.until = b.now().Add(b.cooldown)
			b.failures = 0
			b.gen++
			b.opens++
		}
	}
}

func (b *breaker) stats() (BreakerState, uint64, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, b.opens, b.rejected
}

// newCallCollector returns a Prometheus collector of an engine's
// CallStats under phxgate_backend_<engine>_*, its metrics carrying labels
// (say, the route), so that several engines can be registered side by
// side. Nothing is registered here.
func newCallCollector(engine string, stats func() CallStats, labels prometheus.Labels) prometheus.Collector {
	d := func(name, help string, varLabels ...string) *prometheus.Desc {
		return prometheus.NewDesc("phxgate_backend_"+engine+"_"+name, help, varLabels, labels)
	}
	return &callCollector{
		stats:     stats,
		calls:     d("calls_total", "Backend calls by result.", "result"),
		attempts:  d("attempts_total", "Requests sent to the backend, retries included."),
		retries:   d("retries_total", "Requests sent again after the backend was unavailable."),
		state:     d("breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open."),
		opens:     d("breaker_opens_total", "Times the circuit breaker opened."),
		bRejected: d("breaker_rejected_total", "Calls failed fast by the open circuit breaker."),
		hRejected: d("bulkhead_rejected_total", "Calls refused at the cap on calls in flight and waiting."),
		inflight:  d("inflight_calls", "Calls in flight."),
		queued:    d("queued_calls", "Calls waiting for a slot."),
	}
}

type callCollector struct {
	stats                                                        func() CallStats
	calls, attempts, retries, state, opens, bRejected, hRejected *prometheus.Desc
	inflight, queued                                             *prometheus.Desc
}

func (c *callCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.calls, c.attempts, c.retries, c.state, c.opens, c.bRejected, c.hRejected, c.inflight, c.queued} {
		ch <- d
	}
}

func (c *callCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter(c.calls, s.OK, "ok")
	counter(c.calls, s.Unavailable, "unavailable")
	counter(c.calls, s.Timeouts, "timeout")
	counter(c.calls, s.Overloaded, "overloaded")
	counter(c.calls, s.Errors, "error")
	counter(c.attempts, s.Attempts)
	counter(c.retries, s.Retries)
	gauge(c.state, float64(s.Breaker))
	counter(c.opens, s.BreakerOpens)
	counter(c.bRejected, s.BreakerRejected)
	counter(c.hRejected, s.BulkheadRejected)
	gauge(c.inflight, float64(s.InFlight))
	gauge(c.queued, float64(s.Queued))
}
