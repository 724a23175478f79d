package main

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// actions: Clients sockets, each joined to one room, push Event (echo by
// default: the echo backend replies with the payload) at Rate pushes a
// second in all, round-robin over the sockets. Each push's reply latency
// (push written → reply read) is recorded; a push sent at its scheduled
// time whatever the earlier ones are doing, so a slow reply does not hide
// the ones queued behind it.

// actRefBase offsets push refs past the join's ref "1": push k has ref
// k+actRefBase.
const actRefBase = 2

// heartbeatMsg is a V2 heartbeat; its ref is not a number, so it never
// collides with a push's.
var heartbeatMsg = []byte(`[null,"hb","phoenix","heartbeat",{}]`)

// rampDo calls f(k) for k in 0..n-1, starting at most rate a second with
// at most conc running; it stops early when ctx ends.
func rampDo(ctx context.Context, n int, rate float64, conc int, f func(k int)) {
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(max(conc, 1), n) {
		wg.Go(func() {
			for k := range jobs {
				f(k)
			}
		})
	}
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
loop:
	for k := range n {
		if !waitUntil(ctx, start.Add(time.Duration(k)*interval)) {
			break
		}
		select {
		case jobs <- k:
		case <-ctx.Done():
			break loop
		}
	}
	close(jobs)
	wg.Wait()
}

// actClient is a joined socket of an actions share.
type actClient struct {
	*phxConn
	topic string
}

// runActionsShare runs one process's share: its clients and its pushes.
func runActionsShare(ctx context.Context, rec *shareRec, _ <-chan shareFinish) (shareResult, error) {
	s := rec.spec
	ctx, cancel := context.WithDeadline(ctx, time.Unix(0, s.Deadline))
	defer cancel()

	var mu sync.Mutex
	var clients []*actClient
	rampDo(ctx, s.Clients, s.RampRate, s.Concurrency, func(k int) {
		i := s.FirstIndex + k
		topic := s.topic(s.room(i))
		c, err := dialJoined(ctx, s.URL, s.local(i), s.DialTimeout)
		if err == nil {
			p := &phxConn{c: c}
			_ = c.SetDeadline(time.Now().Add(s.DialTimeout))
			err = p.send(phxFrame("1", "1", topic, "phx_join", joinPayload(s.JoinPayload, false, "")), s.DialTimeout)
			var b replyBody
			if err == nil {
				b, err = p.await("1", nil)
			}
			if err == nil && b.Status != "ok" {
				err = &refusedError{"join", reasonOf(b)}
			}
			if err == nil {
				_ = c.SetDeadline(time.Time{})
				rec.joined.Add(1)
				mu.Lock()
				clients = append(clients, &actClient{p, topic})
				mu.Unlock()
				return
			}
			c.Close()
		}
		rec.failed.Add(1)
		rec.fail(errKind(err), err)
	})
	rec.ready.Store(true)
	if len(clients) == 0 {
		return rec.result(), errors.New("bench: actions: no client joined")
	}

	sentAt := make([]atomic.Int64, s.Count)
	answeredBy := make([]atomic.Bool, s.Count)
	var answered atomic.Int64
	var closing atomic.Bool
	var wg sync.WaitGroup
	hbStop := make(chan struct{})
	defer func() {
		close(hbStop)
		closing.Store(true)
		for _, c := range clients {
			c.bye()
		}
		wg.Wait()
	}()
	for _, c := range clients {
		wg.Go(func() {
			for {
				m, err := c.read()
				if err != nil {
					if !closing.Load() {
						rec.fail("read_"+errKind(err), err)
					}
					return
				}
				if m.Event != "phx_reply" {
					continue
				}
				n, err := strconv.Atoi(m.Ref)
				k := n - actRefBase
				if err != nil || k < 0 || k >= len(sentAt) || answeredBy[k].Swap(true) {
					continue
				}
				now := time.Now().UnixNano()
				answered.Add(1)
				b, err := parseReply(m)
				switch {
				case err != nil:
					rec.fail(errKind(err), err)
				case b.Status != "ok":
					rec.fail("push_"+reasonOf(b), nil)
				default:
					rec.ok.Add(1)
					rec.record(now, now-sentAt[k].Load())
				}
			}
		})
	}
	if s.Heartbeat > 0 {
		wg.Go(func() {
			t := time.NewTicker(s.Heartbeat)
			defer t.Stop()
			for {
				select {
				case <-hbStop:
					return
				case <-t.C:
				}
				for _, c := range clients {
					_ = c.send(heartbeatMsg, time.Second)
				}
			}
		})
	}

	// Pushes, at the share's rate.
	interval := time.Duration(float64(time.Second) / s.Rate)
	start := time.Now()
	var sent int64
	var payload []byte
	for k := range s.Count {
		if !waitUntil(ctx, start.Add(time.Duration(k)*interval)) {
			break
		}
		c := clients[k%len(clients)]
		now := time.Now().UnixNano()
		payload = appendPayload(payload[:0], int64(k), now, s.Payload)
		sentAt[k].Store(now)
		rec.attempts.Add(1)
		sent++
		if err := c.send(phxFrame("1", strconv.Itoa(k+actRefBase), c.topic, s.Event, payload), pubWriteTimeout); err != nil {
			answeredBy[k].Store(true)
			rec.fail("send_"+errKind(err), err)
			answered.Add(1)
		}
	}
	waitDrain(ctx, s.Drain, func() (int64, bool) {
		a := answered.Load()
		return a, a >= sent
	})
	res := rec.result()
	res.NoReply = sent - answered.Load()
	return res, nil
}

// parseReply reads a phx_reply's body.
func parseReply(m phxMsg) (replyBody, error) {
	var b replyBody
	if err := json.Unmarshal(m.Payload, &b); err != nil {
		return b, errBadMessage
	}
	return b, nil
}

// waitDrain polls state until it reports done, or its count has not
// moved for drain, or ctx ends.
func waitDrain(ctx context.Context, drain time.Duration, state func() (int64, bool)) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	last, _ := state()
	moved := time.Now()
	for {
		n, done := state()
		if done {
			return
		}
		if n != last {
			last, moved = n, time.Now()
		} else if time.Since(moved) >= drain {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
