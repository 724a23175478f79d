package channels

import (
	"sync"

	"github.com/phxgate/phxgate/pubsub"
)

// Fanout spreads a broadcast over the transport's event loops (the
// gateway's pollers). Each subscriber belongs to one lane (the poller that
// owns its connection, see Laned); the hub hands each lane with subscribers
// one job per event, and the lane's loop queues the frame to its own
// sockets and then flushes them all in one pass. So a publisher pays for a
// few dispatches, not for the fan-out, and broadcasts that arrive together
// leave in one write per socket.
//
// Dispatch must not block and must run jobs of one lane in the order they
// were dispatched; a job dispatched after the lane stopped must still be
// run (at once, on the caller). Implementations are safe for concurrent use.
type Fanout interface {
	// Lanes is the number of lanes, fixed for the Fanout's life.
	Lanes() int
	// Dispatch queues job on lane (0 ≤ lane < Lanes()).
	Dispatch(lane int, job FanoutJob)
}

// FanoutJob is the delivery of a topic's pending events to one lane's
// subscribers.
type FanoutJob interface {
	// RunFanout queues the event's frame to the lane's subscribers. It
	// takes one topic lock and never blocks otherwise.
	RunFanout()
}

// Laned is implemented by a Conn that belongs to a Fanout lane. A Conn
// without it (or with an out-of-range lane) is on lane 0.
type Laned interface {
	Lane() int
}

// prepared is one event on its way to the lanes: its frames are encoded
// at most once per variant, by whichever lane needs a variant first, and
// shared by every subscriber of every lane.
type prepared struct {
	ev     *pubsub.Event
	mu     sync.Mutex
	frames [numVariants][]byte
	failed [numVariants]bool
}

// frame returns the event's frame for variant v (nil when it cannot be
// encoded; counted once, by the lane that tried first).
func (b *prepared) frame(v int, m *metrics) []byte {
	b.mu.Lock()
	f := b.frames[v]
	if f == nil && !b.failed[v] {
		var err error
		if f, err = encodeBroadcast(v, b.ev); err != nil {
			b.failed[v] = true
			m.droppedFrames.WithLabelValues(dropReason(err)).Inc()
		} else {
			b.frames[v] = f
		}
	}
	b.mu.Unlock()
	return f
}

// laneJob drains one lane of a topic: it delivers every event pending
// there. One per topic and lane, dispatched at most once at a time.
type laneJob struct {
	th   *topicHub
	lane int
}

func (j *laneJob) RunFanout() { j.th.drain(j.lane, true) }
