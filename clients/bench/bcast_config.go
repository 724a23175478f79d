package main

import (
	"fmt"
	"math"
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

// BroadcastConfig configures the broadcast scenario.
type BroadcastConfig struct {
	// URL is the server's WebSocket endpoint; its host must be a loopback
	// address (or "localhost"). vsn=2.0.0 is appended.
	URL string
	// Topic every connection joins; Event is the push the publisher sends
	// and the broadcast the subscribers expect.
	Topic string
	Event string
	// Subs is the number of subscribers, 1..MaxBroadcastSubs.
	Subs int
	// Rate is publishes per second, > 0 and ≤ MaxBroadcastRate.
	Rate float64
	// Duration of publishing; the run sends ceil(Rate × Duration) events.
	// Ignored when Count is set.
	Duration time.Duration
	// Count is the number of publishes; 0 means from Rate × Duration.
	Count int
	// PayloadBytes is the size of each payload object,
	// MinPayloadBytes..MaxPayloadBytes.
	PayloadBytes int
	// ServerPID is the server process whose CPU is measured; 0 skips it.
	ServerPID int
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
	// DialTimeout bounds one dial plus join; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// Heartbeat is the subscribers' heartbeat interval; 0 means
	// DefaultBroadcastHeartbeat, negative disables them.
	Heartbeat time.Duration
	// Baseline is how long the idle server's CPU is measured before
	// publishing; 0 skips it.
	Baseline time.Duration
	// Drain: after the last publish, stop when nothing arrived for this
	// long; 0 means DefaultDrain.
	Drain time.Duration
	// Progress is the interval of progress lines; 0 means
	// DefaultProgress, negative silences them.
	Progress time.Duration
	// Timeout bounds the whole run; 0 means DefaultBroadcastTimeout.
	Timeout time.Duration
	// JSON prints one machine-readable line after the summary.
	JSON bool
}

// NewBroadcastConfig returns the defaults.
func NewBroadcastConfig() BroadcastConfig {
	return BroadcastConfig{
		URL:          "ws://127.0.0.1:4000/socket/websocket",
		Topic:        DefaultBroadcastTopic,
		Event:        DefaultBroadcastEvent,
		Subs:         DefaultBroadcastSubs,
		Rate:         DefaultBroadcastRate,
		Duration:     DefaultBroadcastDuration,
		PayloadBytes: DefaultPayloadBytes,
		PerProcess:   MaxPerProcess,
		RampRate:     DefaultRampRate,
		Concurrency:  DefaultConcurrency,
		DialTimeout:  DefaultDialTimeout,
		Heartbeat:    DefaultBroadcastHeartbeat,
		Baseline:     DefaultBaseline,
		Drain:        DefaultDrain,
		Progress:     DefaultProgress,
		Timeout:      DefaultBroadcastTimeout,
	}
}

func (c *BroadcastConfig) fill() {
	d := NewBroadcastConfig()
	if c.PerProcess == 0 {
		c.PerProcess = d.PerProcess
	}
	if c.Loops == 0 {
		c.Loops = runtime.GOMAXPROCS(0)
	}
	if c.RampRate == 0 {
		c.RampRate = d.RampRate
	}
	if c.Concurrency == 0 {
		c.Concurrency = d.Concurrency
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = d.DialTimeout
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = d.Heartbeat
	}
	if c.Drain == 0 {
		c.Drain = d.Drain
	}
	if c.Progress == 0 {
		c.Progress = d.Progress
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.Event == "" {
		c.Event = d.Event
	}
}

// events is the number of publishes of the run.
func (c BroadcastConfig) events() int {
	if c.Count > 0 {
		return c.Count
	}
	return int(math.Ceil(c.Rate * c.Duration.Seconds()))
}

// Validate checks the configuration; it refuses any target or source that
// is not a loopback address.
func (c BroadcastConfig) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return fmt.Errorf("%w: -url %q is not a ws:// URL", ErrConfig, c.URL)
	}
	if !isLoopbackHost(u.Hostname()) {
		return fmt.Errorf("%w: -url host %q is not a loopback address", ErrConfig, u.Hostname())
	}
	for _, ip := range c.LocalIPs {
		if !ip.IsLoopback() {
			return fmt.Errorf("%w: -local-ips: %s is not a loopback address", ErrConfig, ip)
		}
	}
	if c.Topic == "" || len(c.Topic) > 255 || c.Event == "" || len(c.Event) > 255 {
		return fmt.Errorf("%w: -topic and -event must be 1..255 bytes", ErrConfig)
	}
	if c.Subs < 1 || c.Subs > MaxBroadcastSubs {
		return fmt.Errorf("%w: -subs %d out of 1..%d", ErrConfig, c.Subs, MaxBroadcastSubs)
	}
	// The publisher is one more connection.
	if ips := max(len(c.LocalIPs), 1); c.Subs+1 > ips*maxPortsPerIP {
		return fmt.Errorf("%w: %d subscribers need at least %d source addresses (-local-ips)", ErrConfig, c.Subs, (c.Subs+maxPortsPerIP)/maxPortsPerIP)
	}
	if !(c.Rate > 0) || c.Rate > MaxBroadcastRate {
		return fmt.Errorf("%w: -rate %v out of (0, %d]", ErrConfig, c.Rate, MaxBroadcastRate)
	}
	if c.Count < 0 || c.Duration < 0 || (c.Count == 0 && c.Duration == 0) {
		return fmt.Errorf("%w: -duration or -count must be > 0", ErrConfig)
	}
	if n := c.events(); n < 1 || n > MaxBroadcastEvents {
		return fmt.Errorf("%w: %d events out of 1..%d", ErrConfig, n, MaxBroadcastEvents)
	}
	if c.PayloadBytes < MinPayloadBytes || c.PayloadBytes > MaxPayloadBytes {
		return fmt.Errorf("%w: -payload %d out of %d..%d", ErrConfig, c.PayloadBytes, MinPayloadBytes, MaxPayloadBytes)
	}
	if c.ServerPID < 0 {
		return fmt.Errorf("%w: -server-pid must be ≥ 0", ErrConfig)
	}
	if c.PerProcess < 0 || c.PerProcess > MaxPerProcess {
		return fmt.Errorf("%w: -per-process %d out of 0..%d", ErrConfig, c.PerProcess, MaxPerProcess)
	}
	if c.Loops < 0 || c.Loops > 256 {
		return fmt.Errorf("%w: -loops %d out of 0..256", ErrConfig, c.Loops)
	}
	if c.RampRate < 0 || c.Concurrency < 0 || c.DialTimeout < 0 || c.Baseline < 0 || c.Drain < 0 || c.Timeout < 0 {
		return fmt.Errorf("%w: negative -ramp-rate, -concurrency, -dial-timeout, -baseline, -drain or -timeout", ErrConfig)
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

// specs splits the subscribers over processes of at most PerProcess each,
// as evenly as possible. Call after fill.
func (c BroadcastConfig) specs() []groupSpec {
	n := (c.Subs + c.PerProcess - 1) / c.PerProcess
	ips := make([]string, len(c.LocalIPs))
	for i, ip := range c.LocalIPs {
		ips[i] = ip.String()
	}
	out := make([]groupSpec, n)
	first := 0
	for i := range out {
		subs := c.Subs / n
		if i < c.Subs%n {
			subs++
		}
		out[i] = groupSpec{
			URL: c.URL, Topic: c.Topic, Event: c.Event,
			Subs: subs, FirstIndex: first, LocalIPs: ips,
			Loops: c.Loops, RampRate: c.RampRate, Concurrency: c.Concurrency,
			DialTimeout: c.DialTimeout, Heartbeat: c.Heartbeat,
		}
		first += subs
	}
	return out
}
