package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/phxgate/phxgate/gateway"
)

// TestMain lets the test binary stand in for phxgate-bench when a
// broadcast run re-executes itself as a worker.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if err := mainErr(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// syncBuffer is a goroutine-safe bytes.Buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond until it holds or d passes.
func eventually(tb testing.TB, d time.Duration, cond func() bool, msg string, args ...any) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("not within %v: "+msg, append([]any{d}, args...)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkGoroutines fails if goroutines do not return to base.
func checkGoroutines(tb testing.TB, base int) {
	tb.Helper()
	eventually(tb, 10*time.Second, func() bool { return runtime.NumGoroutine() <= base },
		"goroutines %d, want ≤ %d", runtime.NumGoroutine(), base)
}

func startTestFloor(tb testing.TB) *floorServer {
	tb.Helper()
	cfg := NewFloorConfig()
	cfg.Timeout = 2 * time.Minute
	s, err := startFloor(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

func smallBroadcast(url string) BroadcastConfig {
	cfg := NewBroadcastConfig()
	cfg.URL = url
	cfg.Subs = 20
	cfg.Count = 20
	cfg.Rate = 200
	cfg.ServerPID = os.Getpid()
	cfg.Baseline = 0
	cfg.Progress = -1
	// Only a stall this long ends the run early: a loaded -race run must
	// not turn slowness into "missing".
	cfg.Drain = 30 * time.Second
	cfg.Timeout = 90 * time.Second
	cfg.LocalIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)}
	return cfg
}

// checkComplete asserts a run where every publish was accepted and
// delivered exactly once.
func checkComplete(t *testing.T, res broadcastResult, subs, events int) {
	t.Helper()
	g := res.groupResult
	if res.Sent != int64(events) || res.OK != int64(events) || res.Errors != 0 || res.NoReply != 0 {
		t.Fatalf("publisher: sent %d ok %d err %d noreply %d, want %d ok", res.Sent, res.OK, res.Errors, res.NoReply, events)
	}
	want := int64(subs * events)
	if g.Subs != subs || g.Failed != 0 || g.Expected != want || g.Delivered != want || g.Missing != 0 || g.Dups != 0 ||
		g.Extra != 0 || g.Bad != 0 || g.Closed != 0 || g.SubsMissing != 0 || g.MaxMissing != 0 {
		t.Fatalf("deliveries %+v, want %d subs × %d events, none missing or duplicated", g, subs, events)
	}
	if g.Expected != g.Delivered+g.Missing || g.Latency.N != uint64(g.Delivered) {
		t.Fatalf("counts do not add up: %+v", g)
	}
	if !res.Complete || res.SelfReceived != int64(events) {
		t.Fatalf("complete %v, publisher received %d of its own broadcasts", res.Complete, res.SelfReceived)
	}
	if res.P50us <= 0 || res.P50us > res.P99us || res.P99us > res.MaxUs {
		t.Fatalf("latency quantiles out of order: %+v", res)
	}
}

func TestBroadcastAgainstFloor(t *testing.T) {
	base := runtime.NumGoroutine()
	fl := startTestFloor(t)
	cfg := smallBroadcast("ws://" + fl.Addr().String() + "/socket/websocket")
	var out bytes.Buffer
	res, err := runBroadcast(context.Background(), cfg, &out, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	checkComplete(t, res, 20, 20)
	if res.Processes != 1 || res.Groups != 1 {
		t.Fatalf("processes %d groups %d, want 1", res.Processes, res.Groups)
	}
	st := fl.Stats()
	if st.Broadcasts != 20 || st.Conns != 21 {
		t.Fatalf("floor stats %+v", st)
	}
	printBroadcast(&out, res)
	t.Log("\n" + out.String())
	fl.Close()
	checkGoroutines(t, base)
}

// TestFloorCompaction: with a log far smaller than the run's broadcasts,
// the floor drops what every socket has been sent and still delivers
// everything, in order. Each push is read by both sockets before the next
// one, so no socket ever lags (and none may be closed as slow).
func TestFloorCompaction(t *testing.T) {
	cfg := NewFloorConfig()
	cfg.LogBytes = 2048 // a handful of frames
	cfg.Timeout = 2 * time.Minute
	fl, err := startFloor(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url := "ws://" + fl.Addr().String() + "/socket/websocket"
	var conns [2]net.Conn
	for i := range conns {
		c, err := dialJoined(ctx, url, nil, 10*time.Second, joinFrame("room:c"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(60 * time.Second))
		conns[i] = c
	}
	pub, sub := conns[0], conns[1]
	m := newBcastMatcher("room:c", DefaultBroadcastEvent)
	for seq := range 60 {
		msg := fmt.Appendf(nil, `["1","%d","room:c","shout",`, seq+refBase)
		msg = append(appendPayload(msg, int64(seq), 1, DefaultPayloadBytes), ']')
		if _, err := pub.Write(appendClientFrame(nil, opText, msg, newMask())); err != nil {
			t.Fatal(err)
		}
		for _, c := range []net.Conn{pub, sub} {
			data, _, err := wsutil.ReadServerData(c)
			if err != nil {
				t.Fatal(err)
			}
			p, ok := m.payload(data)
			got, _, _ := decodePayload(p)
			if !ok || got != int64(seq) {
				t.Fatalf("push %d: got %s", seq, data)
			}
		}
		if _, _, err := wsutil.ReadServerData(pub); err != nil { // the push's reply
			t.Fatal(err)
		}
	}
	_, base, end := fl.log.snapshot()
	if base == 0 || end-base > int64(cfg.LogBytes) {
		t.Fatalf("log base %d end %d: not compacted within %d bytes", base, end, cfg.LogBytes)
	}
	if st := fl.Stats(); st.Slow != 0 || st.Broadcasts != 60 {
		t.Fatalf("stats %+v", st)
	}
}

// TestBroadcastWorkers splits the subscribers over two worker processes
// (this test binary, re-executed) and merges their results.
func TestBroadcastWorkers(t *testing.T) {
	fl := startTestFloor(t)
	cfg := smallBroadcast("ws://" + fl.Addr().String() + "/socket/websocket")
	cfg.PerProcess = 10
	var out syncBuffer // the workers' stderr is copied in by os/exec
	res, err := runBroadcast(context.Background(), cfg, &out, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	checkComplete(t, res, 20, 20)
	if res.Processes != 2 || res.Groups != 2 {
		t.Fatalf("processes %d groups %d, want 2", res.Processes, res.Groups)
	}
}

// TestBroadcastAgainstGateway runs the same small scenario against a real
// in-process gateway with the echo backend, through the main entry point.
func TestBroadcastAgainstGateway(t *testing.T) {
	gc := gateway.NewConfig()
	gc.APIListen = ""
	gc.Listen = "127.0.0.1:0"
	gc.AdminListen = ""
	gc.Routes = []gateway.RouteConfig{{Topic: "room:*", Backend: "echo"}}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	srv, err := gateway.Start(ctx, gc, gateway.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	var out bytes.Buffer
	err = mainErr(ctx, []string{"broadcast", "-url", "ws://" + srv.Addr().String() + "/socket/websocket",
		"-subs", "20", "-count", "20", "-rate", "200", "-baseline", "0", "-drain", "30s", "-progress", "-1s",
		"-local-ips", "127.0.0.1,127.0.0.2", "-server-pid", fmt.Sprint(os.Getpid()), "-json", "-label", "gateway"}, nil, &out, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	path := filepath.Join(t.TempDir(), "gw.json")
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := readResult(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if res.Server != "gateway" || res.Sent != 20 || res.OK != 20 || res.Expected != 400 || res.Delivered != 400 || res.Missing != 0 || res.Dups != 0 {
		t.Fatalf("%+v\n%s", res, out.String())
	}
	t.Log("\n" + out.String())
}

// TestFloorSenderOrder: a push's broadcast reaches its sender before the
// sender's reply (as in Phoenix), and heartbeats are answered.
func TestFloorSenderOrder(t *testing.T) {
	fl := startTestFloor(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dialJoined(ctx, "ws://"+fl.Addr().String()+"/socket/websocket", nil, 10*time.Second, joinFrame("room:x"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, m := range []string{
		`[null,"2","phoenix","heartbeat",{}]`,
		`["1","3","room:x","shout",{"a":1}]`,
	} {
		if _, err := c.Write(appendClientFrame(nil, opText, []byte(m), newMask())); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		`[null,"2","phoenix","phx_reply",{"status":"ok","response":{}}]`,
		`[null,null,"room:x","shout",{"a":1}]`,
		`["1","3","room:x","phx_reply",{"status":"ok","response":{}}]`,
	}
	for _, w := range want {
		data, op, err := wsutil.ReadServerData(c)
		if err != nil || op != ws.OpText || string(data) != w {
			t.Fatalf("got %s (%v), want %s", data, err, w)
		}
	}
	// Another path is refused at the upgrade.
	if _, _, _, err := ws.Dial(ctx, "ws://"+fl.Addr().String()+"/other"); err == nil {
		t.Fatal("upgrade on another path accepted")
	}
}

func TestBroadcastConfigValidate(t *testing.T) {
	mod := func(f func(*BroadcastConfig)) BroadcastConfig { c := NewBroadcastConfig(); f(&c); return c }
	tests := []struct {
		name string
		cfg  BroadcastConfig
		ok   bool
	}{
		{"defaults", NewBroadcastConfig(), true},
		{"localhost", mod(func(c *BroadcastConfig) { c.URL = "ws://localhost:4000/socket/websocket" }), true},
		{"ipv6 loopback", mod(func(c *BroadcastConfig) { c.URL = "ws://[::1]:4000/socket/websocket" }), true},
		{"127/8", mod(func(c *BroadcastConfig) { c.URL = "ws://127.1.2.3:4000/socket/websocket" }), true},
		{"private address", mod(func(c *BroadcastConfig) { c.URL = "ws://10.0.0.1:4000/socket/websocket" }), false},
		{"host name", mod(func(c *BroadcastConfig) { c.URL = "ws://example.com/socket/websocket" }), false},
		{"any address", mod(func(c *BroadcastConfig) { c.URL = "ws://0.0.0.0:4000/socket/websocket" }), false},
		{"wss", mod(func(c *BroadcastConfig) { c.URL = "wss://127.0.0.1/socket/websocket" }), false},
		{"non-loopback source", mod(func(c *BroadcastConfig) { c.LocalIPs = []net.IP{net.IPv4(192, 168, 1, 2)} }), false},
		{"zero subs", mod(func(c *BroadcastConfig) { c.Subs = 0 }), false},
		{"too many subs for one source", mod(func(c *BroadcastConfig) { c.Subs = maxPortsPerIP }), false},
		{"zero rate", mod(func(c *BroadcastConfig) { c.Rate = 0 }), false},
		{"no duration nor count", mod(func(c *BroadcastConfig) { c.Duration = 0 }), false},
		{"count only", mod(func(c *BroadcastConfig) { c.Duration, c.Count = 0, 5 }), true},
		{"payload too small", mod(func(c *BroadcastConfig) { c.PayloadBytes = MinPayloadBytes - 1 }), false},
		{"per process over the file limit", mod(func(c *BroadcastConfig) { c.PerProcess = MaxPerProcess + 1 }), false},
		{"negative pid", mod(func(c *BroadcastConfig) { c.ServerPID = -1 }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkConfigErr(t, tc.cfg.Validate(), tc.ok)
		})
	}
	// A refused target never gets dialled: runBroadcast validates first.
	bad := mod(func(c *BroadcastConfig) { c.URL = "ws://10.0.0.1:4000/socket/websocket" })
	if _, err := runBroadcast(context.Background(), bad, &bytes.Buffer{}, &bytes.Buffer{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("runBroadcast = %v", err)
	}
}

func TestFloorConfigValidate(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:0": true, "localhost:4000": true, "[::1]:0": true, "0.0.0.0:0": false, ":4000": false, "10.1.1.1:80": false} {
		cfg := NewFloorConfig()
		cfg.Listen = addr
		if err := cfg.Validate(); (err == nil) != ok {
			t.Errorf("%s: %v, want ok=%v", addr, err, ok)
		}
	}
}

func TestSpecsSplit(t *testing.T) {
	cfg := NewBroadcastConfig()
	cfg.Subs = 35_000
	cfg.LocalIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)}
	cfg.fill()
	specs := cfg.specs()
	if len(specs) != 3 {
		t.Fatalf("%d groups, want 3", len(specs))
	}
	first, total := 0, 0
	for _, s := range specs {
		if s.FirstIndex != first || s.Subs > MaxPerProcess || s.Subs < 11_666 || len(s.LocalIPs) != 2 {
			t.Fatalf("spec %+v (first want %d)", s, first)
		}
		first += s.Subs
		total += s.Subs
	}
	if total != cfg.Subs {
		t.Fatalf("%d subscribers in specs, want %d", total, cfg.Subs)
	}
}

// TestSettleAndMerge: per-subscriber settling against refused publishes,
// and merging worker results (through JSON, as they travel).
func TestSettleAndMerge(t *testing.T) {
	fin := finishSpec{Sent: 10, Refused: []int64{3, 7}} // 8 accepted
	var a groupResult
	a.Groups = 1
	var s1, s2 seqTracker
	for _, n := range []int64{0, 1, 2, 3, 4, 5, 6, 8, 9, 9} { // all accepted, 3 (refused) anyway, 9 twice
		s1.Observe(n)
	}
	for _, n := range []int64{0, 2, 1} { // 5 accepted missing, 1 late
		s2.Observe(n)
	}
	a.settle(&s1, fin, 0, 0)
	a.settle(&s2, fin, 0, 0)
	r1 := newHistRecorder()
	r1.Record(1000)
	a.Latency = r1.Snapshot()
	a.Closed, a.CloseCodes = 1, map[string]int64{"1013": 1}

	var b groupResult
	b.Groups, b.Failed = 1, 2
	var s3 seqTracker
	for _, n := range []int64{0, 1, 2, 4, 5, 6, 8, 9} {
		s3.Observe(n)
	}
	b.settle(&s3, fin, 0, 0)
	r2 := newHistRecorder()
	r2.Record(3000)
	b.Latency = r2.Snapshot()
	b.Closed, b.CloseCodes = 2, map[string]int64{"1013": 1, closeNone: 1}

	merged := mergeViaJSON(t, a, b)
	want := groupResult{
		Groups: 2,
		tally: tally{Subs: 3, Failed: 2, Expected: 24, Delivered: 8 + 3 + 8, Missing: 5, Dups: 1,
			SubsMissing: 1, SubsDup: 1},
		Late: 1, Extra: 1, MaxMissing: 5, Closed: 3,
	}
	got := merged
	got.CloseCodes, got.Latency, got.Orders = nil, hist{}, nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("merged\n%+v\nwant\n%+v", got, want)
	}
	if merged.Expected != merged.Delivered+merged.Missing {
		t.Fatal("expected ≠ delivered + missing")
	}
	// Only s3 got every accepted event and nothing refused.
	if complete, differ := merged.orderSplit(); complete != 1 || differ != 0 {
		t.Fatalf("orderSplit = %d, %d, want 1, 0", complete, differ)
	}
	if merged.CloseCodes["1013"] != 2 || merged.CloseCodes[closeNone] != 1 || merged.Latency.N != 2 || merged.Latency.Max != 3000 {
		t.Fatalf("codes %v latency %+v", merged.CloseCodes, merged.Latency)
	}
}

// mergeViaJSON merges results as the orchestrator merges its workers':
// each through a JSON round trip.
func mergeViaJSON(tb testing.TB, rs ...groupResult) groupResult {
	tb.Helper()
	var merged groupResult
	for _, g := range rs {
		js, err := json.Marshal(g)
		if err != nil {
			tb.Fatal(err)
		}
		var back groupResult
		if err := json.Unmarshal(js, &back); err != nil {
			tb.Fatal(err)
		}
		merged.merge(back)
	}
	return merged
}

func TestCompare(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, r broadcastResult) string {
		var b bytes.Buffer
		b.WriteString("summary line\n")
		if err := writeJSON(&b, r); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := broadcastResult{Server: "gateway", ServerCPUPerDeliveryUs: 3, runResult: runResult{latencyUs: latencyUs{P50us: 2000, P99us: 9000}, Complete: true}}
	b := broadcastResult{Server: "floor", ServerCPUPerDeliveryUs: 1.5, runResult: runResult{latencyUs: latencyUs{P50us: 1000, P99us: 3000}, Complete: true}}
	var out bytes.Buffer
	if err := compareMain([]string{write("a.json", a), write("b.json", b)}, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"gateway/floor", "CPU µs/delivery", "2.00", "latency p99", "3.00"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("no %q in\n%s", want, out.String())
		}
	}
	if err := compareMain([]string{filepath.Join(dir, "a.json")}, &out, &out); !errors.Is(err, ErrConfig) {
		t.Fatalf("one file: %v", err)
	}
}

func TestSubcommands(t *testing.T) {
	var out bytes.Buffer
	if err := mainErr(context.Background(), []string{"nope"}, nil, &out, &out); err == nil {
		t.Fatal("unknown subcommand accepted")
	}
	if err := mainErr(context.Background(), []string{"broadcast", "-url", "ws://192.0.2.1/socket/websocket"}, nil, &out, &out); !errors.Is(err, ErrConfig) {
		t.Fatalf("non-loopback broadcast: %v", err)
	}
	if err := mainErr(context.Background(), []string{"floor", "-listen", "0.0.0.0:0"}, nil, &out, &out); !errors.Is(err, ErrConfig) {
		t.Fatalf("non-loopback floor: %v", err)
	}
	// No subcommand is the idle scenario (loadtest.sh relies on it).
	if err := mainErr(context.Background(), []string{"-conns", "0"}, nil, &out, &out); !errors.Is(err, ErrConfig) {
		t.Fatalf("idle flags: %v", err)
	}
}
