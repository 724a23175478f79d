package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Reply states of one publish.
const (
	pubPending uint8 = iota
	pubOK
	pubError
)

// refBase offsets publish refs past the join's "1": publish seq n is sent
// with ref n+refBase.
const refBase = 2

// pubWriteTimeout bounds one publish write (the server stopped reading).
const pubWriteTimeout = 10 * time.Second

// publisher is the one connection that pushes the broadcast event. One
// goroutine sends (run), one reads replies (read); counts are
// goroutine-safe.
type publisher struct {
	conn    net.Conn
	topic   []byte // JSON-encoded
	event   []byte // JSON-encoded
	size    int
	replies *histRecorder // push → reply time

	mu      sync.Mutex
	sentAt  []int64 // by seq, Unix ns; 0 until sent
	status  []uint8 // by seq
	reasons map[string]int64

	sent, ok, errs, self atomic.Int64
	// maxLag is how far behind its schedule a publish went out, in ns: a
	// lagging publisher means this process, not the server, was starved.
	maxLag    atomic.Int64
	closeCode atomic.Int64 // 0 while open; -1: ended without close frame
	readDone  chan struct{}
}

// startPublisher joins the topic on c's behalf (c is already joined) and
// starts reading; count bounds the publishes.
func startPublisher(c net.Conn, topic, event string, size, count int) *publisher {
	t, _ := json.Marshal(topic)
	e, _ := json.Marshal(event)
	p := &publisher{
		conn: c, topic: t, event: e, size: size,
		replies:  newHistRecorder(),
		sentAt:   make([]int64, count),
		status:   make([]uint8, count),
		reasons:  map[string]int64{},
		readDone: make(chan struct{}),
	}
	go func() {
		defer close(p.readDone)
		p.read()
	}()
	return p
}

// run publishes count events at rate per second, starting now, until done
// or ctx ends or the server closes the connection. It returns the number
// sent.
func (p *publisher) run(ctx context.Context, rate float64) int64 {
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	var frame, msg []byte
	for seq := range len(p.sentAt) {
		at := start.Add(time.Duration(seq) * interval)
		if d := time.Until(at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return p.sent.Load()
			case <-t.C:
			}
		}
		if ctx.Err() != nil || p.closeCode.Load() != 0 {
			break
		}
		if lag := int64(time.Since(at)); lag > p.maxLag.Load() {
			p.maxLag.Store(lag)
		}
		now := time.Now().UnixNano()
		msg = append(msg[:0], `["1","`...)
		msg = strconv.AppendInt(msg, int64(seq+refBase), 10)
		msg = append(msg, `",`...)
		msg = append(msg, p.topic...)
		msg = append(msg, ',')
		msg = append(msg, p.event...)
		msg = append(msg, ',')
		msg = appendPayload(msg, int64(seq), now, p.size)
		msg = append(msg, ']')
		frame = appendClientFrame(frame[:0], opText, msg, newMask())
		p.mu.Lock()
		p.sentAt[seq] = now
		p.mu.Unlock()
		_ = p.conn.SetWriteDeadline(time.Now().Add(pubWriteTimeout))
		if _, err := p.conn.Write(frame); err != nil {
			p.closeCode.CompareAndSwap(0, -1)
			break
		}
		p.sent.Add(1)
	}
	return p.sent.Load()
}

// read counts replies until the connection ends.
func (p *publisher) read() {
	for {
		data, _, err := wsutil.ReadServerData(p.conn)
		if err != nil {
			var ce wsutil.ClosedError
			if errors.As(err, &ce) {
				p.closeCode.Store(int64(ce.Code))
			} else {
				p.closeCode.CompareAndSwap(0, -1)
			}
			return
		}
		now := time.Now().UnixNano()
		var msg [5]json.RawMessage
		if json.Unmarshal(data, &msg) != nil {
			continue
		}
		if string(msg[3]) != `"phx_reply"` {
			p.self.Add(1) // our own broadcast, or anything else
			continue
		}
		var ref string
		var body struct {
			Status   string          `json:"status"`
			Response json.RawMessage `json:"response"`
		}
		if json.Unmarshal(msg[1], &ref) != nil || json.Unmarshal(msg[4], &body) != nil {
			continue
		}
		n, err := strconv.Atoi(ref)
		seq := n - refBase
		if err != nil || seq < 0 || seq >= len(p.status) {
			continue
		}
		p.mu.Lock()
		if p.status[seq] == pubPending {
			if body.Status == "ok" {
				p.status[seq] = pubOK
				p.ok.Add(1)
			} else {
				p.status[seq] = pubError
				p.errs.Add(1)
				p.reasons[replyReason(body.Status, body.Response)]++
			}
			if p.sentAt[seq] > 0 {
				p.replies.Record(now - p.sentAt[seq])
			}
		}
		p.mu.Unlock()
	}
}

// replyReason names a refusal: the response's "reason" if it has one,
// else the status.
func replyReason(status string, resp json.RawMessage) string {
	var r struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal(resp, &r) == nil && r.Reason != "" {
		return r.Reason
	}
	return status
}

// refused lists the publishes sent but not acknowledged ok.
func (p *publisher) refused() []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []int64
	for seq := range int(p.sent.Load()) {
		if p.status[seq] != pubOK {
			out = append(out, int64(seq))
		}
	}
	return out
}

// answered is the number of replies received.
func (p *publisher) answered() int64 { return p.ok.Load() + p.errs.Load() }

// reasonCounts copies the refusal reasons.
func (p *publisher) reasonCounts() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.reasons) == 0 {
		return nil
	}
	out := make(map[string]int64, len(p.reasons))
	for k, v := range p.reasons {
		out[k] = v
	}
	return out
}

// close sends a close frame, closes the connection and waits for the
// reader.
func (p *publisher) close() {
	_ = p.conn.SetWriteDeadline(time.Now().Add(time.Second))
	body := ws.NewCloseFrameBody(ws.StatusNormalClosure, "")
	_, _ = p.conn.Write(appendClientFrame(nil, opClose, body, newMask()))
	p.conn.Close()
	<-p.readDone
}
