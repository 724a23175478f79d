package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"
)

// The churn, actions and resume scenarios share one configuration type:
// most of their settings are the same (target, sources, rate, count,
// processes, output), and one spec type travels to their worker
// processes.

// Scenario names.
const (
	scenChurn   = "churn"
	scenActions = "actions"
	scenResume  = "resume"
)

// Bounds and defaults of the churn, actions and resume scenarios.
const (
	// MaxScenRate bounds -rate (cycles, pushes or events per second).
	MaxScenRate = 100_000
	// MaxScenOps bounds the operations of one run (-count, or rate ×
	// duration): the pusher keeps 8 bytes per push.
	MaxScenOps = 10_000_000
	// MaxScenClients bounds -clients (tens of worker processes).
	MaxScenClients = 300_000
	// MaxScenProcs bounds -procs.
	MaxScenProcs = 64
	// MaxResumeRooms is the most rooms of a resume run: the publisher is
	// one socket, and a socket joins at most 100 channels.
	MaxResumeRooms = 100
	// MaxSeriesBuckets bounds the latency-over-time series (an hour at
	// the default interval).
	MaxSeriesBuckets = 3_600
	// DefaultScenDuration is the length of a default run.
	DefaultScenDuration = 10 * time.Second
	// DefaultScenTimeout bounds a whole run.
	DefaultScenTimeout = 3 * time.Minute
	// DefaultSeriesInterval is the width of one latency-over-time bucket.
	DefaultSeriesInterval = time.Second
	// DefaultStormEvery, DefaultStormFraction and DefaultStormJitter: a
	// resume run drops a fifth of its clients every second, and each
	// reconnects within 50 ms of its drop.
	DefaultStormEvery    = time.Second
	DefaultStormFraction = 0.2
	DefaultStormJitter   = 50 * time.Millisecond
	// DefaultResumeHeartbeat is under the gateway's 60 s idle timeout.
	DefaultResumeHeartbeat = 25 * time.Second
)

// ScenConfig configures a churn, actions or resume run. Zero values of
// the optional fields mean their defaults (fill).
type ScenConfig struct {
	// Scenario is scenChurn, scenActions or scenResume.
	Scenario string
	// URL is the gateway's WebSocket endpoint; its host must be a loopback
	// address. vsn=2.0.0 is appended.
	URL string
	// TopicPrefix names the rooms: <prefix><i> for i in 0..Rooms-1.
	TopicPrefix string
	// Rooms is the number of topics the clients spread over.
	Rooms int
	// Clients: actions and resume, the sockets held (each joined to one
	// room); churn, the most cycles in flight at once (per run).
	Clients int
	// Rate is cycles (churn), pushes (actions) or published events
	// (resume) per second in all, > 0 and ≤ MaxScenRate.
	Rate float64
	// Duration of the load; the run does ceil(Rate × Duration) operations
	// unless Count is set.
	Duration time.Duration
	// Count is the number of operations; 0 means from Rate × Duration.
	Count int
	// Event is the push of actions (default "echo", which the echo backend
	// answers with the payload) and resume ("shout", which it broadcasts).
	Event string
	// JoinPayload is the JSON object every join sends ({} when empty);
	// resume adds "offset".
	JoinPayload string
	// PayloadBytes is the size of each push's payload object.
	PayloadBytes int
	// Procs is the least number of processes; more are used when Clients
	// exceed PerProcess. 0 means 1.
	Procs int
	// PerProcess bounds the sockets of one process (≤ MaxPerProcess).
	PerProcess int
	// LocalIPs are loopback source addresses used round-robin.
	LocalIPs []net.IP
	// Concurrency bounds dials in flight per process (and, for churn, is
	// raised to the share of Clients).
	Concurrency int
	// RampRate is clients dialled per second per process (actions,
	// resume).
	RampRate float64
	// DialTimeout bounds one dial plus join (and one leave).
	DialTimeout time.Duration
	// Drain: after the last operation, wait this long without progress
	// before giving up on what is missing.
	Drain time.Duration
	// Heartbeat is the held sockets' heartbeat interval; negative
	// disables.
	Heartbeat time.Duration
	// StormEvery, StormFraction and StormJitter (resume): every StormEvery
	// while publishing, each process drops StormFraction of its clients
	// at once; each reconnects after a random wait up to StormJitter.
	StormEvery    time.Duration
	StormFraction float64
	StormJitter   time.Duration
	// Interval is the width of a latency-over-time bucket.
	Interval time.Duration
	// Progress is the interval of plain progress lines (a progress bar is
	// redrawn more often on a terminal); negative silences both.
	Progress time.Duration
	// Timeout bounds the whole run.
	Timeout time.Duration
	// Out is the directory of result.json, summary.md and the PNG plots;
	// empty writes none.
	Out string
	// JSON prints the result as one line after the summary.
	JSON bool
	// Command is the command line, recorded in the outputs.
	Command string
}

// NewScenConfig returns the defaults of scenario name.
func NewScenConfig(name string) ScenConfig {
	c := ScenConfig{
		Scenario:      name,
		URL:           "ws://127.0.0.1:4000/socket/websocket",
		TopicPrefix:   "room:bench-" + name + "-",
		Rooms:         10,
		Clients:       1_000,
		Duration:      DefaultScenDuration,
		Event:         "echo",
		PayloadBytes:  DefaultPayloadBytes,
		Procs:         1,
		PerProcess:    MaxPerProcess,
		Concurrency:   DefaultConcurrency,
		RampRate:      DefaultRampRate,
		DialTimeout:   DefaultDialTimeout,
		Drain:         DefaultDrain,
		Heartbeat:     DefaultResumeHeartbeat,
		StormEvery:    DefaultStormEvery,
		StormFraction: DefaultStormFraction,
		StormJitter:   DefaultStormJitter,
		Interval:      DefaultSeriesInterval,
		Progress:      DefaultProgress,
		Timeout:       DefaultScenTimeout,
	}
	switch name {
	case scenChurn:
		c.Rate, c.Clients = 500, DefaultConcurrency
	case scenActions:
		c.Rate = 2_000
	case scenResume:
		c.Rate, c.Event = 200, DefaultBroadcastEvent
	}
	return c
}

func (c *ScenConfig) fill() {
	d := NewScenConfig(c.Scenario)
	if c.Procs == 0 {
		c.Procs = 1
	}
	orDefault(&c.PerProcess, d.PerProcess)
	orDefault(&c.Concurrency, d.Concurrency)
	orDefault(&c.RampRate, d.RampRate)
	orDefault(&c.DialTimeout, d.DialTimeout)
	orDefault(&c.Drain, d.Drain)
	orDefault(&c.Heartbeat, d.Heartbeat)
	orDefault(&c.StormEvery, d.StormEvery)
	orDefault(&c.Interval, d.Interval)
	orDefault(&c.Progress, d.Progress)
	orDefault(&c.Timeout, d.Timeout)
	orDefault(&c.Event, d.Event)
}

// ops is the number of operations of the run.
func (c ScenConfig) ops() int {
	return runOps(c.Count, c.Rate, c.Duration)
}

// procs is the number of processes: Procs, or more when the clients need
// them.
func (c ScenConfig) procs() int {
	per := max(c.PerProcess, 1)
	return max(c.Procs, 1, (c.Clients+per-1)/per)
}

// Validate checks the configuration; it refuses any target or source that
// is not a loopback address. Call after fill.
func (c ScenConfig) Validate() error {
	switch c.Scenario {
	case scenChurn, scenActions, scenResume:
	default:
		return fmt.Errorf("%w: unknown scenario %q", ErrConfig, c.Scenario)
	}
	if err := validateWSURL("-url", c.URL); err != nil {
		return err
	}
	if err := validateLocalIPs(c.LocalIPs); err != nil {
		return err
	}
	if c.TopicPrefix == "" || len(c.TopicPrefix) > 200 {
		return fmt.Errorf("%w: -topic-prefix must be 1..200 bytes", ErrConfig)
	}
	maxRooms := 100_000
	if c.Scenario == scenResume {
		maxRooms = MaxResumeRooms
	}
	if c.Rooms < 1 || c.Rooms > maxRooms {
		return fmt.Errorf("%w: -rooms %d out of 1..%d", ErrConfig, c.Rooms, maxRooms)
	}
	if c.Clients < 1 || c.Clients > MaxScenClients {
		return fmt.Errorf("%w: -clients %d out of 1..%d", ErrConfig, c.Clients, MaxScenClients)
	}
	if ips := max(len(c.LocalIPs), 1); c.Clients+1 > ips*maxPortsPerIP {
		return fmt.Errorf("%w: %d clients need at least %d source addresses (-local-ips)", ErrConfig, c.Clients, (c.Clients+maxPortsPerIP)/maxPortsPerIP)
	}
	if !(c.Rate > 0) || c.Rate > MaxScenRate {
		return fmt.Errorf("%w: -rate %v out of (0, %d]", ErrConfig, c.Rate, MaxScenRate)
	}
	if err := validateLength(c.Count, c.Duration); err != nil {
		return err
	}
	if n := c.ops(); n < 1 || n > MaxScenOps {
		return fmt.Errorf("%w: %d operations out of 1..%d", ErrConfig, n, MaxScenOps)
	}
	if err := validateEvent(c.Event); err != nil {
		return err
	}
	if c.JoinPayload != "" && !isJSONObject(c.JoinPayload) {
		return fmt.Errorf("%w: -join-payload must be a JSON object", ErrConfig)
	}
	if err := validatePayload(c.PayloadBytes); err != nil {
		return err
	}
	if c.Procs < 0 || c.Procs > MaxScenProcs || c.procs() > MaxScenProcs {
		return fmt.Errorf("%w: -procs %d (or -clients over -per-process) out of 0..%d processes", ErrConfig, c.Procs, MaxScenProcs)
	}
	if err := validatePerProcess(c.PerProcess); err != nil {
		return err
	}
	if c.Concurrency < 0 || c.RampRate < 0 || c.DialTimeout < 0 || c.Drain < 0 || c.Timeout < 0 || c.StormEvery < 0 || c.StormJitter < 0 {
		return fmt.Errorf("%w: negative -concurrency, -ramp-rate, -dial-timeout, -drain, -timeout, -storm-every or -storm-jitter", ErrConfig)
	}
	if c.StormFraction < 0 || c.StormFraction > 1 {
		return fmt.Errorf("%w: -storm-fraction %v out of 0..1", ErrConfig, c.StormFraction)
	}
	if c.Interval < 10*time.Millisecond {
		return fmt.Errorf("%w: -interval %v under 10ms", ErrConfig, c.Interval)
	}
	if c.Timeout/c.Interval > MaxSeriesBuckets {
		return fmt.Errorf("%w: -timeout / -interval over %d buckets", ErrConfig, MaxSeriesBuckets)
	}
	return nil
}

// isJSONObject reports whether s is one JSON object.
func isJSONObject(s string) bool {
	s = strings.TrimSpace(s)
	return strings.HasPrefix(s, "{") && json.Valid([]byte(s))
}

// flags registers the scenario's flags on fs; call the returned function
// after fs.Parse to read -local-ips.
func (c *ScenConfig) flags(fs *flag.FlagSet) func() error {
	fs.StringVar(&c.URL, "url", c.URL, "gateway WebSocket endpoint (loopback only)")
	fs.StringVar(&c.TopicPrefix, "topic-prefix", c.TopicPrefix, "rooms are <prefix><i>")
	fs.IntVar(&c.Rooms, "rooms", c.Rooms, "rooms the clients spread over")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "operations per second in all")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "load time (operations = ceil(rate × duration))")
	fs.IntVar(&c.Count, "count", 0, "operations (overrides -duration)")
	fs.StringVar(&c.JoinPayload, "join-payload", "", "JSON object every join sends (default {})")
	fs.IntVar(&c.Procs, "procs", c.Procs, fmt.Sprintf("least worker processes (max %d)", MaxScenProcs))
	fs.IntVar(&c.PerProcess, "per-process", c.PerProcess, fmt.Sprintf("most sockets per process (max %d)", MaxPerProcess))
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "dials in flight per process")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", c.DialTimeout, "bound on one dial plus join")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "after the load, give up on what is missing after this long without progress")
	fs.DurationVar(&c.Interval, "interval", c.Interval, "width of a latency-over-time bucket")
	fs.DurationVar(&c.Progress, "progress", c.Progress, "plain progress line interval; negative silences")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "bound on the whole run")
	fs.StringVar(&c.Out, "out", "", "directory for result.json, summary.md, latency_over_time.png, latency_histogram.png")
	fs.BoolVar(&c.JSON, "json", false, "print the result as one JSON line after the summary")
	switch c.Scenario {
	case scenChurn:
		fs.IntVar(&c.Clients, "clients", c.Clients, "most connect+join+leave cycles in flight")
	case scenActions, scenResume:
		fs.IntVar(&c.Clients, "clients", c.Clients, "sockets held, each joined to one room")
		fs.StringVar(&c.Event, "event", c.Event, "event pushed")
		fs.IntVar(&c.PayloadBytes, "payload", c.PayloadBytes, fmt.Sprintf("payload object size in bytes (%d..%d)", MinPayloadBytes, MaxPayloadBytes))
		fs.Float64Var(&c.RampRate, "ramp-rate", c.RampRate, "clients dialled per second per process")
		fs.DurationVar(&c.Heartbeat, "heartbeat", c.Heartbeat, "held sockets' heartbeat interval; negative disables")
	}
	if c.Scenario == scenResume {
		fs.DurationVar(&c.StormEvery, "storm-every", c.StormEvery, "interval of reconnect storms while publishing")
		fs.Float64Var(&c.StormFraction, "storm-fraction", c.StormFraction, "share of the clients dropped in each storm (0..1)")
		fs.DurationVar(&c.StormJitter, "storm-jitter", c.StormJitter, "each dropped client reconnects after a random wait up to this")
	}
	ips := fs.String("local-ips", "", "comma-separated loopback source addresses used round-robin")
	return func() error {
		var err error
		c.LocalIPs, err = parseIPs(*ips)
		return err
	}
}

// shareSpec is one process's share of a run. It travels as JSON to
// worker processes.
type shareSpec struct {
	Scenario    string        `json:"scenario"`
	URL         string        `json:"url"`
	TopicPrefix string        `json:"topic_prefix"`
	Rooms       int           `json:"rooms"`
	Clients     int           `json:"clients"`
	FirstIndex  int           `json:"first_index"` // run-wide index of the first client
	Rate        float64       `json:"rate"`
	Count       int           `json:"count"`
	Event       string        `json:"event"`
	JoinPayload string        `json:"join_payload"`
	Payload     int           `json:"payload"`
	LocalIPs    []string      `json:"local_ips"`
	Concurrency int           `json:"concurrency"`
	RampRate    float64       `json:"ramp_rate"`
	DialTimeout time.Duration `json:"dial_timeout"`
	Drain       time.Duration `json:"drain"`
	Heartbeat   time.Duration `json:"heartbeat"`
	StormEvery  time.Duration `json:"storm_every"`
	StormFrac   float64       `json:"storm_fraction"`
	StormJitter time.Duration `json:"storm_jitter"`
	// Start (Unix ns) and Interval place latency samples in the run-wide
	// buckets of the latency-over-time series.
	Start    int64         `json:"start"`
	Interval time.Duration `json:"interval"`
	// Deadline (Unix ns) ends the share's load whatever is left.
	Deadline int64 `json:"deadline"`
}

// specs splits the run over its processes: clients, rate and count as
// evenly as possible.
func (c ScenConfig) specs(start, deadline time.Time) []shareSpec {
	n := c.procs()
	ips := make([]string, len(c.LocalIPs))
	for i, ip := range c.LocalIPs {
		ips[i] = ip.String()
	}
	ops := c.ops()
	out := make([]shareSpec, n)
	first := 0
	for i := range out {
		clients := c.Clients / n
		if i < c.Clients%n {
			clients++
		}
		count := ops / n
		if i < ops%n {
			count++
		}
		out[i] = shareSpec{
			Scenario: c.Scenario, URL: c.URL, TopicPrefix: c.TopicPrefix, Rooms: c.Rooms,
			Clients: max(clients, 1), FirstIndex: first, Rate: c.Rate / float64(n), Count: count,
			Event: c.Event, JoinPayload: c.JoinPayload, Payload: c.PayloadBytes, LocalIPs: ips,
			Concurrency: c.Concurrency, RampRate: c.RampRate, DialTimeout: c.DialTimeout,
			Drain: c.Drain, Heartbeat: c.Heartbeat,
			StormEvery: c.StormEvery, StormFrac: c.StormFraction, StormJitter: c.StormJitter,
			Start: start.UnixNano(), Interval: c.Interval, Deadline: deadline.UnixNano(),
		}
		first += clients
	}
	return out
}

// topic is room r's name.
func (s shareSpec) topic(r int) string { return s.TopicPrefix + fmt.Sprint(r) }

// room is the room of run-wide client i.
func (s shareSpec) room(i int) int { return i % s.Rooms }

// local is the source address of run-wide client i (nil: the kernel
// chooses).
func (s shareSpec) local(i int) net.IP {
	if len(s.LocalIPs) == 0 {
		return nil
	}
	return net.ParseIP(s.LocalIPs[i%len(s.LocalIPs)])
}
