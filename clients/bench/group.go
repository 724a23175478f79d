package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// A group is one process's share of the subscribers of a broadcast run:
// either held in this process (subGroup) or in a broadcast-worker child
// (procGroup). The orchestrator (runBroadcast) sees both the same way.
type group interface {
	// progress is a snapshot; goroutine-safe.
	progress() groupProgress
	// finish stops reading, settles the counts against what was published
	// and closes every connection. Called once.
	finish(f finishSpec) (groupResult, error)
	// close releases everything; safe after finish and more than once.
	close()
}

// groupSpec is what a group needs to open its subscribers. It travels as
// JSON to worker processes.
type groupSpec struct {
	URL   string `json:"url"`
	Topic string `json:"topic"`
	// URLs and Topics, when set, replace URL and Topic: the run-wide
	// subscriber i dials and joins the node and topic placeAt(i, …)
	// names (the rooms scenario: several nodes, one topic per room).
	URLs   []string `json:"urls,omitempty"`
	Topics []string `json:"topics,omitempty"`
	Event  string   `json:"event"`
	Subs   int      `json:"subs"`
	// FirstIndex is the run-wide index of the group's first subscriber, so
	// that source addresses stay round-robin across processes.
	FirstIndex  int           `json:"first_index"`
	LocalIPs    []string      `json:"local_ips"`
	Loops       int           `json:"loops"`
	RampRate    float64       `json:"ramp_rate"`
	Concurrency int           `json:"concurrency"`
	DialTimeout time.Duration `json:"dial_timeout"`
	Heartbeat   time.Duration `json:"heartbeat"`
}

// urls are the nodes the group's subscribers dial, by node index.
func (s groupSpec) urls() []string {
	if len(s.URLs) > 0 {
		return s.URLs
	}
	return []string{s.URL}
}

// topics are the topics the group's subscribers join, by topic index.
func (s groupSpec) topics() []string {
	if len(s.Topics) > 0 {
		return s.Topics
	}
	return []string{s.Topic}
}

// placeAt is where the run-wide subscriber i goes: node i mod nodes, and
// topic ⌊i / nodes⌋ mod topics, so that consecutive subscribers take turns
// over the nodes and every topic has subscribers on every node (once there
// are nodes × topics of them).
func placeAt(i, nodes, topics int) (node, topic int) {
	return i % nodes, (i / nodes) % topics
}

// groupProgress is a running count. Distinct counts deliveries of
// sequence numbers not seen before by that subscriber (whatever was
// published); the settled figures come with groupResult.
type groupProgress struct {
	Ready    bool    `json:"ready"` // every subscriber dialled (joined or failed)
	Opened   int     `json:"opened"`
	Failed   int     `json:"failed"`
	Distinct int64   `json:"distinct"`
	Dups     int64   `json:"dups"`
	Other    int64   `json:"other"`
	Bad      int64   `json:"bad"`
	Closed   int64   `json:"closed"`
	CPU      float64 `json:"cpu"` // worker process CPU seconds; 0 in-process
	Hist     hist    `json:"hist"`
	Err      string  `json:"err,omitempty"`
	// JoinedByNode, FailedByNode and JoinedByTopic break Opened and Failed
	// down by node and topic index; nil with one node and one topic.
	JoinedByNode  []int `json:"joined_by_node,omitempty"`
	FailedByNode  []int `json:"failed_by_node,omitempty"`
	JoinedByTopic []int `json:"joined_by_topic,omitempty"`
}

// add sums q into p (Ready is left alone; Err keeps the first).
func (p *groupProgress) add(q groupProgress) {
	p.Opened += q.Opened
	p.Failed += q.Failed
	p.Distinct += q.Distinct
	p.Dups += q.Dups
	p.Other += q.Other
	p.Bad += q.Bad
	p.Closed += q.Closed
	p.CPU += q.CPU
	p.Hist.Merge(q.Hist)
	if p.Err == "" {
		p.Err = q.Err
	}
	p.JoinedByNode = addInts(p.JoinedByNode, q.JoinedByNode)
	p.FailedByNode = addInts(p.FailedByNode, q.FailedByNode)
	p.JoinedByTopic = addInts(p.JoinedByTopic, q.JoinedByTopic)
}

// addInts adds b into a element by element, growing a as needed.
func addInts[T int | int64](a, b []T) []T {
	for len(a) < len(b) {
		a = append(a, 0)
	}
	for i, v := range b {
		a[i] += v
	}
	return a
}

// finishSpec tells a group what was published.
type finishSpec struct {
	// Sent publishes carried sequence numbers 0..Sent-1.
	Sent int64 `json:"sent"`
	// Refused are the numbers the server did not accept (error reply, or
	// no reply at all): they are not expected anywhere.
	Refused []int64 `json:"refused"`
	// Topics, when set, has one entry per topic index and replaces Sent
	// and Refused: each topic numbers its publishes from 0.
	Topics []finishSpec `json:"topics,omitempty"`
}

// topic is what was published to topic index t.
func (f finishSpec) topic(t int) finishSpec {
	if len(f.Topics) == 0 {
		return f
	}
	if t < len(f.Topics) {
		return f.Topics[t]
	}
	return finishSpec{}
}

// tally is what a result counts of its subscribers' deliveries, in all
// (groupResult) and by node (groupResult.Nodes).
type tally struct {
	Subs   int `json:"subs"`   // subscribers joined
	Failed int `json:"failed"` // subscribers that could not join
	// Expected = Σ accepted publishes of each subscriber's topic =
	// Delivered + Missing.
	Expected  int64 `json:"expected"`
	Delivered int64 `json:"delivered"` // distinct accepted numbers received
	Missing   int64 `json:"missing"`
	Dups      int64 `json:"duplicates"`
	// SubsMissing and SubsDup count subscribers with at least one missing
	// or duplicate delivery.
	SubsMissing int64 `json:"subs_missing"`
	SubsDup     int64 `json:"subs_dup"`
}

func (n *tally) add(o tally) {
	n.Subs += o.Subs
	n.Failed += o.Failed
	n.Expected += o.Expected
	n.Delivered += o.Delivered
	n.Missing += o.Missing
	n.Dups += o.Dups
	n.SubsMissing += o.SubsMissing
	n.SubsDup += o.SubsDup
}

// groupResult is the settled outcome of one group; results of several
// groups merge into one.
type groupResult struct {
	Groups int `json:"groups"`
	tally
	Late       int64 `json:"late"`        // received after a higher number
	Extra      int64 `json:"extra"`       // deliveries of refused publishes
	MaxMissing int64 `json:"max_missing"` // the worst subscriber's count
	// Closed counts subscribers whose socket ended during the run, by
	// close code ("none" when it ended without a close frame).
	Closed     int64            `json:"closed"`
	CloseCodes map[string]int64 `json:"close_codes,omitempty"`
	Other      int64            `json:"other"` // frames that are not broadcasts
	Bad        int64            `json:"bad"`   // broadcasts without seq and ts
	Latency    hist             `json:"latency"`
	// Nodes breaks the tally down by the node the subscribers dialled;
	// nil with one node.
	Nodes []tally `json:"nodes,omitempty"`
	// Orders counts, by topic index, the subscribers that received every
	// event of their topic by the digest of the order they received them
	// in (seqTracker.Order). A broker orders each topic's events, so all
	// of a topic's subscribers, on whatever node, should share one digest.
	Orders []map[uint64]int64 `json:"orders,omitempty"`
}

// orderSplit counts the subscribers that received every event of their
// topic, and those of them that received them in another order than most
// of their topic's subscribers did.
func (r groupResult) orderSplit() (complete, differ int64) {
	for _, m := range r.Orders {
		var n, most int64
		for _, c := range m {
			n += c
			most = max(most, c)
		}
		complete += n
		differ += n - most
	}
	return complete, differ
}

// merge adds o to r.
func (r *groupResult) merge(o groupResult) {
	r.Groups += o.Groups
	r.tally.add(o.tally)
	r.Late += o.Late
	r.Extra += o.Extra
	r.MaxMissing = max(r.MaxMissing, o.MaxMissing)
	r.Closed += o.Closed
	for k, v := range o.CloseCodes {
		if r.CloseCodes == nil {
			r.CloseCodes = map[string]int64{}
		}
		r.CloseCodes[k] += v
	}
	r.Other += o.Other
	r.Bad += o.Bad
	r.Latency.Merge(o.Latency)
	for len(r.Nodes) < len(o.Nodes) {
		r.Nodes = append(r.Nodes, tally{})
	}
	for i, n := range o.Nodes {
		r.Nodes[i].add(n)
	}
	for t, m := range o.Orders {
		for d, c := range m {
			r.addOrder(t, d, c)
		}
	}
}

// addOrder counts n subscribers of topic t with order digest d.
func (r *groupResult) addOrder(t int, d uint64, n int64) {
	for len(r.Orders) <= t {
		r.Orders = append(r.Orders, nil)
	}
	if r.Orders[t] == nil {
		r.Orders[t] = map[uint64]int64{}
	}
	r.Orders[t][d] += n
}

// settle is one subscriber's contribution to a result; f is what was
// published to its topic (index topic). With r.Nodes set, it also counts
// in r.Nodes[node].
func (r *groupResult) settle(t *seqTracker, f finishSpec, node, topic int) {
	accepted := f.Sent - int64(len(f.Refused))
	var got int64 // refused numbers received anyway
	for _, n := range f.Refused {
		if t.Has(n) {
			got++
		}
	}
	delivered := t.Distinct() - got
	missing := max(accepted-delivered, 0)
	one := tally{Subs: 1, Expected: accepted, Delivered: delivered, Missing: missing, Dups: t.Dups()}
	if missing > 0 {
		one.SubsMissing = 1
	}
	if t.Dups() > 0 {
		one.SubsDup = 1
	}
	r.tally.add(one)
	if node < len(r.Nodes) {
		r.Nodes[node].add(one)
	}
	r.Late += t.Late()
	r.Extra += got
	r.MaxMissing = max(r.MaxMissing, missing)
	if missing == 0 && got == 0 {
		r.addOrder(topic, t.Order(), 1)
	}
}

// joinFrame is the V2 join every subscriber sends (join_ref and ref "1":
// each connection has its own ref space).
func joinFrame(topic string) []byte { return joinFrameRef(topic, 1) }

// joinFrameRef is a V2 join with join_ref and ref n, for a socket that
// joins several topics (each channel needs its own join_ref).
func joinFrameRef(topic string, n int) []byte {
	t, _ := json.Marshal(topic)
	r := strconv.Itoa(n)
	return []byte(`["` + r + `","` + r + `",` + string(t) + `,"phx_join",{}]`)
}

// dialJoined dials url from local (nil: the kernel chooses), upgrades with
// vsn=2.0.0, sends each join in turn and waits for its ok reply, all
// within timeout.
func dialJoined(ctx context.Context, url string, local net.IP, timeout time.Duration, joins ...[]byte) (net.Conn, error) {
	nd := &net.Dialer{Timeout: timeout}
	if local != nil {
		nd.LocalAddr = &net.TCPAddr{IP: local}
	}
	d := ws.Dialer{Timeout: timeout, NetDial: nd.DialContext}
	c, br, _, err := d.Dial(ctx, url+"?vsn=2.0.0")
	if err != nil {
		return nil, err
	}
	if br != nil {
		// A server says nothing before the join; bytes here would be lost.
		n := br.Buffered()
		ws.PutReader(br)
		if n > 0 {
			c.Close()
			return nil, fmt.Errorf("bench: %d unexpected bytes after the handshake", n)
		}
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	for _, join := range joins {
		if err := joinOn(c, join); err != nil {
			c.Close()
			return nil, err
		}
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// joinOn sends one join on c and reads until its reply: the only reply
// in flight, since nothing else has been pushed yet.
func joinOn(c net.Conn, join []byte) error {
	if _, err := c.Write(appendClientFrame(nil, opText, join, newMask())); err != nil {
		return err
	}
	for {
		data, _, err := wsutil.ReadServerData(c)
		if err != nil {
			return err
		}
		var msg [5]json.RawMessage
		var body struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(data, &msg) != nil || string(msg[3]) != `"phx_reply"` {
			continue // not the reply (a broadcast racing the join)
		}
		if json.Unmarshal(msg[4], &body) != nil || body.Status != "ok" {
			return fmt.Errorf("bench: join refused: %s", data)
		}
		return nil
	}
}

// newMask returns a random masking key.
func newMask() [4]byte {
	var k [4]byte
	_, _ = rand.Read(k[:])
	return k
}

// heartbeatFrame is a masked V2 heartbeat with ref n.
func heartbeatFrame(n uint64) []byte {
	p := []byte(`[null,"` + strconv.FormatUint(n, 10) + `","phoenix","heartbeat",{}]`)
	return appendClientFrame(nil, opText, p, newMask())
}
