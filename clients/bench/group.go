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
	Event string `json:"event"`
	Subs  int    `json:"subs"`
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
}

// finishSpec tells a group what was published.
type finishSpec struct {
	// Sent publishes carried sequence numbers 0..Sent-1.
	Sent int64 `json:"sent"`
	// Refused are the numbers the server did not accept (error reply, or
	// no reply at all): they are not expected anywhere.
	Refused []int64 `json:"refused"`
}

// groupResult is the settled outcome of one group; results of several
// groups merge into one.
type groupResult struct {
	Groups int `json:"groups"`
	Subs   int `json:"subs"`   // subscribers joined
	Failed int `json:"failed"` // subscribers that could not join
	// Expected = Subs × accepted publishes = Delivered + Missing.
	Expected  int64 `json:"expected"`
	Delivered int64 `json:"delivered"` // distinct accepted numbers received
	Missing   int64 `json:"missing"`
	Dups      int64 `json:"duplicates"`
	Late      int64 `json:"late"`  // received after a higher number
	Extra     int64 `json:"extra"` // deliveries of refused publishes
	// SubsMissing and SubsDup count subscribers with at least one missing
	// or duplicate delivery; MaxMissing is the worst subscriber's count.
	SubsMissing int64 `json:"subs_missing"`
	SubsDup     int64 `json:"subs_dup"`
	MaxMissing  int64 `json:"max_missing"`
	// Closed counts subscribers whose socket ended during the run, by
	// close code ("none" when it ended without a close frame).
	Closed     int64            `json:"closed"`
	CloseCodes map[string]int64 `json:"close_codes,omitempty"`
	Other      int64            `json:"other"` // frames that are not broadcasts
	Bad        int64            `json:"bad"`   // broadcasts without seq and ts
	Latency    hist             `json:"latency"`
}

// merge adds o to r.
func (r *groupResult) merge(o groupResult) {
	r.Groups += o.Groups
	r.Subs += o.Subs
	r.Failed += o.Failed
	r.Expected += o.Expected
	r.Delivered += o.Delivered
	r.Missing += o.Missing
	r.Dups += o.Dups
	r.Late += o.Late
	r.Extra += o.Extra
	r.SubsMissing += o.SubsMissing
	r.SubsDup += o.SubsDup
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
}

// settle is one subscriber's contribution to a result.
func (r *groupResult) settle(t *seqTracker, f finishSpec) {
	accepted := f.Sent - int64(len(f.Refused))
	var got int64 // refused numbers received anyway
	for _, n := range f.Refused {
		if t.Has(n) {
			got++
		}
	}
	delivered := t.Distinct() - got
	missing := max(accepted-delivered, 0)
	r.Subs++
	r.Expected += accepted
	r.Delivered += delivered
	r.Missing += missing
	r.Dups += t.Dups()
	r.Late += t.Late()
	r.Extra += got
	if missing > 0 {
		r.SubsMissing++
	}
	if t.Dups() > 0 {
		r.SubsDup++
	}
	r.MaxMissing = max(r.MaxMissing, missing)
}

// joinFrame is the V2 join every connection sends (join_ref and ref "1":
// each connection has its own ref space).
func joinFrame(topic string) []byte {
	t, _ := json.Marshal(topic)
	return []byte(`["1","1",` + string(t) + `,"phx_join",{}]`)
}

// dialJoined dials url from local (nil: the kernel chooses), upgrades with
// vsn=2.0.0, sends join and waits for an ok reply, all within timeout.
func dialJoined(ctx context.Context, url string, local net.IP, timeout time.Duration, join []byte) (net.Conn, error) {
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
	if _, err := c.Write(appendClientFrame(nil, opText, join, newMask())); err != nil {
		c.Close()
		return nil, err
	}
	for {
		data, _, err := wsutil.ReadServerData(c)
		if err != nil {
			c.Close()
			return nil, err
		}
		var msg [5]json.RawMessage
		var body struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(data, &msg) != nil || string(msg[3]) != `"phx_reply"` {
			continue // not the reply (a broadcast racing the join)
		}
		if json.Unmarshal(msg[4], &body) != nil || body.Status != "ok" {
			c.Close()
			return nil, fmt.Errorf("bench: join refused: %s", data)
		}
		_ = c.SetDeadline(time.Time{})
		return c, nil
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
