package channels

import (
	"context"
	"sync"
	"time"

	"github.com/phxgate/phxgate/backends"
)

// MaxSeats bounds the seats held open at once (Route.LeaveGrace); past it
// a dropped channel's Leave goes out at once.
const MaxSeats = 100_000

// seatKey is a player's place on a topic.
type seatKey struct{ player, topic string }

// seat is a joined channel whose socket dropped without phx_leave, held
// for its route's LeaveGrace: the Leave is sent when the grace ends, unless
// the same player joins the same topic on this node first (then no Leave,
// and that Join says Rejoin).
type seat struct {
	backend backends.Backend
	call    *backends.Call // the Leave, built when the socket dropped
	timer   *time.Timer
}

// seats holds the open seats. Its methods are safe for concurrent use.
type seats struct {
	srv  *Server
	mu   sync.Mutex
	held map[seatKey]*seat
	wg   sync.WaitGroup // Leaves being sent
}

// hold keeps a seat for grace. A seat already held for the same key (the
// player's other socket dropped too) gets its Leave now, so every join
// keeps exactly one Leave.
func (ss *seats) hold(key seatKey, b backends.Backend, call *backends.Call, grace time.Duration) {
	st := &seat{backend: b, call: call}
	ss.mu.Lock()
	if ss.held == nil {
		ss.held = map[seatKey]*seat{}
	}
	var evicted *seat
	if old := ss.held[key]; old != nil && old.timer.Stop() {
		evicted = old
		delete(ss.held, key)
	}
	if len(ss.held) >= MaxSeats {
		ss.mu.Unlock()
		ss.leave(evicted)
		ss.leave(st)
		return
	}
	ss.held[key] = st
	st.timer = time.AfterFunc(grace, func() { ss.expire(key, st) })
	ss.mu.Unlock()
	ss.leave(evicted)
}

// take returns the seat held for key, no longer held (nil when none, or
// when its grace just ended and its Leave is on its way). The player is
// back: if their join succeeds the seat needs no Leave; if it fails, the
// caller sends the seat's Leave (leave).
func (ss *seats) take(key seatKey) *seat {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	st := ss.held[key]
	if st == nil || !st.timer.Stop() {
		return nil
	}
	delete(ss.held, key)
	return st
}

func (ss *seats) expire(key seatKey, st *seat) {
	ss.mu.Lock()
	if ss.held[key] == st {
		delete(ss.held, key)
	}
	ss.mu.Unlock()
	ss.leave(st)
}

// leave sends a seat's Leave (reason disconnected) in the background.
func (ss *seats) leave(st *seat) {
	if st == nil {
		return
	}
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		srv := ss.srv
		ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.CallTimeout)
		defer cancel()
		_, err := invoke(ctx, st.backend, opLeave, st.call, backends.LeaveDisconnected)
		srv.m.backendCalls.WithLabelValues(opLeave, callResult(err)).Inc()
		if err == nil {
			srv.m.leaves.WithLabelValues(string(backends.LeaveDisconnected)).Inc()
		} else {
			srv.m.leavesLost.Inc()
		}
	}()
}

// flush ends every seat now (shutdown: nobody will come back to this node)
// and waits for their Leaves, or ctx.
func (ss *seats) flush(ctx context.Context) {
	ss.mu.Lock()
	var open []*seat
	for k, st := range ss.held {
		if st.timer.Stop() {
			open = append(open, st)
		}
		delete(ss.held, k)
	}
	ss.mu.Unlock()
	for _, st := range open {
		ss.leave(st)
	}
	done := make(chan struct{})
	go func() { ss.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// count is the number of seats held.
func (ss *seats) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.held)
}
