package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The rooms scenario: clients spread over several gateway nodes that share
// one broker, each in one of many rooms, and events published to every
// room from every node in turn. What a subscriber receives from a node
// other than the one it is connected to went through the broker, so the
// figures are the cluster's, not one node's.
//
// Placement: the run-wide subscriber i dials node i mod N and joins room
// ⌊i/N⌋ mod R (placeAt), so every room has subscribers on every node.
// Publishing: event k goes to room r = k mod R, in round j = ⌊k/R⌋, with
// seq j (each room numbers its events from 0), pushed by a publisher
// socket on node (r + j) mod N. Each node has one publisher socket per
// MaxRoomsPerPublisher rooms, joined to all of them.

// Bounds and defaults of the rooms scenario.
const (
	// MaxRoomsNodes bounds the gateway URLs of one run.
	MaxRoomsNodes = 16
	// MaxRooms bounds -rooms.
	MaxRooms = 10_000
	// MaxRoomsPerPublisher is the most rooms one publisher socket joins:
	// the gateway's default channels per socket (Phoenix's
	// max_channels_per_transport).
	MaxRoomsPerPublisher = 100
	// MaxRoomsEvents bounds the events of a run: every publish keeps
	// about 21 bytes in its publisher.
	MaxRoomsEvents = 2_000_000
	// MaxRoomsPIDs bounds -pids.
	MaxRoomsPIDs = 32
	// DefaultRoomsClients, DefaultRooms, DefaultRoomsRate (events/s in
	// all) and DefaultRoomsDuration: 5,000 clients on each of three nodes
	// in 100 rooms, 10 events per room per second.
	DefaultRoomsClients  = 15_000
	DefaultRooms         = 100
	DefaultRoomsRate     = 1_000
	DefaultRoomsDuration = 20 * time.Second
	// DefaultRoomPrefix names room i "room:bench-<i>", under the room:*
	// route of the example configurations.
	DefaultRoomPrefix = "room:bench-"
	// DefaultRoomsTimeout bounds a whole run.
	DefaultRoomsTimeout = 3 * time.Minute
)

// RoomsConfig configures the rooms scenario.
type RoomsConfig struct {
	// URLs are the nodes' WebSocket endpoints (loopback only), 1..
	// MaxRoomsNodes.
	URLs []string
	// Rooms is the number of rooms, 1..MaxRooms; room i is RoomPrefix+i.
	Rooms      int
	RoomPrefix string
	// Clients is the number of subscribers, 1..MaxBroadcastSubs, spread
	// evenly over the nodes and the rooms.
	Clients int
	// PIDs are processes whose CPU is measured over the publish window
	// (the gateways, the broker).
	PIDs []namedPID
	// Baseline is how long the CPU of PIDs and of this tool is measured
	// with every client joined and nothing published; 0 skips it.
	Baseline time.Duration
	PublishConfig
}

// namedPID is a process to measure and the name it is reported under.
type namedPID struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
}

// NewRoomsConfig returns the defaults (with one node, where a real run
// names three).
func NewRoomsConfig() RoomsConfig {
	return RoomsConfig{
		URLs:          []string{"ws://127.0.0.1:4000/socket/websocket"},
		Rooms:         DefaultRooms,
		RoomPrefix:    DefaultRoomPrefix,
		Clients:       DefaultRoomsClients,
		Baseline:      DefaultBaseline,
		PublishConfig: newPublishConfig(DefaultRoomsRate, DefaultRoomsDuration, DefaultRoomsTimeout),
	}
}

func (c *RoomsConfig) fill() {
	c.PublishConfig.fill(DefaultRoomsTimeout)
	if c.RoomPrefix == "" {
		c.RoomPrefix = DefaultRoomPrefix
	}
}

// Validate checks the configuration; it refuses any target or source that
// is not a loopback address.
func (c RoomsConfig) Validate() error {
	if len(c.URLs) < 1 || len(c.URLs) > MaxRoomsNodes {
		return fmt.Errorf("%w: -urls: %d nodes, want 1..%d", ErrConfig, len(c.URLs), MaxRoomsNodes)
	}
	for _, u := range c.URLs {
		if err := validateWSURL("-urls", u); err != nil {
			return err
		}
	}
	if c.Rooms < 1 || c.Rooms > MaxRooms {
		return fmt.Errorf("%w: -rooms %d out of 1..%d", ErrConfig, c.Rooms, MaxRooms)
	}
	if len(c.RoomPrefix)+len(strconv.Itoa(MaxRooms)) > 255 {
		return fmt.Errorf("%w: -room-prefix longer than %d bytes", ErrConfig, 255-len(strconv.Itoa(MaxRooms)))
	}
	if c.Clients < 1 || c.Clients > MaxBroadcastSubs {
		return fmt.Errorf("%w: -clients %d out of 1..%d", ErrConfig, c.Clients, MaxBroadcastSubs)
	}
	if len(c.PIDs) > MaxRoomsPIDs {
		return fmt.Errorf("%w: -pids: more than %d", ErrConfig, MaxRoomsPIDs)
	}
	for _, p := range c.PIDs {
		if p.Name == "" || p.PID < 1 {
			return fmt.Errorf("%w: -pids: %q=%d needs a name and a pid ≥ 1", ErrConfig, p.Name, p.PID)
		}
	}
	if c.Baseline < 0 {
		return fmt.Errorf("%w: negative -baseline", ErrConfig)
	}
	if n := c.events(); n > MaxRoomsEvents {
		return fmt.Errorf("%w: %d events, at most %d", ErrConfig, n, MaxRoomsEvents)
	}
	return c.PublishConfig.validate(c.Clients, len(c.URLs)*c.plan().perNode())
}

// parsePIDs reads "name=pid,name=pid".
func parsePIDs(s string) ([]namedPID, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []namedPID
	for _, f := range strings.Split(s, ",") {
		name, num, ok := strings.Cut(strings.TrimSpace(f), "=")
		pid, err := strconv.Atoi(num)
		if !ok || name == "" || err != nil || pid < 1 {
			return nil, fmt.Errorf("%w: -pids: %q is not name=pid", ErrConfig, f)
		}
		out = append(out, namedPID{Name: name, PID: pid})
	}
	return out, nil
}

// parseURLs reads a comma-separated list.
func parseURLs(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// roomNames are the rooms' topics.
func (c RoomsConfig) roomNames() []string {
	out := make([]string, c.Rooms)
	for i := range out {
		out[i] = c.RoomPrefix + strconv.Itoa(i)
	}
	return out
}

func (c RoomsConfig) shared() PublishConfig { return c.PublishConfig }

// specs splits the subscribers over processes. Call after fill.
func (c RoomsConfig) specs() []groupSpec {
	base := c.groupSpec()
	base.URLs, base.Topics = c.URLs, c.roomNames()
	return splitSpecs(base, c.Clients, c.PerProcess)
}

func (c RoomsConfig) plan() roomsPlan { return roomsPlan{nodes: len(c.URLs), rooms: c.Rooms} }

// roomsPlan says where each event goes.
type roomsPlan struct {
	nodes, rooms int
}

// at is event k's room, the node whose publisher pushes it, and its seq
// in its room.
func (p roomsPlan) at(k int) (room, node int, seq int64) {
	room, round := k%p.rooms, k/p.rooms
	return room, (room + round) % p.nodes, int64(round)
}

// perNode is the number of publisher sockets on each node.
func (p roomsPlan) perNode() int {
	return (p.rooms + MaxRoomsPerPublisher - 1) / MaxRoomsPerPublisher
}

// publisher is the index, in node-major order, of the publisher socket of
// room on node, and the room's topic index on that socket.
func (p roomsPlan) publisher(room, node int) (pub, topic int) {
	return node*p.perNode() + room/MaxRoomsPerPublisher, room % MaxRoomsPerPublisher
}

// room is the room of topic index topic of publisher socket pub, and the
// node the socket is on: the inverse of publisher.
func (p roomsPlan) room(pub, topic int) (room, node int) {
	return (pub%p.perNode())*MaxRoomsPerPublisher + topic, pub / p.perNode()
}

// sentTo is how many of the first sent events went to room.
func (p roomsPlan) sentTo(room int, sent int64) int64 {
	n := sent / int64(p.rooms)
	if int64(room) < sent%int64(p.rooms) {
		n++
	}
	return n
}

// roomsNode is one node's share of a rooms run.
type roomsNode struct {
	URL string `json:"url"`
	tally
	// Published and OK count the pushes of this node's publishers.
	Published int64 `json:"published"`
	OK        int64 `json:"ok"`
}

// roomsResult is the outcome of a rooms run; it is also the -json line
// (durations in µs, CPU in seconds).
type roomsResult struct {
	Rooms      int `json:"rooms"`
	Clients    int `json:"clients"`
	Publishers int `json:"publishers"`
	// PubClosed counts publisher sockets that ended during the run.
	PubClosed int `json:"publishers_closed"`
	// PubReceived counts the broadcasts the publisher sockets received
	// (they are joined to the rooms they push to).
	PubReceived int64       `json:"publishers_received"`
	ByNode      []roomsNode `json:"by_node"`
	runResult
	// Nodes and Orders hide groupResult's from the JSON line (ByNode and
	// the two order figures carry them); always nil.
	Nodes  []tally            `json:"nodes,omitempty"`
	Orders []map[uint64]int64 `json:"orders,omitempty"`
	// OrderComplete subscribers got every event of their room, and
	// OrderDiffers of them got them in another order than most of their
	// room did (groupResult.orderSplit).
	OrderComplete int64 `json:"order_complete"`
	OrderDiffers  int64 `json:"order_differs"`
	// CPU is each measured process's CPU seconds over the window.
	CPU []pidCPU `json:"cpu,omitempty"`
	// ClientIdlePct is this tool's CPU use before publishing.
	ClientIdlePct float64 `json:"client_idle_cpu_pct"`
}

// pidCPU is one measured process's CPU over the window, and its use (in %
// of a core) with every client joined but nothing published.
type pidCPU struct {
	namedPID
	Seconds float64 `json:"cpu_s"`
	IdlePct float64 `json:"idle_cpu_pct"`
}

// runRooms runs the rooms scenario. Progress goes to out; the result is
// returned (also when err is not nil, with what was counted).
func runRooms(ctx context.Context, cfg RoomsConfig, out, stderr io.Writer) (roomsResult, error) {
	cfg.fill()
	res := roomsResult{Rooms: cfg.Rooms, Clients: cfg.Clients, runResult: runResult{Rate: cfg.Rate, PayloadBytes: cfg.PayloadBytes, Planned: cfg.events()}}
	ctx, groups, stop, err := startScenario(ctx, cfg, stderr)
	defer stop()
	if err != nil {
		return res, err
	}
	res.Processes = len(groups)
	fmt.Fprintf(out, "rooms: %d clients on %d node(s) in %d rooms, %d process(es); %d events at %g/s, %d-byte payload\n",
		cfg.Clients, len(cfg.URLs), cfg.Rooms, len(groups), cfg.events(), cfg.Rate, cfg.PayloadBytes)
	ready, err := waitReady(ctx, cfg.Clients, cfg.Progress, groups, out)
	if err != nil {
		return res, err
	}

	meter := cpuMeter{groups: groups}
	for _, p := range cfg.PIDs {
		meter.pids = append(meter.pids, p.PID)
	}
	var idle cpuSample
	if cfg.Baseline > 0 {
		s0 := meter.sample()
		if err := sleepCtx(ctx, cfg.Baseline); err != nil {
			return res, err
		}
		idle = meter.sample().since(s0)
	}
	idlePct := func(s float64) float64 { return math.Round(1000*s/cfg.Baseline.Seconds()) / 10 }

	plan := cfg.plan()
	pubs, err := dialPublishers(ctx, cfg, plan)
	defer func() {
		for _, p := range pubs {
			p.close()
		}
	}()
	if err != nil {
		return res, err
	}
	res.Publishers = len(pubs)
	// joined[r] is room r's subscribers: each of its accepted events is
	// expected by every one of them.
	joined := ready.JoinedByTopic
	if len(joined) == 0 {
		joined = []int{ready.Opened}
	}

	var sent atomic.Int64
	w, runErr := watch(ctx, watchSpec{
		groups: groups,
		meter:  meter,
		publish: func(ctx context.Context) {
			interval := time.Duration(float64(time.Second) / cfg.Rate)
			start := time.Now()
			for k := range cfg.events() {
				at := start.Add(time.Duration(k) * interval)
				if !waitUntil(ctx, at) {
					return
				}
				room, node, seq := plan.at(k)
				pi, t := plan.publisher(room, node)
				if pubs[pi].send(t, seq, at) != nil {
					return
				}
				sent.Add(1)
			}
		},
		counts: func() pubCounts {
			c := pubCounts{sent: sent.Load()}
			for pi, p := range pubs {
				c.ok += p.ok.Load()
				c.errs += p.errs.Load()
				for t := range p.okByTopic {
					r, _ := plan.room(pi, t)
					c.expected += p.okByTopic[t].Load() * int64(joined[r%len(joined)])
				}
			}
			return c
		},
		drain: cfg.Drain, progress: cfg.Progress, out: out,
	})

	// What each room was sent and which of its seqs were refused.
	res.Sent = sent.Load()
	fin := finishSpec{Topics: make([]finishSpec, cfg.Rooms)}
	for r := range fin.Topics {
		fin.Topics[r].Sent = plan.sentTo(r, res.Sent)
	}
	res.ByNode = make([]roomsNode, len(cfg.URLs))
	for pi, p := range pubs {
		for t, seqs := range p.refused() {
			r, _ := plan.room(pi, t)
			fin.Topics[r].Refused = append(fin.Topics[r].Refused, seqs...)
		}
		_, node := plan.room(pi, 0)
		n := &res.ByNode[node]
		n.Published += p.sent.Load()
		n.OK += p.ok.Load()
		res.OK += p.ok.Load()
		res.Errors += p.errs.Load()
		res.PubReceived += p.self.Load()
		res.PubLagMaxUs = max(res.PubLagMaxUs, us(p.maxLag.Load()))
		if p.closeCode.Load() != 0 {
			res.PubClosed++
		}
		for k, v := range p.reasonCounts() {
			if res.Reasons == nil {
				res.Reasons = map[string]int64{}
			}
			res.Reasons[k] += v
		}
	}
	gr, err := finishGroups(groups, fin)
	runErr = errors.Join(runErr, err)
	var replies hist
	for _, p := range pubs {
		replies.Merge(p.replies.Snapshot())
	}
	res.settle(gr, replies, w)
	for i := range res.ByNode {
		res.ByNode[i].URL = cfg.URLs[i]
		switch {
		case i < len(gr.Nodes):
			res.ByNode[i].tally = gr.Nodes[i]
		case len(cfg.URLs) == 1:
			res.ByNode[i].tally = gr.tally
		}
	}
	res.OrderComplete, res.OrderDiffers = gr.orderSplit()
	for i, p := range cfg.PIDs {
		c := pidCPU{namedPID: p, Seconds: w.cpu.pids[i]}
		if cfg.Baseline > 0 {
			c.IdlePct = idlePct(idle.pids[i])
		}
		res.CPU = append(res.CPU, c)
	}
	if cfg.Baseline > 0 {
		res.ClientIdlePct = idlePct(idle.client)
	}
	return res, runErr
}

// dialPublishers opens the publisher sockets in node-major order, each
// joined to its rooms, from the source addresses after the subscribers'.
func dialPublishers(ctx context.Context, cfg RoomsConfig, plan roomsPlan) ([]*publisher, error) {
	rooms := cfg.roomNames()
	per := plan.perNode()
	// Each publisher's share of the events, so that it is sized exactly.
	counts := make([]int, len(cfg.URLs)*per)
	for k := range cfg.events() {
		room, node, _ := plan.at(k)
		pi, _ := plan.publisher(room, node)
		counts[pi]++
	}
	var pubs []*publisher
	for node, url := range cfg.URLs {
		for c := range per {
			topics := rooms[c*MaxRoomsPerPublisher : min((c+1)*MaxRoomsPerPublisher, len(rooms))]
			var local net.IP
			if len(cfg.LocalIPs) > 0 {
				local = cfg.LocalIPs[(cfg.Clients+len(pubs))%len(cfg.LocalIPs)]
			}
			conn, err := dialJoined(ctx, url, local, cfg.DialTimeout, publisherJoins(topics)...)
			if err != nil {
				return pubs, fmt.Errorf("bench: publisher on node %d (%s): %w", node+1, url, err)
			}
			pubs = append(pubs, startPublisher(conn, topics, cfg.Event, cfg.PayloadBytes, counts[len(pubs)]))
		}
	}
	return pubs, nil
}

// printRooms writes the human summary.
func printRooms(w io.Writer, r roomsResult) {
	fmt.Fprintf(w, "clients:     %d joined, %d failed, %d process(es), %d rooms\n", r.Subs, r.Failed, r.Processes, r.Rooms)
	for i, n := range r.ByNode {
		fmt.Fprintf(w, "node %d:      %s: joined %d, failed %d | published %d, ok %d | expected %d, missing %d (%d subscribers), duplicates %d (%d subscribers)\n",
			i+1, n.URL, n.Subs, n.Failed, n.Published, n.OK, n.Expected, n.Missing, n.SubsMissing, n.Dups, n.SubsDup)
	}
	fmt.Fprintf(w, "publishers:  %d sockets; ", r.Publishers)
	r.printPublished(w)
	if r.PubClosed > 0 {
		fmt.Fprintf(w, "; %d closed by the server", r.PubClosed)
	}
	fmt.Fprintf(w, "; worst lag behind schedule %s\n", fmtUs(r.PubLagMaxUs))
	r.printOutcome(w)
	perDelivery := func(s float64) float64 {
		if r.Delivered == 0 {
			return 0
		}
		return s * 1e6 / float64(r.Delivered)
	}
	for _, c := range r.CPU {
		fmt.Fprintf(w, "cpu:         %s (pid %d): %.2f s (%.0f%% of a core), %.2f µs/delivery; idle %.1f%%\n",
			c.Name, c.PID, c.Seconds, pct(c.Seconds, r.WindowSec), perDelivery(c.Seconds), c.IdlePct)
	}
	fmt.Fprintf(w, "client:      CPU %.2f s (%.0f%% of a core), %.2f µs/delivery, over the window; idle %.1f%%\n",
		r.ClientCPU, pct(r.ClientCPU, r.WindowSec), perDelivery(r.ClientCPU), r.ClientIdlePct)
	measured := r.ClientCPU
	for _, c := range r.CPU {
		measured += c.Seconds
	}
	r.printMachine(w, measured)
}

func roomsMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := NewRoomsConfig()
	fs := flag.NewFlagSet("rooms", flag.ContinueOnError)
	fs.SetOutput(stderr)
	urls := fs.String("urls", strings.Join(cfg.URLs, ","), "comma-separated WebSocket endpoints of the nodes (loopback only)")
	fs.IntVar(&cfg.Rooms, "rooms", cfg.Rooms, fmt.Sprintf("rooms (max %d)", MaxRooms))
	fs.StringVar(&cfg.RoomPrefix, "room-prefix", cfg.RoomPrefix, "room i is <prefix><i>")
	fs.IntVar(&cfg.Clients, "clients", cfg.Clients, fmt.Sprintf("subscribers in all (max %d; over -per-process, in worker processes)", MaxBroadcastSubs))
	pids := fs.String("pids", "", "processes whose CPU is measured, name=pid,… (e.g. gw1=123,redis=456)")
	fs.DurationVar(&cfg.Baseline, "baseline", cfg.Baseline, "idle CPU measurement before publishing; 0 skips")
	parsed := cfg.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := parsed(); err != nil {
		return err
	}
	cfg.URLs = parseURLs(*urls)
	var err error
	if cfg.PIDs, err = parsePIDs(*pids); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	raiseFileLimit(stderr)
	res, err := runRooms(ctx, cfg, stdout, stderr)
	return report(stdout, res.Subs > 0 || res.Sent > 0, cfg.JSON, func(w io.Writer) { printRooms(w, res) }, res, err)
}
