package main

import (
	"context"
	"sync"
	"time"
)

// churn: clients connect, join, leave and disconnect at a target rate.
// Each cycle is one socket: dial and upgrade, phx_join and its reply (the
// latency measured), phx_leave and its reply, a close frame. At most
// Clients cycles are in flight at once (split over the processes); a
// cycle that cannot start on time starts late, so the achieved rate shows
// what the gateway (or this tool) kept up with.

// runChurnShare runs one process's share of the cycles.
func runChurnShare(ctx context.Context, rec *shareRec, _ <-chan shareFinish) (shareResult, error) {
	s := rec.spec
	ctx, cancel := context.WithDeadline(ctx, time.Unix(0, s.Deadline))
	defer cancel()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range max(s.Clients, 1) {
		wg.Go(func() {
			for i := range jobs {
				rec.attempts.Add(1)
				t0 := time.Now()
				if err := churnCycle(ctx, s, i, rec, t0); err != nil {
					rec.fail(errKind(err), err)
					continue
				}
				rec.ok.Add(1)
			}
		})
	}
	rec.ready.Store(true)
	interval := time.Duration(float64(time.Second) / s.Rate)
	start := time.Now()
loop:
	for k := range s.Count {
		if !waitUntil(ctx, start.Add(time.Duration(k)*interval)) {
			break
		}
		select {
		case jobs <- s.FirstIndex + k:
		case <-ctx.Done():
			break loop
		}
	}
	close(jobs)
	wg.Wait()
	res := rec.result()
	return res, nil
}

// churnCycle is one connect+join+leave+disconnect of run-wide client i,
// started at t0; the join's latency is recorded when its reply arrives.
func churnCycle(ctx context.Context, s shareSpec, i int, rec *shareRec, t0 time.Time) error {
	c, err := dialJoined(ctx, s.URL, s.local(i), s.DialTimeout)
	if err != nil {
		return err
	}
	p := &phxConn{c: c}
	defer p.closeAndWait(time.Second)
	_ = c.SetDeadline(t0.Add(s.DialTimeout))
	topic := s.topic(s.room(i))
	if err := p.send(phxFrame("1", "1", topic, "phx_join", joinPayload(s.JoinPayload, false, "")), s.DialTimeout); err != nil {
		return err
	}
	b, err := p.await("1", nil)
	if err != nil {
		return err
	}
	now := time.Now()
	if b.Status != "ok" {
		return &refusedError{"join", reasonOf(b)}
	}
	rec.record(now.UnixNano(), int64(now.Sub(t0)))
	_ = c.SetDeadline(now.Add(s.DialTimeout))
	if err := p.send(phxFrame("1", "2", topic, "phx_leave", []byte("{}")), s.DialTimeout); err != nil {
		return err
	}
	if b, err = p.await("2", nil); err != nil {
		return err
	}
	if b.Status != "ok" {
		return &refusedError{"leave", reasonOf(b)}
	}
	return nil
}
