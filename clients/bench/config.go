package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Bounds and defaults.
const (
	// MaxConns bounds -conns: past this a single client process runs out of
	// ephemeral ports per source address long before the gateway is tested.
	MaxConns = 500_000
	// DefaultConns is the DESIGN.md §3 measurement size.
	DefaultConns = 15_000
	// DefaultCheckpoint measures every this many connections.
	DefaultCheckpoint = 2_500
	// DefaultRate is the ramp rate in connections per second.
	DefaultRate = 2_000
	// DefaultConcurrency bounds dials in flight.
	DefaultConcurrency = 64
	// DefaultSettle is the pause before a measurement, so the gateway's
	// handshake buffers are released and the sweep has run.
	DefaultSettle = 2 * time.Second
	// DefaultTimeout bounds the whole run.
	DefaultTimeout = 10 * time.Minute
	// DefaultHeartbeat is below the gateway's 60 s idle timeout.
	DefaultHeartbeat = 25 * time.Second
	// DefaultDialTimeout bounds one dial, handshake and join reply.
	DefaultDialTimeout = 10 * time.Second
	// maxPortsPerIP is a conservative count of ephemeral ports one source
	// address can use towards one destination.
	maxPortsPerIP = 28_000
)

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("bench: config")

// Config of one run.
type Config struct {
	// URL is the gateway's WebSocket endpoint (ws://host:port/socket/websocket);
	// vsn=2.0.0 is appended.
	URL string
	// Admin is the gateway's admin base URL (http://host:port); empty skips
	// measurements (connections are still opened and held).
	Admin string
	// Topic every connection joins.
	Topic string
	// JoinPayload is the JSON join payload; empty means {}.
	JoinPayload string
	// Conns is the number of connections to open; must be 1..MaxConns.
	Conns int
	// Checkpoint measures every this many connections; 0 means
	// DefaultCheckpoint.
	Checkpoint int
	// Rate is the ramp rate in connections per second; 0 means DefaultRate.
	Rate float64
	// Concurrency bounds dials in flight; 0 means DefaultConcurrency.
	Concurrency int
	// Settle is the wait before each measurement; 0 means DefaultSettle.
	Settle time.Duration
	// Timeout bounds the whole run; 0 means DefaultTimeout.
	Timeout time.Duration
	// Heartbeat is the interval of heartbeats to every connection; 0 means
	// DefaultHeartbeat, negative disables them.
	Heartbeat time.Duration
	// DialTimeout bounds one dial plus join; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// LocalIPs are source addresses used round-robin (127.0.0.x spreads
	// connections past one address's ephemeral ports); empty lets the
	// kernel choose.
	LocalIPs []net.IP
}

// NewConfig returns the defaults.
func NewConfig() Config {
	return Config{
		URL:         "ws://127.0.0.1:4000/socket/websocket",
		Admin:       "http://127.0.0.1:4001",
		Topic:       "room:load",
		Conns:       DefaultConns,
		Checkpoint:  DefaultCheckpoint,
		Rate:        DefaultRate,
		Concurrency: DefaultConcurrency,
		Settle:      DefaultSettle,
		Timeout:     DefaultTimeout,
		Heartbeat:   DefaultHeartbeat,
		DialTimeout: DefaultDialTimeout,
	}
}

func (c *Config) fill() {
	d := NewConfig()
	orDefault(&c.Checkpoint, d.Checkpoint)
	orDefault(&c.Rate, d.Rate)
	orDefault(&c.Concurrency, d.Concurrency)
	orDefault(&c.Settle, d.Settle)
	orDefault(&c.Timeout, d.Timeout)
	orDefault(&c.Heartbeat, d.Heartbeat)
	orDefault(&c.DialTimeout, d.DialTimeout)
}

// Validate checks the configuration.
func (c Config) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return fmt.Errorf("%w: -url %q is not a ws:// URL", ErrConfig, c.URL)
	}
	if c.Admin != "" {
		a, err := url.Parse(c.Admin)
		if err != nil || (a.Scheme != "http" && a.Scheme != "https") || a.Host == "" {
			return fmt.Errorf("%w: -admin %q is not an http:// URL", ErrConfig, c.Admin)
		}
	}
	if c.Topic == "" || len(c.Topic) > 255 {
		return fmt.Errorf("%w: -topic must be 1..255 bytes", ErrConfig)
	}
	if c.Conns < 1 || c.Conns > MaxConns {
		return fmt.Errorf("%w: -conns %d out of 1..%d", ErrConfig, c.Conns, MaxConns)
	}
	ips := max(len(c.LocalIPs), 1)
	if c.Conns > ips*maxPortsPerIP {
		return fmt.Errorf("%w: %d conns need at least %d source addresses (-local-ips)", ErrConfig, c.Conns, (c.Conns+maxPortsPerIP-1)/maxPortsPerIP)
	}
	if c.Checkpoint < 0 || c.Rate < 0 || c.Concurrency < 0 || c.Settle < 0 || c.Timeout < 0 || c.DialTimeout < 0 {
		return fmt.Errorf("%w: negative -checkpoint, -rate, -concurrency, -settle, -timeout or -dial-timeout", ErrConfig)
	}
	return nil
}

// parseIPs reads a comma-separated list of IP addresses.
func parseIPs(s string) ([]net.IP, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []net.IP
	for _, f := range strings.Split(s, ",") {
		ip := net.ParseIP(strings.TrimSpace(f))
		if ip == nil {
			return nil, fmt.Errorf("%w: -local-ips: %q is not an IP", ErrConfig, f)
		}
		out = append(out, ip)
	}
	return out, nil
}
