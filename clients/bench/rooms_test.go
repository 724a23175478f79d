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
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/channels/ratelimit"
	"github.com/phxgate/phxgate/gateway"
)

// startTestGateway starts an in-process gateway with room:* on the echo
// backend and the per-address limits raised, as redis.sh does: every
// client of a test comes from two loopback addresses. Each gateway has its
// own in-memory broker.
func startTestGateway(tb testing.TB) string {
	tb.Helper()
	gc := gateway.NewConfig()
	gc.APIListen = ""
	gc.Listen = "127.0.0.1:0"
	gc.AdminListen = ""
	gc.Routes = []gateway.RouteConfig{{Topic: "room:*", Backend: "echo", History: 100}}
	gc.Limits.JoinsPerSecond, gc.Limits.JoinBurst = 100_000, 20_000
	gc.Limits.IPHandshakesPerSecond, gc.Limits.IPHandshakeBurst, gc.Limits.IPMaxHandshakes = 100_000, 20_000, 1_000
	gc.Limits.IPMaxConns, gc.Limits.PlayerMaxConns = 20_000, 20_000
	gc.Limits.Classes = map[string]ratelimit.ClassLimit{ratelimit.DefaultClass: {PerSecond: 100_000, Burst: 100_000}}
	srv, err := gateway.Start(context.Background(), gc, gateway.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return "ws://" + srv.Addr().String() + "/socket/websocket"
}

func smallRooms(urls ...string) RoomsConfig {
	cfg := NewRoomsConfig()
	cfg.URLs = urls
	cfg.Rooms = 6
	cfg.Clients = 24
	cfg.Count = 24
	cfg.Rate = 400
	cfg.PIDs = []namedPID{{Name: "self", PID: os.Getpid()}}
	cfg.Baseline = 0
	cfg.Progress = -1
	// Only a stall this long ends the run early: a loaded -race run must
	// not turn slowness into "missing".
	cfg.Drain = 30 * time.Second
	cfg.Timeout = 90 * time.Second
	cfg.LocalIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)}
	return cfg
}

// checkRoomsComplete asserts a run where every publish was accepted and
// delivered exactly once to every subscriber of its room.
func checkRoomsComplete(t *testing.T, res roomsResult, cfg RoomsConfig) {
	t.Helper()
	events := int64(cfg.events())
	if res.Sent != events || res.OK != events || res.Errors != 0 || res.NoReply != 0 || res.PubClosed != 0 {
		t.Fatalf("publishers: sent %d ok %d err %d noreply %d closed %d, want %d ok", res.Sent, res.OK, res.Errors, res.NoReply, res.PubClosed, events)
	}
	// Every room gets the same number of events and has the same number
	// of subscribers, so each subscriber expects events/rooms.
	want := int64(cfg.Clients) * events / int64(cfg.Rooms)
	g := res.groupResult
	if g.Subs != cfg.Clients || g.Failed != 0 || g.Expected != want || g.Delivered != want || g.Missing != 0 || g.Dups != 0 ||
		g.Late != 0 || g.Extra != 0 || g.Bad != 0 || g.Closed != 0 {
		t.Fatalf("deliveries %+v, want %d, none missing or duplicated", g, want)
	}
	if res.OrderComplete != int64(cfg.Clients) || res.OrderDiffers != 0 {
		t.Fatalf("order: %d subscribers complete, %d in another order", res.OrderComplete, res.OrderDiffers)
	}
	if g.Latency.N != uint64(want) || !res.Complete || res.P50us <= 0 || res.P50us > res.P99us || res.P99us > res.MaxUs {
		t.Fatalf("latency %+v n=%d complete %v", res.latencyUs, g.Latency.N, res.Complete)
	}
	// The publishers are joined to every room they push to; with one
	// publisher per node each receives every event once.
	if want := events * int64(len(cfg.URLs)); cfg.Rooms <= MaxRoomsPerPublisher && res.PubReceived != want {
		t.Fatalf("publishers received %d, want %d", res.PubReceived, want)
	}
	if len(res.ByNode) != len(cfg.URLs) {
		t.Fatalf("%d nodes reported, want %d", len(res.ByNode), len(cfg.URLs))
	}
	var published int64
	for i, n := range res.ByNode {
		if n.URL != cfg.URLs[i] || n.Subs != cfg.Clients/len(cfg.URLs) || n.Failed != 0 || n.Missing != 0 || n.Dups != 0 || n.OK != n.Published {
			t.Fatalf("node %d: %+v", i, n)
		}
		published += n.Published
	}
	if published != events || len(res.CPU) != 1 || res.CPU[0].Name != "self" {
		t.Fatalf("published %d of %d; cpu %+v", published, events, res.CPU)
	}
}

// TestRoomsAgainstGateway: two "nodes" that are one gateway, so every
// event reaches every subscriber of its room wherever it was published.
func TestRoomsAgainstGateway(t *testing.T) {
	url := startTestGateway(t)
	base := runtime.NumGoroutine()
	cfg := smallRooms(url, url)
	var out bytes.Buffer
	res, err := runRooms(context.Background(), cfg, &out, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	checkRoomsComplete(t, res, cfg)
	if res.Processes != 1 || res.Publishers != 2 {
		t.Fatalf("processes %d publishers %d", res.Processes, res.Publishers)
	}
	printRooms(&out, res)
	t.Log("\n" + out.String())
	checkGoroutines(t, base)
}

// TestRoomsWorkers: more rooms than one publisher socket may join (two
// sockets per node), subscribers in worker processes, through the main
// entry point and its JSON line.
func TestRoomsWorkers(t *testing.T) {
	url := startTestGateway(t)
	var out syncBuffer // the workers' stderr is copied in by os/exec
	args := []string{"rooms", "-urls", url + "," + url, "-rooms", "120", "-clients", "240", "-count", "240", "-rate", "1000",
		"-per-process", "100", "-baseline", "100ms", "-drain", "30s", "-progress", "-1s", "-timeout", "90s", "-local-ips", "127.0.0.1,127.0.0.2",
		"-pids", fmt.Sprintf("self=%d", os.Getpid()), "-json"}
	if err := mainErr(context.Background(), args, nil, &out, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var res roomsResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	cfg := NewRoomsConfig()
	cfg.URLs, cfg.Rooms, cfg.Clients, cfg.Count = []string{url, url}, 120, 240, 240
	// The JSON line carries the quantiles, not the histogram.
	res.groupResult.Latency.N = uint64(res.Delivered)
	checkRoomsComplete(t, res, cfg)
	if res.Processes != 3 || res.Publishers != 4 {
		t.Fatalf("processes %d publishers %d\n%s", res.Processes, res.Publishers, out.String())
	}
}

// TestRoomsSplitBrain: two gateways that do not share a broker. Each
// event reaches only the subscribers on the node it was published on, and
// the run says so: every subscriber misses what the other node published.
func TestRoomsSplitBrain(t *testing.T) {
	a, b := startTestGateway(t), startTestGateway(t)
	cfg := smallRooms(a, b)
	cfg.Drain = 2 * time.Second // it cannot complete; end soon after the last delivery
	var out bytes.Buffer
	res, err := runRooms(context.Background(), cfg, &out, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	// 24 events in 6 rooms: 4 per room, 2 pushed from each node. A room
	// has 4 subscribers, 2 on each node; each gets its own node's 2.
	g := res.groupResult
	if res.Complete || g.Expected != 96 || g.Delivered != 48 || g.Missing != 48 || g.SubsMissing != 24 || g.MaxMissing != 2 || g.Dups != 0 {
		t.Fatalf("deliveries %+v complete %v\n%s", g, res.Complete, out.String())
	}
	for i, n := range res.ByNode {
		if n.Subs != 12 || n.Missing != 24 || n.Published != 12 || n.SubsMissing != 12 {
			t.Fatalf("node %d: %+v", i, n)
		}
	}
}

func TestRoomsPlan(t *testing.T) {
	for _, tc := range []struct{ nodes, rooms int }{{3, 100}, {3, 99}, {1, 7}, {2, 250}, {4, 1}} {
		t.Run(fmt.Sprintf("%dx%d", tc.nodes, tc.rooms), func(t *testing.T) {
			p := roomsPlan{nodes: tc.nodes, rooms: tc.rooms}
			per := (tc.rooms + MaxRoomsPerPublisher - 1) / MaxRoomsPerPublisher
			events := 3 * tc.nodes * tc.rooms
			nextSeq := make([]int64, tc.rooms)
			byNode := make([]map[int]bool, tc.rooms) // nodes each room was published from
			pubTopics := map[int]map[int]int{}       // publisher → topic index → room
			for k := range events {
				room, node, seq := p.at(k)
				if seq != nextSeq[room] {
					t.Fatalf("event %d: room %d seq %d, want %d", k, room, seq, nextSeq[room])
				}
				nextSeq[room]++
				if byNode[room] == nil {
					byNode[room] = map[int]bool{}
				}
				byNode[room][node] = true
				pi, topic := p.publisher(room, node)
				if pi/per != node || topic >= MaxRoomsPerPublisher {
					t.Fatalf("room %d node %d: publisher %d topic %d", room, node, pi, topic)
				}
				if r, n := p.room(pi, topic); r != room || n != node {
					t.Fatalf("room(%d, %d) = %d, %d; want %d, %d", pi, topic, r, n, room, node)
				}
				if pubTopics[pi] == nil {
					pubTopics[pi] = map[int]int{}
				}
				if r, ok := pubTopics[pi][topic]; ok && r != room {
					t.Fatalf("publisher %d topic %d is rooms %d and %d", pi, topic, r, room)
				}
				pubTopics[pi][topic] = room
				var total int64
				for r := range tc.rooms {
					total += p.sentTo(r, int64(k+1))
				}
				if total != int64(k+1) || p.sentTo(room, int64(k+1)) != seq+1 {
					t.Fatalf("after event %d: sentTo sums to %d, room %d has %d", k, total, room, p.sentTo(room, int64(k+1)))
				}
			}
			for r, nodes := range byNode {
				if len(nodes) != tc.nodes {
					t.Fatalf("room %d published from %d nodes, want %d", r, len(nodes), tc.nodes)
				}
			}
		})
	}
}

func TestPlaceAt(t *testing.T) {
	const nodes, topics = 3, 100
	count := map[[2]int]int{}
	for i := range 15_000 {
		n, tp := placeAt(i, nodes, topics)
		count[[2]int{n, tp}]++
	}
	if len(count) != nodes*topics {
		t.Fatalf("%d (node, topic) pairs, want %d", len(count), nodes*topics)
	}
	for k, c := range count {
		if c != 50 {
			t.Fatalf("%v has %d subscribers, want 50", k, c)
		}
	}
}

func TestRoomsConfigValidate(t *testing.T) {
	mod := func(f func(*RoomsConfig)) RoomsConfig { c := NewRoomsConfig(); f(&c); return c }
	three := []string{"ws://127.0.0.1:1/socket/websocket", "ws://127.0.0.1:2/socket/websocket", "ws://127.0.0.1:3/socket/websocket"}
	tests := []struct {
		name string
		cfg  RoomsConfig
		ok   bool
	}{
		{"defaults", NewRoomsConfig(), true},
		{"three nodes", mod(func(c *RoomsConfig) { c.URLs = three }), true},
		{"no node", mod(func(c *RoomsConfig) { c.URLs = nil }), false},
		{"too many nodes", mod(func(c *RoomsConfig) { c.URLs = make([]string, MaxRoomsNodes+1) }), false},
		{"remote node", mod(func(c *RoomsConfig) { c.URLs = append(three, "ws://10.0.0.1:4000/socket/websocket") }), false},
		{"zero rooms", mod(func(c *RoomsConfig) { c.Rooms = 0 }), false},
		{"too many rooms", mod(func(c *RoomsConfig) { c.Rooms = MaxRooms + 1 }), false},
		{"zero clients", mod(func(c *RoomsConfig) { c.Clients = 0 }), false},
		{"too many clients for one source", mod(func(c *RoomsConfig) { c.Clients = maxPortsPerIP }), false},
		{"enough sources", mod(func(c *RoomsConfig) {
			c.Clients = 3 * 15_000
			c.LocalIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)}
		}), true},
		{"non-loopback source", mod(func(c *RoomsConfig) { c.LocalIPs = []net.IP{net.IPv4(192, 168, 1, 2)} }), false},
		{"too many events", mod(func(c *RoomsConfig) { c.Count = MaxRoomsEvents + 1 }), false},
		{"pid without name", mod(func(c *RoomsConfig) { c.PIDs = []namedPID{{PID: 1}} }), false},
		{"negative baseline", mod(func(c *RoomsConfig) { c.Baseline = -time.Second }), false},
		{"zero rate", mod(func(c *RoomsConfig) { c.Rate = 0 }), false},
		{"per process over the file limit", mod(func(c *RoomsConfig) { c.PerProcess = MaxPerProcess + 1 }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkConfigErr(t, tc.cfg.Validate(), tc.ok)
		})
	}
	// A refused target never gets dialled: runRooms validates first.
	bad := mod(func(c *RoomsConfig) { c.URLs = []string{"ws://10.0.0.1:4000/socket/websocket"} })
	if _, err := runRooms(context.Background(), bad, &bytes.Buffer{}, &bytes.Buffer{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("runRooms = %v", err)
	}
	var out bytes.Buffer
	if err := mainErr(context.Background(), []string{"rooms", "-urls", "ws://192.0.2.1/socket/websocket"}, nil, &out, &out); !errors.Is(err, ErrConfig) {
		t.Fatalf("non-loopback rooms: %v", err)
	}
}

func TestParsePIDs(t *testing.T) {
	got, err := parsePIDs(" gw1=12, redis=345 ")
	want := []namedPID{{"gw1", 12}, {"redis", 345}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("parsePIDs = %v, %v", got, err)
	}
	if got, err := parsePIDs(""); got != nil || err != nil {
		t.Fatalf("empty: %v, %v", got, err)
	}
	for _, bad := range []string{"12", "=12", "gw=", "gw=x", "gw=0", "gw=-3"} {
		if _, err := parsePIDs(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if got := parseURLs(" a, ,b,"); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("parseURLs = %q", got)
	}
}

// TestSettleByTopicAndNode: subscribers of different topics settle against
// their own topic's publishes and add up by node, through JSON.
func TestSettleByTopicAndNode(t *testing.T) {
	fin := finishSpec{Topics: []finishSpec{
		{Sent: 3},                      // topic 0: 0..2 accepted
		{Sent: 4, Refused: []int64{1}}, // topic 1: 0, 2, 3 accepted
		{Sent: 2, Refused: []int64{0}}, // topic 2: 1 accepted
	}}
	if got := fin.topic(7); got.Sent != 0 || got.Refused != nil {
		t.Fatalf("unknown topic: %+v", got)
	}
	observe := func(ns ...int64) *seqTracker {
		var s seqTracker
		for _, n := range ns {
			s.Observe(n)
		}
		return &s
	}
	a := groupResult{Groups: 1, Nodes: make([]tally, 2)}
	a.settle(observe(0, 1, 2), fin.topic(0), 0, 0)    // complete
	a.settle(observe(0, 2, 3, 3), fin.topic(1), 1, 1) // complete, one duplicate
	b := groupResult{Groups: 1, Nodes: make([]tally, 2)}
	b.Nodes[1].Failed = 1
	b.settle(observe(0), fin.topic(2), 1, 2) // got refused 0, missing 1
	b.settle(observe(0), fin.topic(0), 0, 0) // missing 1 and 2

	merged := mergeViaJSON(t, a, b)
	wantNodes := []tally{
		{Subs: 2, Expected: 6, Delivered: 4, Missing: 2, SubsMissing: 1},
		{Subs: 2, Failed: 1, Expected: 4, Delivered: 3, Missing: 1, Dups: 1, SubsMissing: 1, SubsDup: 1},
	}
	if !reflect.DeepEqual(merged.Nodes, wantNodes) {
		t.Fatalf("nodes\n%+v\nwant\n%+v", merged.Nodes, wantNodes)
	}
	if complete, differ := merged.orderSplit(); complete != 2 || differ != 0 || len(merged.Orders) != 2 {
		t.Fatalf("orderSplit = %d, %d; orders %v", complete, differ, merged.Orders)
	}
	if merged.Subs != 4 || merged.Expected != 10 || merged.Delivered != 7 || merged.Missing != 3 || merged.Extra != 1 || merged.Dups != 1 {
		t.Fatalf("totals %+v", merged)
	}
}

// TestOrderSplit: subscribers of one topic that got the same events in
// another order are counted against the order most of them saw; missing
// ones are left out.
func TestOrderSplit(t *testing.T) {
	fin := finishSpec{Sent: 3}
	var r groupResult
	for _, order := range [][]int64{{0, 1, 2}, {0, 1, 2}, {0, 1, 1, 2}, {1, 0, 2}, {0, 1}} {
		var s seqTracker
		for _, n := range order {
			s.Observe(n)
		}
		r.settle(&s, fin, 0, 0)
	}
	if complete, differ := r.orderSplit(); complete != 4 || differ != 1 {
		t.Fatalf("orderSplit = %d, %d, want 4, 1 (orders %v)", complete, differ, r.Orders)
	}
	var out bytes.Buffer
	printDeliveries(&out, r)
	if !strings.Contains(out.String(), "order:       1 of the 4 subscribers") {
		t.Fatalf("summary does not report the order split:\n%s", out.String())
	}
}

// TestRoomsAgainstFloor: the floor in rooms mode delivers each room's
// events to that room's subscribers only, once each, the sender's before
// its reply; the rooms run says so (a subscriber getting another room's
// event would count as extra, one missing its own as missing).
func TestRoomsAgainstFloor(t *testing.T) {
	cfgF := NewFloorConfig()
	cfgF.Rooms = true
	cfgF.Timeout = 2 * time.Minute
	fl, err := startFloor(context.Background(), cfgF)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fl.Close)
	url := "ws://" + fl.Addr().String() + "/socket/websocket"
	cfg := smallRooms(url, url)
	var out bytes.Buffer
	res, err := runRooms(context.Background(), cfg, &out, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	checkRoomsComplete(t, res, cfg)
	// Frames that are not a broadcast of the subscriber's room: its join
	// reply and a heartbeat reply or two. Another room's events would be
	// 20 per subscriber here (24 events in 6 rooms).
	if g := res.groupResult; g.Other >= int64(cfg.Clients)*3 {
		t.Fatalf("subscribers got %d frames that are not their room's events", g.Other)
	}
	if st := fl.Stats(); st.Broadcasts != int64(cfg.Count) || st.Slow != 0 {
		t.Fatalf("floor stats %+v, want %d broadcasts, none slow", st, cfg.Count)
	}
}
