package pubsub

import (
	"context"
	"time"
)

// DefaultMaxFill bounds how many events a Sequencer reads from History to
// fill one gap or catch up after one Resync; a longer gap is a continuity
// loss (clients that hold positions rejoin and replay from their own).
const DefaultMaxFill = 10_000

// DefaultFillTimeout bounds the History calls of one fill.
const DefaultFillTimeout = 2 * time.Second

// Sequencer turns an engine's live deliveries of one topic into exactly
// the topic's events, each once, in offset order: it drops what was
// delivered already, fills gaps from History, and reports what it cannot
// fill as a continuity loss. Ephemeral events pass straight through.
//
// A Sequencer is not safe for concurrent use: its owner calls it from the
// topic's delivery path, one call at a time (which an engine's Handler
// contract already gives).
type Sequencer struct {
	broker  Broker
	topic   string
	last    Position // last event emitted; zero: nothing yet
	maxFill int
	timeout time.Duration
}

// SequencerStats counts what a Sequencer did beyond passing events on.
type SequencerStats struct {
	Duplicates int // live events dropped as already emitted
	Filled     int // events emitted from History to fill a gap
	Gaps       int // fills attempted (gaps seen and Resyncs)
	Lost       int // continuity losses
}

// NewSequencer returns a Sequencer for topic. maxFill ≤ 0 means
// DefaultMaxFill; timeout ≤ 0 means DefaultFillTimeout.
func NewSequencer(b Broker, topic string, maxFill int, timeout time.Duration) *Sequencer {
	if maxFill <= 0 {
		maxFill = DefaultMaxFill
	}
	if timeout <= 0 {
		timeout = DefaultFillTimeout
	}
	return &Sequencer{broker: b, topic: topic, maxFill: maxFill, timeout: timeout}
}

// Last returns the position of the last event emitted (or the baseline).
func (s *Sequencer) Last() Position { return s.last }

// Baseline sets the position after which events are expected (what
// Subscribe returned), unless an event was emitted already: a delivery
// that raced ahead of the caller knows better.
func (s *Sequencer) Baseline(p Position) {
	if s.last.IsZero() {
		s.last = p
	}
}

// Deliver passes ev on to emit if it is the next event, after filling the
// gap before it from History. lost is called (before ev is emitted) when
// events between the last one and ev cannot be had: the epoch changed, or
// History no longer holds them or failed.
func (s *Sequencer) Deliver(ev *Event, emit func(*Event), lost func(), st *SequencerStats) {
	switch {
	case ev.Ephemeral():
		emit(ev)
		return
	case s.last.IsZero():
		// Nothing expected yet: this is where the topic starts for us.
	case ev.Pos.Epoch != s.last.Epoch:
		// The topic's history was lost and started over: whatever was
		// published in the old epoch after our last is gone. The new
		// epoch's earlier events are still read, for subscribers that
		// hold no position.
		st.Lost++
		lost()
		s.last = Position{Epoch: ev.Pos.Epoch}
		if ev.Pos.Offset > 1 {
			s.fill(ev.Pos.Offset-1, emit, func() {}, st)
		}
	case ev.Pos.Offset <= s.last.Offset:
		st.Duplicates++
		return
	case ev.Pos.Offset > s.last.Offset+1:
		s.fill(ev.Pos.Offset-1, emit, lost, st)
	}
	if !s.last.IsZero() && (ev.Pos.Epoch != s.last.Epoch || ev.Pos.Offset <= s.last.Offset) {
		// Filled from History already, or the fill found the topic in a
		// newer epoch than ev's.
		st.Duplicates++
		return
	}
	s.last = ev.Pos
	emit(ev)
}

// Resync catches up from History after the engine may have missed
// events: everything after the last position is emitted, or lost is called
// when that cannot be done, after which delivery continues from the
// topic's current position.
func (s *Sequencer) Resync(emit func(*Event), lost func(), st *SequencerStats) {
	if s.last.IsZero() {
		return // nothing delivered yet, nothing expected
	}
	s.fill(0, emit, lost, st)
}

// fill emits the events after s.last up to offset through (0: up to the
// topic's top), reading History in pages. When they cannot be had it calls
// lost once; if the topic moved to a new epoch meanwhile, it goes on with
// that epoch's events from its start (for subscribers holding no
// position), otherwise it moves s.last past the gap (to through, or to the
// top it learnt of), so that the next live event is not taken for another
// gap.
func (s *Sequencer) fill(through uint64, emit func(*Event), lost func(), st *SequencerStats) {
	st.Gaps++
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	read, signalled := 0, false
	loss := func() {
		if !signalled {
			signalled = true
			st.Lost++
			lost()
		}
	}
	for {
		want := MaxHistoryPage
		if through > 0 {
			want = int(min(uint64(want), through-s.last.Offset))
		}
		hr, err := s.broker.History(ctx, s.topic, s.last, want)
		if err != nil {
			loss()
			return
		}
		if !hr.Recovered {
			loss()
			if hr.Top.Epoch != s.last.Epoch && s.last.Offset != 0 {
				s.last = Position{Epoch: hr.Top.Epoch}
				through = 0
				continue
			}
			switch {
			case hr.Top.Epoch != s.last.Epoch:
				s.last = hr.Top
			case hr.Top.Offset < s.last.Offset:
				// The store went back in the same epoch (restored from
				// an older copy): what it hands out next reuses offsets
				// delivered already, which must not be taken for
				// duplicates.
				s.last = hr.Top
			case through > 0:
				// The live event after the gap comes next.
				s.last.Offset = max(s.last.Offset, through)
			default:
				s.last = hr.Top
			}
			return
		}
		for _, ev := range hr.Events {
			if ev.Pos.Offset <= s.last.Offset {
				continue
			}
			s.last = ev.Pos
			st.Filled++
			emit(ev)
		}
		read += len(hr.Events)
		done := s.last.Offset >= hr.Top.Offset || (through > 0 && s.last.Offset >= through)
		if done || len(hr.Events) == 0 {
			return
		}
		if read >= s.maxFill {
			loss()
			if through > 0 {
				s.last.Offset = max(s.last.Offset, through) // the live event comes next
			} else {
				s.last = hr.Top
			}
			return
		}
	}
}
