package pubsub

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// histBroker serves History from a fixed list of retained events of one
// epoch (offsets first..top); everything else is unused by a Sequencer.
type histBroker struct {
	Broker
	epoch   string
	top     uint64
	first   uint64 // oldest retained offset
	fail    bool
	history int // calls
}

func (b *histBroker) History(_ context.Context, topic string, since Position, limit int) (HistoryResult, error) {
	b.history++
	if b.fail {
		return HistoryResult{}, errors.New("down")
	}
	res := HistoryResult{Top: Position{Epoch: b.epoch, Offset: b.top}}
	if since.Epoch != b.epoch || since.Offset > b.top || since.Offset+1 < b.first {
		return res, nil
	}
	if limit <= 0 || limit > MaxHistoryPage {
		limit = MaxHistoryPage
	}
	for off := since.Offset + 1; off <= b.top && len(res.Events) < limit; off++ {
		res.Events = append(res.Events, ev(b.epoch, off))
	}
	res.Recovered = true
	return res, nil
}

func ev(epoch string, off uint64) *Event {
	return &Event{Topic: "t", Event: "e", Payload: fmt.Appendf(nil, "%d", off), Pos: Position{Epoch: epoch, Offset: off}}
}

type seqRun struct {
	seq    *Sequencer
	got    []string
	losses int
	st     SequencerStats
}

func newSeqRun(b Broker, baseline Position) *seqRun {
	r := &seqRun{seq: NewSequencer(b, "t", 50, 0)}
	r.seq.Baseline(baseline)
	return r
}

func (r *seqRun) deliver(e *Event) {
	r.seq.Deliver(e, func(e *Event) { r.got = append(r.got, e.Pos.String()) }, func() { r.losses++ }, &r.st)
}

func (r *seqRun) resync() {
	r.seq.Resync(func(e *Event) { r.got = append(r.got, e.Pos.String()) }, func() { r.losses++ }, &r.st)
}

func positions(epoch string, from, to uint64) []string {
	var out []string
	for off := from; off <= to; off++ {
		out = append(out, Position{Epoch: epoch, Offset: off}.String())
	}
	return out
}

func TestSequencer(t *testing.T) {
	tests := []struct {
		name       string
		broker     histBroker
		baseline   Position
		run        func(r *seqRun, b *histBroker)
		want       []string
		wantLosses int
	}{
		{
			name: "in order passes through", broker: histBroker{epoch: "E", top: 3, first: 1},
			baseline: Position{"E", 0},
			run: func(r *seqRun, _ *histBroker) {
				r.deliver(ev("E", 1))
				r.deliver(ev("E", 2))
				r.deliver(ev("E", 3))
			},
			want: positions("E", 1, 3),
		},
		{
			name: "duplicates and older events are dropped", broker: histBroker{epoch: "E", top: 3, first: 1},
			baseline: Position{"E", 1},
			run: func(r *seqRun, _ *histBroker) {
				r.deliver(ev("E", 1))
				r.deliver(ev("E", 2))
				r.deliver(ev("E", 2))
				r.deliver(ev("E", 1))
				r.deliver(ev("E", 3))
			},
			want: positions("E", 2, 3),
		},
		{
			name: "a gap is filled from history before the event", broker: histBroker{epoch: "E", top: 7, first: 1},
			baseline: Position{"E", 2},
			run: func(r *seqRun, _ *histBroker) {
				r.deliver(ev("E", 6))
				r.deliver(ev("E", 4)) // the late live copy of a filled one
				r.deliver(ev("E", 7))
			},
			want: positions("E", 3, 7),
		},
		{
			name: "a gap history no longer holds is a loss, then delivery goes on", broker: histBroker{epoch: "E", top: 9, first: 6},
			baseline: Position{"E", 2},
			run: func(r *seqRun, _ *histBroker) {
				r.deliver(ev("E", 8))
				r.deliver(ev("E", 9))
			},
			want: positions("E", 8, 9), wantLosses: 1,
		},
		{
			name: "a failing history is a loss", broker: histBroker{epoch: "E", top: 5, first: 1, fail: true},
			baseline: Position{"E", 2},
			run:      func(r *seqRun, _ *histBroker) { r.deliver(ev("E", 5)) },
			want:     positions("E", 5, 5), wantLosses: 1,
		},
		{
			name: "an epoch change is a loss; the new epoch is read from its start", broker: histBroker{epoch: "F", top: 3, first: 1},
			baseline: Position{"E", 10},
			run:      func(r *seqRun, _ *histBroker) { r.deliver(ev("F", 3)) },
			want:     positions("F", 1, 3), wantLosses: 1,
		},
		{
			name: "no baseline: the first event starts the run", broker: histBroker{epoch: "E", top: 5, first: 1},
			run: func(r *seqRun, _ *histBroker) {
				r.deliver(ev("E", 4))
				r.deliver(ev("E", 5))
			},
			want: positions("E", 4, 5),
		},
		{
			name: "ephemeral events pass straight through", broker: histBroker{epoch: "E", top: 1, first: 1},
			baseline: Position{"E", 0},
			run: func(r *seqRun, _ *histBroker) {
				r.deliver(&Event{Topic: "t", Event: "presence_diff"})
				r.deliver(ev("E", 1))
			},
			want: []string{Position{}.String(), Position{"E", 1}.String()},
		},
		{
			name: "resync catches up to the top", broker: histBroker{epoch: "E", top: 120, first: 1},
			baseline: Position{"E", 0},
			run: func(r *seqRun, b *histBroker) {
				r.deliver(ev("E", 1))
				b.top = 40
				r.resync()
				r.deliver(ev("E", 40)) // live copy after the resync
				r.deliver(ev("E", 41))
			},
			want: positions("E", 1, 41),
		},
		{
			name: "resync past the fill bound is a loss", broker: histBroker{epoch: "E", top: 200, first: 1},
			baseline: Position{"E", 0},
			run: func(r *seqRun, _ *histBroker) {
				r.resync()
				r.deliver(ev("E", 201))
			},
			// NewSequencer(…, 50, …): one page of up to MaxHistoryPage is
			// read (all 200), which is past the bound of 50.
			want: positions("E", 1, 201), wantLosses: 0,
		},
		{
			name: "a store gone back in the same epoch is a loss, and its reused offsets are delivered", broker: histBroker{epoch: "E", top: 5, first: 1},
			baseline: Position{"E", 8},
			run: func(r *seqRun, _ *histBroker) {
				r.resync() // after a reconnect: history tops out at 5, behind 8
				r.deliver(ev("E", 6))
				r.deliver(ev("E", 7))
			},
			want: positions("E", 6, 7), wantLosses: 1,
		},
		{
			name: "resync into a new epoch is a loss and reads the new epoch", broker: histBroker{epoch: "F", top: 2, first: 1},
			baseline: Position{"E", 7},
			run: func(r *seqRun, _ *histBroker) {
				r.resync()
				r.deliver(ev("F", 2))
				r.deliver(ev("F", 3))
			},
			want: positions("F", 1, 3), wantLosses: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.broker
			r := newSeqRun(&b, tt.baseline)
			tt.run(r, &b)
			if !slices.Equal(r.got, tt.want) {
				t.Errorf("emitted %v\nwant    %v", r.got, tt.want)
			}
			if r.losses != tt.wantLosses || r.st.Lost != tt.wantLosses {
				t.Errorf("losses %d (stats %d), want %d", r.losses, r.st.Lost, tt.wantLosses)
			}
		})
	}
}

// A fill reads history in pages and stops at the bound: more than maxFill
// missed is a loss, not an unbounded read on the delivery path.
func TestSequencerFillBound(t *testing.T) {
	b := &histBroker{epoch: "E", top: 5000, first: 1}
	r := &seqRun{seq: NewSequencer(b, "t", 1500, 0)}
	r.seq.Baseline(Position{"E", 0})
	r.resync()
	if r.losses != 1 {
		t.Fatalf("losses %d, want 1 for 5000 missed with a bound of 1500", r.losses)
	}
	if b.history != 2 {
		t.Fatalf("%d History calls, want 2 pages of %d", b.history, MaxHistoryPage)
	}
	if r.seq.Last() != (Position{"E", 5000}) {
		t.Fatalf("last %v, want the top after giving up", r.seq.Last())
	}
	r.deliver(ev("E", 5001))
	if got := r.got[len(r.got)-1]; got != (Position{"E", 5001}).String() {
		t.Fatalf("after the loss, got %s", got)
	}
}
