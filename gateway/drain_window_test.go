//go:build linux

package gateway

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/phxgate/phxgate/pubsub/redistest"
)

// closeSeen is what watchClose saw: when a close frame came and its code,
// or the read error that ended the socket without one.
type closeSeen struct {
	at   time.Time
	code uint16
	err  error
}

// watchClose reads c until a close frame and reports it (or the read
// error) on out; then, once release is closed (nil: at once), answers
// with a close and reads to EOF. An answer wakes the socket's poller,
// which may run the next drain batch: a test of the pacing holds the
// answers back. Reads are bounded by drainWatchTimeout so that a close
// that never comes fails the test instead of hanging it.
func watchClose(wg *sync.WaitGroup, c *client, out chan<- closeSeen, release <-chan struct{}) {
	_ = c.conn.SetDeadline(time.Now().Add(drainWatchTimeout))
	wg.Go(func() {
		for {
			h, p, err := c.readFrame()
			if err != nil {
				out <- closeSeen{err: err}
				return
			}
			if h.OpCode != ws.OpClose {
				continue
			}
			a := closeSeen{at: time.Now()}
			if len(p) >= 2 {
				a.code = binary.BigEndian.Uint16(p)
			}
			out <- a
			break
		}
		if release != nil {
			<-release
		}
		_, _ = c.conn.Write(clientFrame(0x88, true, binary.BigEndian.AppendUint16(nil, 1012), -1))
		_, _ = io.Copy(io.Discard, c.br)
	})
}

// drainWatchTimeout bounds watchClose's reads: longer than any drain
// window these tests give Shutdown.
const drainWatchTimeout = 60 * time.Second

// expectAll1012 collects n close reports and fails unless every one is a
// 1012 close frame.
func expectAll1012(t *testing.T, n int, out <-chan closeSeen) []closeSeen {
	t.Helper()
	var seen []closeSeen
	for range n {
		a := <-out
		if a.err != nil {
			t.Errorf("socket ended without a close frame: %v", a.err)
			continue
		}
		if a.code != 1012 {
			t.Errorf("close code %d, want 1012", a.code)
		}
		seen = append(seen, a)
	}
	return seen
}

// Redis stalls while a node with presence drains: the presence drain hook
// (one Redis round trip per presence, each waiting redis_timeout) would
// take longer than the whole window. The 1012s must not wait for it: every
// socket still gets its close frame and none is cut at the deadline.
func TestDrainHooksDoNotUseUpTheWindow(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	proxy := redistest.NewProxy(t, rs.Addr())
	s := redisNode(t, "redis://"+proxy.Addr()+"/0", func(c *Config) {
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo", Presence: true}}
	})
	const n = 12
	out := make(chan closeSeen, n)
	var wg sync.WaitGroup
	for i := range n {
		c := rawSocket(t, s, hsToken(t, claims(fmt.Sprintf("p%d", i))), fmt.Sprintf("room:%d", i))
		c.readEvent("presence_state")
		watchClose(&wg, c, out, nil)
	}
	waitFor(t, 10*time.Second, func() bool {
		return counterValue(t, s.Registry(), "phxgate_presence_tracked", "") == n
	}, "every presence tracked")
	proxy.Stall()
	// 12 presences × redis_timeout 500ms = 6s of hook against a 4s window.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	wg.Wait()
	expectAll1012(t, n, out)
}

// An explicit drain_batch too small for the window is raised so that every
// socket still gets its 1012 within the first half of the window.
func TestDrainBatchRaisedToFitTheWindow(t *testing.T) {
	cfg := testConfig()
	cfg.Pollers = 2
	cfg.DrainBatch = 1
	cfg.DrainInterval = 100 * time.Millisecond
	rec := &recorder{}
	s, err := Start(t.Context(), cfg, WithConnect(testConnect(rec)), WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	// drain_batch 1 at 100ms apart needs 6s for 60 sockets (3s if each
	// poller rounded its share up to 1): more than the 2s window.
	const n = 60
	out := make(chan closeSeen, n)
	var wg sync.WaitGroup
	for range n {
		watchClose(&wg, open(t, s.Addr()), out, nil)
	}
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == n }, "all sockets open")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	wg.Wait()
	expectAll1012(t, n, out)
}

// drain_batch is per node: split over the pollers it never closes more
// than drain_batch per interval in all, even when it is below the number
// of pollers.
func TestDrainBatchSplitOverPollers(t *testing.T) {
	for _, tc := range []struct {
		batch, pollers int
		every          time.Duration
		wantBatch      []int
		wantEvery      []time.Duration
	}{
		{batch: 10, pollers: 2, every: time.Second, wantBatch: []int{5, 5}, wantEvery: []time.Duration{time.Second, time.Second}},
		{batch: 3, pollers: 2, every: time.Second, wantBatch: []int{2, 1}, wantEvery: []time.Duration{time.Second, time.Second}},
		{batch: 1, pollers: 4, every: time.Second, wantBatch: []int{1, 1, 1, 1}, wantEvery: []time.Duration{4 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second}},
		{batch: 3, pollers: 4, every: time.Second, wantBatch: []int{1, 1, 1, 1}, wantEvery: []time.Duration{2 * time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}},
		{batch: 0, pollers: 3, every: time.Second, wantBatch: []int{0, 0, 0}, wantEvery: []time.Duration{time.Second, time.Second, time.Second}},
	} {
		t.Run(fmt.Sprintf("%d_over_%d", tc.batch, tc.pollers), func(t *testing.T) {
			var perInterval float64
			for i := range tc.pollers {
				b, every := pollerDrainShare(tc.batch, tc.pollers, i, tc.every)
				if b != tc.wantBatch[i] || every != tc.wantEvery[i] {
					t.Errorf("poller %d: batch %d every %v, want %d every %v", i, b, every, tc.wantBatch[i], tc.wantEvery[i])
				}
				perInterval += float64(b) * float64(tc.every) / float64(every)
			}
			if perInterval > float64(tc.batch) {
				t.Errorf("%v closes per interval in all, want at most drain_batch %d", perInterval, tc.batch)
			}
		})
	}
	// The averages above hide bursts: play each poller's schedule (what
	// drainStep does with drainPace) and count the closes within any one
	// drain_interval, and when the last one goes.
	for _, tc := range []struct {
		batch, pollers, perPoller int
		interval, spread          time.Duration
		wantMax                   int // closes within any one interval
	}{
		// drain_batch is enough: never more than it within an interval.
		{batch: 10, pollers: 2, perPoller: 50, interval: time.Second, spread: 15 * time.Second, wantMax: 10},
		{batch: 3, pollers: 4, perPoller: 2, interval: time.Second, spread: 15 * time.Second, wantMax: 3},
		{batch: 1, pollers: 4, perPoller: 3, interval: time.Second, spread: 15 * time.Second, wantMax: 1},
		// Raised to fit the window: back to one step per interval, each
		// poller's batch rounded up (1,600 over 15 steps: 107, 7 × 16).
		{batch: 1, pollers: 16, perPoller: 100, interval: time.Second, spread: 15 * time.Second, wantMax: 112},
		{batch: 2, pollers: 4, perPoller: 30, interval: 100 * time.Millisecond, spread: time.Second, wantMax: 12},
	} {
		t.Run(fmt.Sprintf("schedule_%d_over_%d_%d_sockets", tc.batch, tc.pollers, tc.pollers*tc.perPoller), func(t *testing.T) {
			type step struct {
				at     time.Duration
				closed int
			}
			var steps []step
			for i := range tc.pollers {
				b, every := pollerDrainShare(tc.batch, tc.pollers, i, tc.interval)
				plan := drainPlan{batch: b, spread: tc.spread, every: every, interval: tc.interval, slot: i, slots: tc.pollers}
				batch, every, at := drainPace(plan, tc.perPoller, tc.perPoller)
				for left := tc.perPoller; left > 0; at += every {
					n := min(batch, left)
					if at >= tc.spread {
						n = left
					}
					steps = append(steps, step{at, n})
					left -= n
				}
			}
			maxIn, last := 0, time.Duration(0)
			for _, from := range steps {
				in := 0
				for _, s := range steps {
					if s.at >= from.at && s.at < from.at+tc.interval {
						in += s.closed
					}
				}
				maxIn, last = max(maxIn, in), max(last, from.at)
			}
			if maxIn > tc.wantMax {
				t.Errorf("%d closes within one interval, want at most %d", maxIn, tc.wantMax)
			}
			if last >= tc.spread {
				t.Errorf("last close at %v, want within the spread %v", last, tc.spread)
			}
		})
	}
}
