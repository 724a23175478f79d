package gateway

import (
	"math/rand/v2"
	"testing"
)

// chargedOf recomputes what q must be charged from its contents.
func chargedOf(q *outQueue) int64 {
	var n int64
	for i := range q.n {
		n += cost(len(q.at(i)))
	}
	n -= int64(q.off)
	if q.pong != nil {
		n += cost(len(q.pong))
	}
	return n
}

// wire pops everything writable in order, n bytes at a time, the way
// flush does, and returns the frames in the order they completed.
func wire(q *outQueue, chunk int) []string {
	var out []string
	for !q.empty() {
		q.takePong()
		f := q.at(0)[q.off:]
		w := min(chunk, len(f))
		if q.off == 0 && w == len(f) {
			out = append(out, string(q.at(0)))
		} else if int(q.off)+w == len(q.at(0)) {
			out = append(out, string(q.at(0)))
		}
		q.written(w)
	}
	return out
}

func TestPongsNeverOvertakeEachOther(t *testing.T) {
	var q outQueue
	q.setPong([]byte("P1"))
	q.push([]byte("data"))
	q.takePong() // P1 goes to the front and starts
	q.written(1) // P1 is partly written
	q.setPong([]byte("P2"))
	q.takePong() // must not jump ahead of the started P1
	if got := string(q.at(0)); got != "P1" || q.off != 1 {
		t.Fatalf("front = %q off %d, want the started P1", got, q.off)
	}
	if got := wire(&q, 1); len(got) != 3 || got[0] != "P1" || got[1] != "P2" || got[2] != "data" {
		t.Fatalf("wire order %q, want P1 P2 data", got)
	}
	if q.charged != 0 {
		t.Fatalf("charged %d after everything was written", q.charged)
	}
}

func TestNewerPongReplacesUnstartedOne(t *testing.T) {
	var q outQueue
	q.setPong([]byte("P1"))
	q.takePong() // in the ring, not started (EAGAIN)
	q.setPong([]byte("P2"))
	q.takePong()
	if q.n != 1 || string(q.at(0)) != "P2" || q.pong != nil {
		t.Fatalf("ring holds %d entries, front %q, pending %q; want only P2", q.n, q.at(0), q.pong)
	}
	if want := chargedOf(&q); q.charged != want {
		t.Fatalf("charged %d, want %d", q.charged, want)
	}
}

// TestQueueAccountingRandomized: whatever the sequence of pushes, pongs,
// partial writes and drops, the charge matches the contents, the frames
// come out whole and in order (pongs aside), and the ring shrinks as it
// drains.
func TestQueueAccountingRandomized(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var q outQueue
	next := 0     // data frames are numbered in push order
	var exp []int // numbers of the data frames queued, oldest first
	frame := func(i int) []byte { return []byte{byte('a' + i%26), byte(i), byte(i >> 8), byte(i >> 16)} }
	maxRing := 0
	for step := range 200_000 {
		pushes := 4 // out of 10: the queue fills up
		if step/5000%2 == 1 {
			pushes = 1 // and then drains
		}
		switch k := r.IntN(10); {
		case k < pushes:
			for range r.IntN(50) {
				q.push(frame(next))
				exp = append(exp, next)
				next++
			}
		case k < pushes+1:
			q.setPong([]byte{'P', byte(step)})
		case k < 9 && !q.empty() && (pushes == 1 || k >= 5):
			q.takePong()
			if q.n == 0 {
				continue
			}
			f := q.at(0)
			w := 1 + r.IntN(len(f)-int(q.off))
			done := int(q.off)+w == len(f)
			isPong := q.frontPong
			q.written(w)
			if done && !isPong {
				if string(f) != string(frame(exp[0])) {
					t.Fatalf("step %d: frame %x out, want frame %d", step, f, exp[0])
				}
				exp = exp[1:]
			}
		case k == 9 && r.IntN(20) == 0:
			before := q.charged
			partly := q.off > 0 && !q.frontPong
			freed := q.dropUnsent(false)
			if before-freed != q.charged {
				t.Fatalf("step %d: dropUnsent freed %d of %d, %d left", step, freed, before, q.charged)
			}
			if partly {
				exp = exp[:1] // the partly written frame is kept and still comes out
			} else {
				exp = nil
			}
		}
		if c := chargedOf(&q); q.charged != c {
			t.Fatalf("step %d: charged %d, contents cost %d", step, q.charged, c)
		}
		maxRing = max(maxRing, len(q.ring))
		if q.n > 0 && len(q.ring) > minRing && int(q.n) < len(q.ring)/4 {
			t.Fatalf("step %d: ring of %d slots holds %d entries: not shrunk", step, len(q.ring), q.n)
		}
	}
	t.Logf("largest ring %d slots", maxRing)
}
