package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/channels/ratelimit"
	"github.com/phxgate/phxgate/gateway"
)

// startScenGateway starts an in-process gateway from the example config
// of these scenarios (scenarios.yaml), its listeners moved to port 0: the
// tests run against the limits the example raises.
func startScenGateway(tb testing.TB) string {
	tb.Helper()
	gc := scenExampleConfig(tb)
	gc.Listen, gc.AdminListen, gc.APIListen = "127.0.0.1:0", "", ""
	srv, err := gateway.Start(context.Background(), gc, gateway.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return "ws://" + srv.Addr().String() + "/socket/websocket"
}

func scenExampleConfig(tb testing.TB) gateway.Config {
	tb.Helper()
	b, err := os.ReadFile("scenarios.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	gc, err := gateway.ParseYAML(b)
	if err != nil {
		tb.Fatal(err)
	}
	return gc
}

// TestScenExampleConfigRaisesLimits: the per-address and per-player limits
// whose defaults stop one address's load are raised in the example, and
// room:* keeps history for resume.
func TestScenExampleConfigRaisesLimits(t *testing.T) {
	gc, def := scenExampleConfig(t), gateway.NewConfig()
	if err := gc.Validate(); err != nil {
		t.Fatal(err)
	}
	l, d := gc.Limits, def.Limits
	for name, raised := range map[string]bool{
		"joins_per_second":         l.JoinsPerSecond >= 100*d.JoinsPerSecond,
		"join_burst":               l.JoinBurst >= 100*d.JoinBurst,
		"ip_handshakes_per_second": l.IPHandshakesPerSecond >= 100*d.IPHandshakesPerSecond,
		"ip_max_conns":             l.IPMaxConns >= MaxPerProcess,
		"player_max_conns":         l.PlayerMaxConns >= MaxPerProcess,
		"classes.default":          l.Classes[ratelimit.DefaultClass].PerSecond >= MaxScenRate,
	} {
		if !raised {
			t.Errorf("scenarios.yaml: limits.%s is not raised for a loopback load run", name)
		}
	}
	if len(gc.Routes) != 1 || gc.Routes[0].Topic != "room:*" || gc.Routes[0].Backend != "echo" || gc.Routes[0].History < 100 {
		t.Fatalf("routes %+v", gc.Routes)
	}
}

// smallScen is a run of a few seconds at most against url, from two
// loopback addresses.
func smallScen(name, url string) ScenConfig {
	cfg := NewScenConfig(name)
	cfg.URL = url
	cfg.Rooms = 4
	cfg.Clients = 20
	cfg.Rate = 400
	cfg.Count = 200
	cfg.Interval = 100 * time.Millisecond
	cfg.Progress = -1
	// Only a stall this long ends a drain early: a loaded -race run must
	// not turn slowness into "missing".
	cfg.Drain = 20 * time.Second
	cfg.Timeout = 60 * time.Second
	cfg.StormEvery = 100 * time.Millisecond
	cfg.StormFraction = 0.3
	cfg.StormJitter = 20 * time.Millisecond
	cfg.LocalIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)}
	return cfg
}

// scenArgs are cfg as command-line flags, for a run through mainErr.
func scenArgs(cfg ScenConfig, extra ...string) []string {
	args := []string{cfg.Scenario, "-url", cfg.URL, "-rooms", "4", "-clients", "20", "-rate", "400", "-count", "200",
		"-interval", "100ms", "-drain", "20s", "-timeout", "60s", "-local-ips", "127.0.0.1,127.0.0.2"}
	if cfg.Scenario == scenResume {
		args = append(args, "-storm-every", "100ms", "-storm-fraction", "0.3", "-storm-jitter", "20ms")
	}
	return append(args, extra...)
}

// readOutputs checks the output directory: result.json decodes, the
// summary names the scenario, both PNGs decode.
func readOutputs(t *testing.T, dir string) scenResult {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, outResult))
	if err != nil {
		t.Fatal(err)
	}
	var res scenResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, outSummary))
	if err != nil || !strings.Contains(string(md), "# phxgate-bench "+res.Scenario) || !strings.Contains(string(md), outOverTime) {
		t.Fatalf("summary.md: %v\n%s", err, md)
	}
	for _, name := range []string{outOverTime, outHistogram} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
			t.Fatalf("%s: %v", name, b)
		}
	}
	return res
}

// checkSeries: the latency-over-time buckets add up to the histogram.
func checkSeries(t *testing.T, r scenResult) {
	t.Helper()
	var n uint64
	for _, h := range r.Series {
		n += h.N
	}
	var pn uint64
	for _, p := range r.Points {
		pn += p.N
		if p.P50us > p.P99us || p.P99us > p.MaxUs {
			t.Fatalf("point %+v out of order", p)
		}
	}
	if n != r.Latency.N || pn != n || n == 0 {
		t.Fatalf("series hold %d (points %d), histogram %d", n, pn, r.Latency.N)
	}
	if r.P50us <= 0 || r.P50us > r.P99us || r.P99us > r.MaxUs {
		t.Fatalf("latency %+v", r.latencyUs)
	}
}

// TestScenChurn: every cycle connects, joins, leaves and disconnects;
// through the command line, with the output directory and plain progress
// lines (stderr is not a terminal).
func TestScenChurn(t *testing.T) {
	url := startScenGateway(t)
	dir := t.TempDir()
	var out, errOut syncBuffer
	args := scenArgs(smallScen(scenChurn, url), "-out", dir, "-progress", "100ms", "-json")
	if err := mainErr(context.Background(), args, nil, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out.String(), errOut.String())
	}
	r := readOutputs(t, dir)
	if r.Planned != 200 || r.Attempts != 200 || r.OK != 200 || len(r.Errors) != 0 || !r.Pass || r.Latency.N != 200 {
		t.Fatalf("churn: %+v", r.shareResult)
	}
	if r.Achieved <= 0 || r.WindowSec <= 0 {
		t.Fatalf("rate %v over %v s", r.Achieved, r.WindowSec)
	}
	checkSeries(t, r)
	if !strings.Contains(errOut.String(), "churn ") || !strings.Contains(out.String(), "connect+join latency:") {
		t.Fatalf("no progress or summary:\n%s\n%s", errOut.String(), out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var line scenResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &line); err != nil || line.OK != 200 {
		t.Fatalf("json line: %v %+v", err, line.shareResult)
	}
	t.Log("\n" + out.String())
}

// TestScenChurnJoinRefused: refusals are counted by kind, and a run
// where nothing succeeded fails.
func TestScenChurnJoinRefused(t *testing.T) {
	url := startScenGateway(t)
	cfg := smallScen(scenChurn, url)
	cfg.Count = 10
	cfg.JoinPayload = `{"deny":true}`
	var out bytes.Buffer
	r, err := runScen(context.Background(), cfg, &out, &out)
	if err == nil || r.Pass || r.OK != 0 || r.Errors["join_denied"] != 10 {
		t.Fatalf("err %v pass %v ok %d errors %v", err, r.Pass, r.OK, r.Errors)
	}
}

// TestScenActions: every push is answered ok; the clients are spread
// over two worker processes.
func TestScenActions(t *testing.T) {
	url := startScenGateway(t)
	dir := t.TempDir()
	var out syncBuffer
	args := scenArgs(smallScen(scenActions, url), "-out", dir, "-procs", "2", "-progress", "-1s")
	if err := mainErr(context.Background(), args, nil, &out, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	r := readOutputs(t, dir)
	if r.Processes != 2 || r.Shares != 2 || r.Clients != 20 || r.Failed != 0 {
		t.Fatalf("processes %d shares %d clients %d failed %d", r.Processes, r.Shares, r.Clients, r.Failed)
	}
	if r.Planned != 200 || r.Attempts != 200 || r.OK != 200 || r.NoReply != 0 || len(r.Errors) != 0 || r.Latency.N != 200 || !r.Pass {
		t.Fatalf("actions: %+v", r.shareResult)
	}
	checkSeries(t, r)
	t.Log("\n" + out.String())
}

// TestScenActionsRefused: pushes the backend refuses are counted by
// reason, not as replies ok.
func TestScenActionsRefused(t *testing.T) {
	url := startScenGateway(t)
	cfg := smallScen(scenActions, url)
	cfg.Event = "nope"
	cfg.Count = 40
	var out bytes.Buffer
	r, err := runScen(context.Background(), cfg, &out, &out)
	if err == nil || r.OK != 0 || r.Errors["push_unknown event"] != 40 || r.NoReply != 0 {
		t.Fatalf("err %v ok %d errors %v noreply %d", err, r.OK, r.Errors, r.NoReply)
	}
}

// TestScenResume: clients dropped in storms rejoin with their last
// position and end with every event of their room once and in order, in
// this process and in two workers.
func TestScenResume(t *testing.T) {
	for _, procs := range []int{1, 2} {
		t.Run(map[int]string{1: "in process", 2: "workers"}[procs], func(t *testing.T) {
			url := startScenGateway(t)
			base := runtime.NumGoroutine()
			cfg := smallScen(scenResume, url)
			cfg.Procs = procs
			cfg.Out = t.TempDir()
			var out syncBuffer
			r, err := runScen(context.Background(), cfg, &out, &out)
			if err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if err := writeScenOutputs(cfg.Out, r); err != nil {
				t.Fatal(err)
			}
			r = readOutputs(t, cfg.Out)
			// 200 events over 4 rooms: each client expects 50.
			if r.PubSent != 200 || r.PubOK != 200 || r.Clients != 20 || r.Complete != 20 || r.Incomplete != 0 || r.OK != 20*50 {
				t.Fatalf("resume: %+v", r)
			}
			if r.Gaps != 0 || r.Dups != 0 || r.Missing != 0 || r.EpochChanges != 0 || r.NotRecovered != 0 || !r.Pass {
				t.Fatalf("resume faults: %+v", r.shareResult)
			}
			if r.Storms == 0 || r.Reconnects == 0 || r.Recovered != r.Reconnects || r.Rejoin.N != uint64(r.Reconnects) {
				t.Fatalf("storms %d reconnects %d recovered %d rejoins %d", r.Storms, r.Reconnects, r.Recovered, r.Rejoin.N)
			}
			checkSeries(t, r)
			var buf bytes.Buffer
			printScen(&buf, r)
			t.Log("\n" + buf.String())
			if procs == 1 {
				checkGoroutines(t, base)
			}
		})
	}
}

// TestScenResumeWithoutHistory: a gateway that keeps no history cannot
// replay what a dropped client missed, and the run says so and fails.
func TestScenResumeWithoutHistory(t *testing.T) {
	gc := scenExampleConfig(t)
	gc.Listen, gc.AdminListen, gc.APIListen = "127.0.0.1:0", "", ""
	gc.Routes[0].History = 0
	srv, err := gateway.Start(context.Background(), gc, gateway.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	cfg := smallScen(scenResume, "ws://"+srv.Addr().String()+"/socket/websocket")
	cfg.Drain = 2 * time.Second // it cannot complete
	var out bytes.Buffer
	r, err := runScen(context.Background(), cfg, &out, &out)
	if err == nil || r.Pass || r.Incomplete == 0 {
		t.Fatalf("err %v pass %v: %+v", err, r.Pass, r.shareResult)
	}
	if r.NotRecovered+r.Missing+r.Gaps == 0 {
		t.Fatalf("no fault counted: %+v", r.shareResult)
	}
	t.Logf("%v", err)
}

func TestScenConfigValidate(t *testing.T) {
	mod := func(name string, f func(*ScenConfig)) ScenConfig {
		c := NewScenConfig(name)
		f(&c)
		c.fill()
		return c
	}
	tests := []struct {
		name string
		cfg  ScenConfig
		ok   bool
	}{
		{"churn defaults", mod(scenChurn, func(*ScenConfig) {}), true},
		{"actions defaults", mod(scenActions, func(*ScenConfig) {}), true},
		{"resume defaults", mod(scenResume, func(*ScenConfig) {}), true},
		{"unknown scenario", mod("nope", func(*ScenConfig) {}), false},
		{"remote target", mod(scenChurn, func(c *ScenConfig) { c.URL = "ws://10.0.0.1:4000/socket/websocket" }), false},
		{"remote source", mod(scenChurn, func(c *ScenConfig) { c.LocalIPs = []net.IP{net.IPv4(192, 168, 0, 1)} }), false},
		{"zero rate", mod(scenActions, func(c *ScenConfig) { c.Rate = 0 }), false},
		{"no bound", mod(scenActions, func(c *ScenConfig) { c.Duration, c.Count = 0, 0 }), false},
		{"too many ops", mod(scenActions, func(c *ScenConfig) { c.Count = MaxScenOps + 1 }), false},
		{"resume rooms over a socket's channels", mod(scenResume, func(c *ScenConfig) { c.Rooms = MaxResumeRooms + 1 }), false},
		{"clients over one source", mod(scenActions, func(c *ScenConfig) { c.Clients = maxPortsPerIP }), false},
		{"clients over sources, over processes", mod(scenActions, func(c *ScenConfig) {
			c.Clients = 40_000
			c.LocalIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)}
		}), true},
		{"too many processes", mod(scenActions, func(c *ScenConfig) { c.Procs = MaxScenProcs + 1 }), false},
		{"per process over the file limit", mod(scenActions, func(c *ScenConfig) { c.PerProcess = MaxPerProcess + 1 }), false},
		{"storm fraction", mod(scenResume, func(c *ScenConfig) { c.StormFraction = 1.5 }), false},
		{"join payload not an object", mod(scenChurn, func(c *ScenConfig) { c.JoinPayload = "[1]" }), false},
		{"tiny interval", mod(scenChurn, func(c *ScenConfig) { c.Interval = time.Millisecond }), false},
		{"too many buckets", mod(scenChurn, func(c *ScenConfig) { c.Interval, c.Timeout = 10*time.Millisecond, time.Hour }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkConfigErr(t, tc.cfg.Validate(), tc.ok)
		})
	}
	// The processes: over -per-process, more of them.
	c := mod(scenActions, func(c *ScenConfig) { c.Clients, c.PerProcess = 40_000, 15_000 })
	if got := len(c.specs(time.Now(), time.Now())); got != 3 {
		t.Fatalf("%d processes, want 3", got)
	}
	var out bytes.Buffer
	if err := mainErr(context.Background(), []string{"churn", "-url", "ws://192.0.2.1/socket/websocket"}, nil, &out, &out); !errors.Is(err, ErrConfig) {
		t.Fatalf("non-loopback churn: %v", err)
	}
}

// TestScenSpecsSplit: clients, rate and operations add up over the
// processes.
func TestScenSpecsSplit(t *testing.T) {
	c := NewScenConfig(scenActions)
	c.Clients, c.Count, c.Rate, c.Procs = 10, 101, 300, 3
	specs := c.specs(time.Now(), time.Now())
	var clients, count int
	var rate float64
	for i, s := range specs {
		if s.FirstIndex != clients {
			t.Fatalf("spec %d first %d, want %d", i, s.FirstIndex, clients)
		}
		clients += s.Clients
		count += s.Count
		rate += s.Rate
	}
	if len(specs) != 3 || clients != 10 || count != 101 || rate != 300 {
		t.Fatalf("%d specs: clients %d count %d rate %v", len(specs), clients, count, rate)
	}
}

func TestParsePos(t *testing.T) {
	for _, tc := range []struct {
		in    string
		epoch string
		off   uint64
		ok    bool
	}{
		{"p:abc:12", "abc", 12, true},
		{"p:a:b:0", "a:b", 0, true},
		{"p:abc", "", 0, false},
		{"x:abc:1", "", 0, false},
		{"p:abc:-1", "", 0, false},
	} {
		e, o, ok := parsePos(tc.in)
		if ok != tc.ok || (ok && (e != tc.epoch || o != tc.off)) {
			t.Errorf("parsePos(%q) = %q, %d, %v", tc.in, e, o, ok)
		}
	}
	for _, tc := range []struct {
		base, offset, want string
		positions          bool
	}{
		{"", "", "{}", false},
		{"", "", `{"offset":null}`, true},
		{`{"a":1}`, "p:e:3", `{"offset":"p:e:3","a":1}`, true},
		{" { } ", "p:e:3", `{"offset":"p:e:3"}`, true},
	} {
		if got := string(joinPayload(tc.base, tc.positions, tc.offset)); got != tc.want {
			t.Errorf("joinPayload(%q, %v, %q) = %s, want %s", tc.base, tc.positions, tc.offset, got, tc.want)
		}
	}
}

// TestScenPlotsEmpty: a run that measured nothing still writes plots
// that decode.
func TestScenPlotsEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := writeScenOutputs(dir, scenResult{Scenario: scenChurn, Faults: []string{"no operation succeeded"}}); err != nil {
		t.Fatal(err)
	}
	readOutputs(t, dir)
}
