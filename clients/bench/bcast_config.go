package main

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"time"
)

// Bounds and defaults of the broadcast scenario.
const (
	// MaxPerProcess bounds the subscribers one process holds: a process
	// may have at most 20,000 open files here, and each subscriber is one.
	MaxPerProcess = 15_000
	// MaxBroadcastSubs bounds -subs (tens of worker processes).
	MaxBroadcastSubs = 300_000
	// MaxBroadcastRate bounds -rate, events per second.
	MaxBroadcastRate = 100_000
	// MaxBroadcastEvents bounds the events of one run (the publisher keeps
	// a few bytes per event).
	MaxBroadcastEvents = 10_000_000
	// DefaultBroadcastSubs, DefaultBroadcastRate (events/s) and
	// DefaultBroadcastDuration: one process's worth of subscribers at a
	// chat-like rate.
	DefaultBroadcastSubs     = 1_000
	DefaultBroadcastRate     = 10
	DefaultBroadcastDuration = 10 * time.Second
	// DefaultPayloadBytes is the size of each broadcast's payload object.
	DefaultPayloadBytes = 300
	// DefaultBroadcastTopic and DefaultBroadcastEvent: the echo backend
	// broadcasts a "shout" push to the channel's topic.
	DefaultBroadcastTopic = "room:bench"
	DefaultBroadcastEvent = "shout"
	// DefaultRampRate is the subscribers dialled per second per process.
	DefaultRampRate = 3_000
	// DefaultBroadcastHeartbeat is under the gateway's 60 s idle timeout
	// but past a default run's length, so heartbeats do not land in the
	// publish window of a short run.
	DefaultBroadcastHeartbeat = 45 * time.Second
	// DefaultBaseline is the idle measurement of the server's CPU before
	// publishing.
	DefaultBaseline = 2 * time.Second
	// DefaultDrain: after the last publish, the run ends when everything
	// expected has arrived, or when nothing has for this long.
	DefaultDrain = 3 * time.Second
	// DefaultProgress is the interval of progress lines.
	DefaultProgress = time.Second
	// DefaultBroadcastTimeout bounds a whole run.
	DefaultBroadcastTimeout = 5 * time.Minute
)

// PublishConfig holds what the broadcast and rooms scenarios share: what
// is published and how fast, how the subscribers are held, and the run's
// bounds.
type PublishConfig struct {
	// Event is the push the publishers send and the broadcast the
	// subscribers expect; empty means DefaultBroadcastEvent.
	Event string
	// Rate is publishes per second in all, > 0 and ≤ MaxBroadcastRate.
	Rate float64
	// Duration of publishing; the run sends ceil(Rate × Duration) events.
	// Ignored when Count is set.
	Duration time.Duration
	// Count is the number of publishes; 0 means from Rate × Duration.
	Count int
	// PayloadBytes is the size of each payload object,
	// MinPayloadBytes..MaxPayloadBytes.
	PayloadBytes int
	// LocalIPs are loopback source addresses used round-robin; empty lets
	// the kernel choose.
	LocalIPs []net.IP
	// PerProcess is the most subscribers one process holds; past it the
	// run re-executes this binary as broadcast-worker children. 0 means
	// MaxPerProcess.
	PerProcess int
	// Loops is the number of epoll reader goroutines per process; 0 means
	// GOMAXPROCS.
	Loops int
	// RampRate is subscribers dialled per second per process; 0 means
	// DefaultRampRate.
	RampRate float64
	// Concurrency bounds dials in flight per process; 0 means
	// DefaultConcurrency.
	Concurrency int
	// DialTimeout bounds one dial plus its joins; 0 means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// Heartbeat is the subscribers' heartbeat interval; 0 means
	// DefaultBroadcastHeartbeat, negative disables them.
	Heartbeat time.Duration
	// Drain: after the last publish, stop when nothing arrived for this
	// long; 0 means DefaultDrain.
	Drain time.Duration
	// Progress is the interval of progress lines; 0 means
	// DefaultProgress, negative silences them.
	Progress time.Duration
	// Timeout bounds the whole run; 0 means the scenario's default.
	Timeout time.Duration
	// JSON prints one machine-readable line after the summary.
	JSON bool
}

// newPublishConfig returns the shared defaults with the scenario's rate,
// duration and timeout.
func newPublishConfig(rate float64, duration, timeout time.Duration) PublishConfig {
	return PublishConfig{
		Event:        DefaultBroadcastEvent,
		Rate:         rate,
		Duration:     duration,
		PayloadBytes: DefaultPayloadBytes,
		PerProcess:   MaxPerProcess,
		RampRate:     DefaultRampRate,
		Concurrency:  DefaultConcurrency,
		DialTimeout:  DefaultDialTimeout,
		Heartbeat:    DefaultBroadcastHeartbeat,
		Drain:        DefaultDrain,
		Progress:     DefaultProgress,
		Timeout:      timeout,
	}
}

// fill replaces zeros by defaults; timeout is the scenario's.
func (c *PublishConfig) fill(timeout time.Duration) {
	d := newPublishConfig(0, 0, timeout)
	orDefault(&c.PerProcess, d.PerProcess)
	orDefault(&c.Loops, runtime.GOMAXPROCS(0))
	orDefault(&c.RampRate, d.RampRate)
	orDefault(&c.Concurrency, d.Concurrency)
	orDefault(&c.DialTimeout, d.DialTimeout)
	orDefault(&c.Heartbeat, d.Heartbeat)
	orDefault(&c.Drain, d.Drain)
	orDefault(&c.Progress, d.Progress)
	orDefault(&c.Timeout, d.Timeout)
	orDefault(&c.Event, d.Event)
}

// events is the number of publishes of the run.
func (c PublishConfig) events() int {
	return runOps(c.Count, c.Rate, c.Duration)
}

// validate checks the shared settings for subs subscribers plus conns
// more connections (the publishers), as many as the sources allow.
func (c PublishConfig) validate(subs, conns int) error {
	if err := validateLocalIPs(c.LocalIPs); err != nil {
		return err
	}
	if err := validateEvent(c.Event); err != nil {
		return err
	}
	if ips := max(len(c.LocalIPs), 1); subs+conns > ips*maxPortsPerIP {
		return fmt.Errorf("%w: %d subscribers need at least %d source addresses (-local-ips)", ErrConfig, subs, (subs+conns+maxPortsPerIP-1)/maxPortsPerIP)
	}
	if !(c.Rate > 0) || c.Rate > MaxBroadcastRate {
		return fmt.Errorf("%w: -rate %v out of (0, %d]", ErrConfig, c.Rate, MaxBroadcastRate)
	}
	if err := validateLength(c.Count, c.Duration); err != nil {
		return err
	}
	if n := c.events(); n < 1 || n > MaxBroadcastEvents {
		return fmt.Errorf("%w: %d events out of 1..%d", ErrConfig, n, MaxBroadcastEvents)
	}
	if err := validatePayload(c.PayloadBytes); err != nil {
		return err
	}
	if err := validatePerProcess(c.PerProcess); err != nil {
		return err
	}
	if c.Loops < 0 || c.Loops > 256 {
		return fmt.Errorf("%w: -loops %d out of 0..256", ErrConfig, c.Loops)
	}
	if c.RampRate < 0 || c.Concurrency < 0 || c.DialTimeout < 0 || c.Drain < 0 || c.Timeout < 0 {
		return fmt.Errorf("%w: negative -ramp-rate, -concurrency, -dial-timeout, -drain or -timeout", ErrConfig)
	}
	return nil
}

// flags registers the shared flags on fs; call the returned function
// after fs.Parse to read -local-ips.
func (c *PublishConfig) flags(fs *flag.FlagSet) func() error {
	fs.StringVar(&c.Event, "event", c.Event, "event the publishers push and subscribers receive")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "publishes per second in all")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "publishing time (events = ceil(rate × duration))")
	fs.IntVar(&c.Count, "count", 0, "publishes (overrides -duration)")
	fs.IntVar(&c.PayloadBytes, "payload", c.PayloadBytes, fmt.Sprintf("payload object size in bytes (%d..%d)", MinPayloadBytes, MaxPayloadBytes))
	fs.IntVar(&c.PerProcess, "per-process", c.PerProcess, fmt.Sprintf("most subscribers per process (max %d)", MaxPerProcess))
	fs.IntVar(&c.Loops, "loops", 0, "epoll reader goroutines per process (0: GOMAXPROCS)")
	fs.Float64Var(&c.RampRate, "ramp-rate", c.RampRate, "subscribers dialled per second per process")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "dials in flight per process")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", c.DialTimeout, "bound on one dial plus its joins")
	fs.DurationVar(&c.Heartbeat, "heartbeat", c.Heartbeat, "subscribers' heartbeat interval; negative disables")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "after publishing, stop when nothing arrived for this long")
	fs.DurationVar(&c.Progress, "progress", c.Progress, "progress line interval; negative silences")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "bound on the whole run")
	fs.BoolVar(&c.JSON, "json", false, "print one JSON line after the summary")
	ips := fs.String("local-ips", "", "comma-separated loopback source addresses used round-robin")
	return func() error {
		var err error
		c.LocalIPs, err = parseIPs(*ips)
		return err
	}
}

// groupSpec is the part of a group's spec these settings decide.
func (c PublishConfig) groupSpec() groupSpec {
	ips := make([]string, len(c.LocalIPs))
	for i, ip := range c.LocalIPs {
		ips[i] = ip.String()
	}
	return groupSpec{
		Event: c.Event, LocalIPs: ips,
		Loops: c.Loops, RampRate: c.RampRate, Concurrency: c.Concurrency,
		DialTimeout: c.DialTimeout, Heartbeat: c.Heartbeat,
	}
}

// BroadcastConfig configures the broadcast scenario.
type BroadcastConfig struct {
	// URL is the server's WebSocket endpoint; its host must be a loopback
	// address (or "localhost"). vsn=2.0.0 is appended.
	URL string
	// Topic every connection joins.
	Topic string
	// Subs is the number of subscribers, 1..MaxBroadcastSubs.
	Subs int
	// ServerPID is the server process whose CPU is measured; 0 skips it.
	ServerPID int
	// Baseline is how long the idle server's CPU is measured before
	// publishing; 0 skips it.
	Baseline time.Duration
	PublishConfig
}

// NewBroadcastConfig returns the defaults.
func NewBroadcastConfig() BroadcastConfig {
	return BroadcastConfig{
		URL:           "ws://127.0.0.1:4000/socket/websocket",
		Topic:         DefaultBroadcastTopic,
		Subs:          DefaultBroadcastSubs,
		Baseline:      DefaultBaseline,
		PublishConfig: newPublishConfig(DefaultBroadcastRate, DefaultBroadcastDuration, DefaultBroadcastTimeout),
	}
}

func (c *BroadcastConfig) fill() { c.PublishConfig.fill(DefaultBroadcastTimeout) }

// Validate checks the configuration; it refuses any target or source that
// is not a loopback address.
func (c BroadcastConfig) Validate() error {
	if err := validateWSURL("-url", c.URL); err != nil {
		return err
	}
	if c.Topic == "" || len(c.Topic) > 255 {
		return fmt.Errorf("%w: -topic must be 1..255 bytes", ErrConfig)
	}
	if c.Subs < 1 || c.Subs > MaxBroadcastSubs {
		return fmt.Errorf("%w: -subs %d out of 1..%d", ErrConfig, c.Subs, MaxBroadcastSubs)
	}
	if c.ServerPID < 0 {
		return fmt.Errorf("%w: -server-pid must be ≥ 0", ErrConfig)
	}
	if c.Baseline < 0 {
		return fmt.Errorf("%w: negative -baseline", ErrConfig)
	}
	// The publisher is one more connection.
	return c.PublishConfig.validate(c.Subs, 1)
}

// validateWSURL refuses anything but a ws:// URL to a loopback host.
func validateWSURL(flag, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return fmt.Errorf("%w: %s %q is not a ws:// URL", ErrConfig, flag, raw)
	}
	if !isLoopbackHost(u.Hostname()) {
		return fmt.Errorf("%w: %s host %q is not a loopback address", ErrConfig, flag, u.Hostname())
	}
	return nil
}

// isLoopbackHost accepts "localhost" and loopback IP literals only; other
// names are refused rather than resolved.
func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (c BroadcastConfig) shared() PublishConfig { return c.PublishConfig }

// specs splits the subscribers over processes of at most PerProcess each,
// as evenly as possible. Call after fill.
func (c BroadcastConfig) specs() []groupSpec {
	base := c.groupSpec()
	base.URL, base.Topic = c.URL, c.Topic
	return splitSpecs(base, c.Subs, c.PerProcess)
}

// splitSpecs copies base into specs of at most perProcess of the subs
// subscribers each, as evenly as possible.
func splitSpecs(base groupSpec, subs, perProcess int) []groupSpec {
	n := (subs + perProcess - 1) / perProcess
	out := make([]groupSpec, n)
	first := 0
	for i := range out {
		out[i] = base
		out[i].Subs = subs / n
		if i < subs%n {
			out[i].Subs++
		}
		out[i].FirstIndex = first
		first += out[i].Subs
	}
	return out
}
