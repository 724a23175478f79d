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

// refBase offsets publish refs past a one-topic publisher's join ("1"):
// its publish seq n is sent with ref n+refBase. A publisher joined to k
// topics (join refs 1..k) offsets them by k+1.
const refBase = 2

// pubWriteTimeout bounds one publish write (the server stopped reading).
const pubWriteTimeout = 10 * time.Second

// publisher is a connection that pushes the broadcast event to the topics
// it joined (join_ref i+1 for topic index i). One goroutine sends (run or
// send), one reads replies (read); counts are goroutine-safe.
type publisher struct {
	conn     net.Conn
	topics   [][]byte // JSON-encoded, by topic index
	joinRefs []string // by topic index
	refBase  int
	event    []byte // JSON-encoded
	size     int
	replies  *histRecorder // push → reply time

	mu     sync.Mutex
	sentAt []int64 // by publish index (the i-th publish), Unix ns; 0 until sent
	status []uint8 // by publish index
	// items are the topic and seq of each publish, when there are several
	// topics; with one, publish i is seq i.
	items   []pubItem
	reasons map[string]int64
	// okByTopic counts ok replies by topic index.
	okByTopic []atomic.Int64
	// the sender's scratch buffers
	frame, msg []byte

	sent, ok, errs, self atomic.Int64
	// maxLag is how far behind its schedule a publish went out, in ns: a
	// lagging publisher means this process, not the server, was starved.
	maxLag    atomic.Int64
	closeCode atomic.Int64 // 0 while open; -1: ended without close frame
	readDone  chan struct{}
}

// pubItem is what one publish of a several-topic publisher carried.
type pubItem struct {
	topic int32
	seq   int64
}

// startPublisher starts reading c, already joined to topics with join
// refs 1..len(topics) (see publisherJoins); count bounds the publishes.
func startPublisher(c net.Conn, topics []string, event string, size, count int) *publisher {
	e, _ := json.Marshal(event)
	p := &publisher{
		conn: c, event: e, size: size,
		refBase:   len(topics) + 1,
		replies:   newHistRecorder(),
		sentAt:    make([]int64, count),
		status:    make([]uint8, count),
		reasons:   map[string]int64{},
		okByTopic: make([]atomic.Int64, len(topics)),
		readDone:  make(chan struct{}),
	}
	for i, t := range topics {
		b, _ := json.Marshal(t)
		p.topics = append(p.topics, b)
		p.joinRefs = append(p.joinRefs, strconv.Itoa(i+1))
	}
	if len(topics) > 1 {
		p.items = make([]pubItem, count)
	}
	go func() {
		defer close(p.readDone)
		p.read()
	}()
	return p
}

// publisherJoins are the joins of a publisher of topics: join_ref and
// ref i+1 for topic i.
func publisherJoins(topics []string) [][]byte {
	out := make([][]byte, len(topics))
	for i, t := range topics {
		out[i] = joinFrameRef(t, i+1)
	}
	return out
}

// run publishes count events to topic 0 at rate per second, starting now,
// until done or ctx ends or the server closes the connection. It returns
// the number sent.
func (p *publisher) run(ctx context.Context, rate float64) int64 {
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	for seq := range len(p.sentAt) {
		at := start.Add(time.Duration(seq) * interval)
		if !waitUntil(ctx, at) || p.closeCode.Load() != 0 {
			break
		}
		if p.send(0, int64(seq), at) != nil {
			break
		}
	}
	return p.sent.Load()
}

// errPublisherDone: the publisher's connection ended or it sent all it
// was sized for.
var errPublisherDone = errors.New("bench: publisher done")

// send pushes the publisher's next publish: seq of topic index t, due at
// at (for the lag figure), stamped with the time it is written. Only one
// goroutine may send.
func (p *publisher) send(t int, seq int64, at time.Time) error {
	i := int(p.sent.Load())
	if i >= len(p.sentAt) || p.closeCode.Load() != 0 {
		return errPublisherDone
	}
	if lag := int64(time.Since(at)); lag > p.maxLag.Load() {
		p.maxLag.Store(lag)
	}
	now := time.Now().UnixNano()
	msg := append(p.msg[:0], '[')
	msg = strconv.AppendQuote(msg, p.joinRefs[t])
	msg = append(msg, `,"`...)
	msg = strconv.AppendInt(msg, int64(i+p.refBase), 10)
	msg = append(msg, `",`...)
	msg = append(msg, p.topics[t]...)
	msg = append(msg, ',')
	msg = append(msg, p.event...)
	msg = append(msg, ',')
	msg = appendPayload(msg, seq, now, p.size)
	msg = append(msg, ']')
	p.msg = msg
	p.frame = appendClientFrame(p.frame[:0], opText, msg, newMask())
	p.mu.Lock()
	p.sentAt[i] = now
	if p.items != nil {
		p.items[i] = pubItem{topic: int32(t), seq: seq}
	}
	p.mu.Unlock()
	_ = p.conn.SetWriteDeadline(time.Now().Add(pubWriteTimeout))
	if _, err := p.conn.Write(p.frame); err != nil {
		p.closeCode.CompareAndSwap(0, -1)
		return err
	}
	p.sent.Add(1)
	return nil
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
		i := n - p.refBase
		if err != nil || i < 0 || i >= len(p.status) {
			continue
		}
		p.mu.Lock()
		if p.status[i] == pubPending {
			if body.Status == "ok" {
				p.status[i] = pubOK
				p.ok.Add(1)
				p.okByTopic[p.topicOf(i)].Add(1)
			} else {
				p.status[i] = pubError
				p.errs.Add(1)
				p.reasons[replyReason(body.Status, body.Response)]++
			}
			if p.sentAt[i] > 0 {
				p.replies.Record(now - p.sentAt[i])
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

// topicOf is the topic index of publish i; called with mu held.
func (p *publisher) topicOf(i int) int {
	if p.items == nil {
		return 0
	}
	return int(p.items[i].topic)
}

// refused lists, by topic index, the seqs of the publishes sent but not
// acknowledged ok.
func (p *publisher) refused() [][]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([][]int64, len(p.topics))
	for i := range int(p.sent.Load()) {
		if p.status[i] == pubOK {
			continue
		}
		if p.items == nil {
			out[0] = append(out[0], int64(i))
		} else {
			it := p.items[i]
			out[it.topic] = append(out[it.topic], it.seq)
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
