package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// resume: Clients sockets, each joined to one room with positions on
// ({"offset": null}), while the orchestrator's publisher pushes Event
// (shout: the echo backend broadcasts it) to the rooms in turn. Every
// StormEvery each process drops StormFraction of its clients at once (the
// socket is closed without a leave, like a lost network); each reconnects
// after a random wait up to StormJitter and rejoins with the position of
// the last event it got, so the gateway replays what it missed. After
// the publisher is done, every client must hold every event published to
// its room since its first join, exactly once and in offset order.

// resClient is one resume client. Its goroutine owns the fields below
// conn; the share reads them after the goroutine ends, except the atomics.
type resClient struct {
	i     int
	room  int
	topic string

	mu   sync.Mutex
	conn *phxConn // current socket; nil while reconnecting

	epoch       string
	start, last uint64
	gaps, dups  int64
	epochs      int64
	recovered   int64
	notRecov    int64

	lastOff atomic.Uint64 // last in-order offset received
	bad     atomic.Bool   // a gap, a duplicate, an epoch change or recovered: false
}

func (c *resClient) setConn(p *phxConn) {
	c.mu.Lock()
	c.conn = p
	c.mu.Unlock()
}

// connected reports whether the client holds a joined socket.
func (c *resClient) connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil
}

// leave ends the current socket cleanly (a close frame) at the end of
// the run, so the gateway does not count it as a lost connection.
func (c *resClient) leave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.bye()
	}
}

// drop closes the current socket abruptly (no leave, no close frame).
func (c *resClient) drop() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return false
	}
	c.conn.c.Close()
	return true
}

// parsePos reads the wire position "p:<epoch>:<offset>".
func parsePos(s string) (epoch string, off uint64, ok bool) {
	rest, found := strings.CutPrefix(s, "p:")
	i := strings.LastIndexByte(rest, ':')
	if !found || i < 0 {
		return "", 0, false
	}
	off, err := strconv.ParseUint(rest[i+1:], 10, 64)
	return rest[:i], off, err == nil
}

// joinResp is what a positions join reply carries.
type joinResp struct {
	Position  string `json:"position"`
	Recovered *bool  `json:"recovered"`
}

// connect dials and joins, resuming after offset (empty: from now).
func (c *resClient) connect(ctx context.Context, s shareSpec, offset string) (*phxConn, joinResp, error) {
	conn, err := dialJoined(ctx, s.URL, s.local(c.i), s.DialTimeout)
	if err != nil {
		return nil, joinResp{}, err
	}
	p := &phxConn{c: conn}
	_ = conn.SetDeadline(time.Now().Add(s.DialTimeout))
	if err := p.send(phxFrame("1", "1", c.topic, "phx_join", joinPayload(s.JoinPayload, true, offset)), s.DialTimeout); err != nil {
		conn.Close()
		return nil, joinResp{}, err
	}
	b, err := p.await("1", nil)
	if err == nil && b.Status != "ok" {
		err = &refusedError{"join", reasonOf(b)}
	}
	var jr joinResp
	if err == nil && (json.Unmarshal(b.Response, &jr) != nil || jr.Position == "") {
		err = fmt.Errorf("%w: join reply without a position: %s", errBadMessage, b.Response)
	}
	if err != nil {
		conn.Close()
		return nil, joinResp{}, err
	}
	_ = conn.SetDeadline(time.Time{})
	return p, jr, nil
}

// observe checks one broadcast's position against the last one.
func (c *resClient) observe(m phxMsg, rec *shareRec) {
	now := time.Now().UnixNano()
	epoch, off, ok := parsePos(m.Ref)
	if !ok {
		rec.fail("bad_position", nil)
		c.bad.Store(true)
		return
	}
	rec.attempts.Add(1)
	switch {
	case epoch != c.epoch:
		c.epochs++
		c.bad.Store(true)
		c.epoch, c.last = epoch, off
	case off == c.last+1:
		c.last = off
		c.lastOff.Store(off)
		rec.ok.Add(1)
		if _, ts, ok := decodePayload(m.Payload); ok {
			rec.record(now, now-ts)
		}
	case off <= c.last:
		c.dups++
		c.bad.Store(true)
	default:
		c.gaps += int64(off - c.last - 1)
		c.bad.Store(true)
		c.last = off
	}
}

// run reads p, then reconnects after every drop until ctx ends.
func (c *resClient) run(ctx context.Context, s shareSpec, rec *shareRec, p *phxConn) {
	backoff := 10 * time.Millisecond
	for {
		c.setConn(p)
		if ctx.Err() != nil { // a drop racing the end
			p.c.Close()
		}
		for {
			m, err := p.read()
			if err != nil {
				break
			}
			if m.Event == s.Event && m.Topic == c.topic {
				c.observe(m, rec)
			}
		}
		c.setConn(nil)
		p.c.Close()
		if ctx.Err() != nil {
			return
		}
		rec.reconnects.Add(1)
		if s.StormJitter > 0 && sleepCtx(ctx, rand.N(s.StormJitter)) != nil {
			return
		}
		for {
			t0 := time.Now()
			q, jr, err := c.connect(ctx, s, "p:"+c.epoch+":"+strconv.FormatUint(c.last, 10))
			if err == nil {
				rec.rejoin.Record(int64(time.Since(t0)))
				if jr.Recovered != nil && *jr.Recovered {
					c.recovered++
				} else {
					c.notRecov++
					c.bad.Store(true)
				}
				p, backoff = q, 10*time.Millisecond
				break
			}
			if ctx.Err() != nil {
				return
			}
			rec.fail("rejoin_"+errKind(err), err)
			if sleepCtx(ctx, backoff) != nil {
				return
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

// runResumeShare runs one process's clients: joins, storms until the
// finish, then waits for every client to catch up.
func runResumeShare(ctx context.Context, rec *shareRec, finCh <-chan shareFinish) (shareResult, error) {
	s := rec.spec
	ctx, cancel := context.WithDeadline(ctx, time.Unix(0, s.Deadline))
	defer cancel()

	var mu sync.Mutex
	var clients []*resClient
	conns := map[*resClient]*phxConn{}
	rampDo(ctx, s.Clients, s.RampRate, s.Concurrency, func(k int) {
		i := s.FirstIndex + k
		c := &resClient{i: i, room: s.room(i), topic: s.topic(s.room(i))}
		p, jr, err := c.connect(ctx, s, "")
		if err != nil {
			rec.failed.Add(1)
			rec.fail(errKind(err), err)
			return
		}
		epoch, off, ok := parsePos(jr.Position)
		if !ok {
			p.c.Close()
			rec.failed.Add(1)
			rec.fail("bad_position", fmt.Errorf("%q", jr.Position))
			return
		}
		c.epoch, c.start, c.last = epoch, off, off
		c.lastOff.Store(off)
		rec.joined.Add(1)
		mu.Lock()
		clients = append(clients, c)
		conns[c] = p
		mu.Unlock()
	})
	if len(clients) == 0 {
		rec.ready.Store(true)
		return rec.result(), errors.New("bench: resume: no client joined")
	}
	cctx, ccancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { c.run(cctx, s, rec, conns[c]) })
	}
	stop := func() {
		ccancel()
		for _, c := range clients {
			c.leave()
		}
		wg.Wait()
	}
	defer stop()
	rec.ready.Store(true)

	var storms int64
	if s.Heartbeat > 0 {
		wg.Go(func() {
			t := time.NewTicker(s.Heartbeat)
			defer t.Stop()
			for {
				select {
				case <-cctx.Done():
					return
				case <-t.C:
				}
				for _, c := range clients {
					c.mu.Lock()
					if c.conn != nil {
						_ = c.conn.send(heartbeatMsg, time.Second)
					}
					c.mu.Unlock()
				}
			}
		})
	}
	// Storms until the finish.
	var fin shareFinish
	var tick <-chan time.Time
	if s.StormEvery > 0 && s.StormFrac > 0 {
		t := time.NewTicker(s.StormEvery)
		defer t.Stop()
		tick = t.C
	}
	n := max(1, int(s.StormFrac*float64(len(clients))+0.5))
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case fin = <-finCh:
			break wait
		case <-tick:
			storms++
			for _, k := range rand.Perm(len(clients))[:n] {
				clients[k].drop()
			}
		}
	}
	target := func(c *resClient) uint64 {
		if c.room < len(fin.Accepted) {
			return c.start + uint64(fin.Accepted[c.room])
		}
		return c.start
	}
	complete := func() int64 {
		var k int64
		for _, c := range clients {
			if !c.bad.Load() && c.lastOff.Load() == target(c) && c.connected() {
				k++
			}
		}
		return k
	}
	var err error
	if ctx.Err() == nil {
		waitDrain(ctx, s.Drain, func() (int64, bool) {
			k := complete()
			rec.complete.Store(k)
			return rec.ok.Load() + k, k == int64(len(clients))
		})
	} else {
		err = fmt.Errorf("bench: resume share ended before the finish: %w", ctx.Err())
	}
	stop()
	res := rec.result()
	res.Storms = storms
	for _, c := range clients {
		if !c.bad.Load() && c.last == target(c) {
			res.Complete++
		} else {
			res.Incomplete++
		}
		if t := target(c); c.last < t {
			res.Missing += int64(t - c.last)
		}
		res.Gaps += c.gaps
		res.Dups += c.dups
		res.EpochChanges += c.epochs
		res.Recovered += c.recovered
		res.NotRecovered += c.notRecov
	}
	return res, err
}
