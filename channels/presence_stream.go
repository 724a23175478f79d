package channels

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/phxgate/phxgate/backends"
	"github.com/prometheus/client_golang/prometheus"
)

// A presence_state larger than Config.PresencePieceBytes goes out in
// pieces: the first piece as the presence_state, every other one as a
// presence_diff {"joins":{piece},"leaves":{}}, with the channel's
// join_ref. The stream stops once its join has ended (presenceStream),
// so a join that is left behind, or replaced, gets no more pieces (V1
// frames have no join_ref for phoenix.js to drop them by). phoenix.js applies a diff's joins on top of what it holds, a
// key that joins again keeping the metas it had (syncDiff, 1.3 to 1.8),
// so after the last piece its list is the whole state. The pieces are a
// FrameStream: the transport asks for the next one when it has written
// the one before, so a socket holds a piece or two of the state, not all
// of it, and everything sent to the socket after the stream (the topic's
// live diffs included) follows the last piece.
//
// The state the pieces are cut from (a snapshot) is held until the last
// of its streams ends; the bytes held by snapshots node-wide are bounded
// by Config.PresenceStreamBytes (streamBudget).

// splitState cuts a presence_state payload (a JSON object of key →
// {"metas":[…]}) into pieces, each a JSON object of at most maxBytes (a
// single meta larger than that goes alone). A key goes whole into one
// piece when it fits one; otherwise its metas are spread over pieces in
// order ({"k":{"metas":[m1,m2]}}, then {"k":{"metas":[m3]}}), which
// phoenix.js merges. A state of maxBytes or less, or one that is not a
// JSON object (a tracker of another shape), is one piece: itself.
func splitState(state []byte, maxBytes int) [][]byte {
	if len(state) <= maxBytes {
		return [][]byte{state}
	}
	var pieces [][]byte
	cur := make([]byte, 0, maxBytes)
	flush := func() {
		if len(cur) > 0 {
			pieces = append(pieces, append(cur, '}'))
			cur = make([]byte, 0, maxBytes)
		}
	}
	// add appends one member (raw bytes "key":value) to the current
	// piece, starting a new piece when it would not fit.
	add := func(member []byte) {
		if len(cur) > 0 && len(cur)+1+len(member)+1 > maxBytes {
			flush()
		}
		if len(cur) == 0 {
			cur = append(cur, '{')
		} else {
			cur = append(cur, ',')
		}
		cur = append(cur, member...)
	}
	ok := objectMembers(state, func(_ []byte, val []byte, start, end int) bool {
		member := state[start:end]
		if len(member)+2 <= maxBytes {
			add(member)
			return true
		}
		kend, _, _ := scanString(state, start)
		metas, isMetas := metasOf(val)
		if !isMetas {
			add(member) // not a presence we know how to cut: whole
			return true
		}
		key := state[start:kend]
		var batch [][]byte
		size := len(key) + len(`:{"metas":[]}`)
		emit := func() {
			if len(batch) == 0 {
				return
			}
			m := make([]byte, 0, size+len(batch))
			m = append(m, key...)
			m = append(m, `:{"metas":[`...)
			for i, b := range batch {
				if i > 0 {
					m = append(m, ',')
				}
				m = append(m, b...)
			}
			add(append(m, "]}"...))
			batch, size = batch[:0], len(key)+len(`:{"metas":[]}`)
		}
		for _, meta := range metas {
			if len(batch) > 0 && size+len(meta)+1+2 > maxBytes {
				emit()
			}
			batch = append(batch, meta)
			size += len(meta) + 1
		}
		emit()
		return true
	})
	if !ok {
		return [][]byte{state}
	}
	flush()
	if len(pieces) == 0 {
		return [][]byte{state}
	}
	return pieces
}

// metasOf returns the elements of val's "metas" array when val is
// exactly {"metas":[…]} (what the tracker lists for a key).
func metasOf(val []byte) (metas [][]byte, ok bool) {
	var arr []byte
	n := 0
	if !objectMembers(val, func(k, v []byte, _, _ int) bool {
		n++
		if string(k) == "metas" {
			arr = v
		}
		return true
	}) || n != 1 || arr == nil {
		return nil, false
	}
	i := skipWS(arr, 0)
	if i >= len(arr) || arr[i] != '[' {
		return nil, false
	}
	i = skipWS(arr, i+1)
	if i < len(arr) && arr[i] == ']' {
		return nil, true
	}
	for i < len(arr) {
		end, ok := skipValue(arr, i)
		if !ok {
			return nil, false
		}
		metas = append(metas, arr[i:end])
		i = skipWS(arr, end)
		switch {
		case i < len(arr) && arr[i] == ',':
			i = skipWS(arr, i+1)
		case i < len(arr) && arr[i] == ']':
			return metas, true
		default:
			return nil, false
		}
	}
	return nil, false
}

// withOwnMeta returns state with meta added to key's metas (as the key's
// last meta, or as a new key): the joiner's own presence, tracked after
// the state was read. A state that is not a JSON object is returned as
// is.
func withOwnMeta(state []byte, key string, meta []byte) []byte {
	var at, kstart, kend int
	found := false
	ok := objectMembers(state, func(k, val []byte, start, end int) bool {
		kend = end
		if string(k) != key {
			return true
		}
		kstart = end - len(val)
		// The metas array's closing bracket: val is {"metas":[…]}.
		if _, isMetas := metasOf(val); !isMetas {
			return true
		}
		j := len(val) - 1 // '}'
		for j > 0 && val[j] != ']' {
			j--
		}
		at, found = kstart+j, true
		return false
	})
	if !ok {
		return state
	}
	out := make([]byte, 0, len(state)+len(meta)+len(key)+16)
	if found {
		out = append(out, state[:at]...)
		i := at - 1
		for i > 0 && isWS(state[i]) {
			i--
		}
		if state[i] != '[' {
			out = append(out, ',')
		}
		out = append(out, meta...)
		return append(out, state[at:]...)
	}
	// A new key, after the last member (or in the empty object).
	cut := kend
	if kend == 0 {
		cut = skipWS(state, 0) + 1 // just after '{'
	}
	out = append(out, state[:cut]...)
	if kend != 0 {
		out = append(out, ',')
	}
	out = AppendJSONString(out, key)
	out = append(out, `:{"metas":[`...)
	out = append(out, meta...)
	out = append(out, "]}"...)
	return append(out, state[cut:]...)
}

// streamBudget bounds the bytes of presence_state snapshots held by
// streams on this node (Config.PresenceStreamBytes).
type streamBudget struct {
	max   int64
	gauge prometheus.Gauge

	mu    sync.Mutex
	used  int64
	freed chan struct{} // closed (and replaced) whenever bytes are given back
}

func newStreamBudget(max int64, gauge prometheus.Gauge) *streamBudget {
	return &streamBudget{max: max, gauge: gauge, freed: make(chan struct{})}
}

// acquire takes n bytes, waiting until ctx ends for others to give
// bytes back. It fails at once when n is more than the whole budget.
func (b *streamBudget) acquire(ctx context.Context, n int64) bool {
	if n > b.max {
		return false
	}
	for {
		b.mu.Lock()
		if b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			b.gauge.Add(float64(n))
			return true
		}
		ch := b.freed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// tryAcquire takes n bytes if the budget has room for them now.
func (b *streamBudget) tryAcquire(n int64) bool {
	b.mu.Lock()
	ok := b.used+n <= b.max
	if ok {
		b.used += n
	}
	b.mu.Unlock()
	if ok {
		b.gauge.Add(float64(n))
	}
	return ok
}

// adjust changes what is taken by n (either sign) without waiting. Only
// a join's first read grows what it took this way, by what cutting its
// state into pieces adds to the size it reserved (a brace or two per
// piece, a key per split key); a state read again takes its bytes with
// acquire, like any other.
func (b *streamBudget) adjust(n int64) {
	if n == 0 {
		return
	}
	if n < 0 {
		b.release(-n)
		return
	}
	b.mu.Lock()
	b.used += n
	b.mu.Unlock()
	b.gauge.Add(float64(n))
}

// release gives n bytes back and wakes the waiters.
func (b *streamBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	close(b.freed)
	b.freed = make(chan struct{})
	b.mu.Unlock()
	b.gauge.Sub(float64(n))
}

// inUse returns the bytes taken.
func (b *streamBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// stateSnapshot is one read of a topic's presence_state, cut into pieces,
// shared by the streams that send it (a refresh sends one snapshot to
// every channel of the topic). Its bytes are taken from the budget until
// its last stream ends.
type stateSnapshot struct {
	pieces [][]byte
	bytes  int64 // taken from budget
	budget *streamBudget
	refs   atomic.Int32
}

// newSnapshot holds pieces (splitState). The caller has taken reserved
// bytes from the budget for it; they are set to what the pieces hold
// (nothing for a single piece, which is sent at once).
func newSnapshot(pieces [][]byte, budget *streamBudget, reserved int64) *stateSnapshot {
	s := &stateSnapshot{pieces: pieces, budget: budget, bytes: piecesBytes(pieces)}
	budget.adjust(s.bytes - reserved)
	s.refs.Store(1) // the maker's, dropped by done
	return s
}

// piecesBytes is what a snapshot of pieces takes from the budget: their
// bytes, or nothing for a single piece.
func piecesBytes(pieces [][]byte) int64 {
	if len(pieces) < 2 {
		return 0
	}
	var n int64
	for _, p := range pieces {
		n += int64(len(p))
	}
	return n
}

// streamed reports whether the snapshot goes out in pieces.
func (s *stateSnapshot) streamed() bool { return len(s.pieces) > 1 }

// done drops one reference; the last gives the bytes back.
func (s *stateSnapshot) done() {
	if s.refs.Add(-1) == 0 {
		s.pieces = nil
		s.budget.release(s.bytes)
	}
}

// presenceStream sends one snapshot to one channel (FrameStream). Next
// and Close are called one at a time by the transport.
//
// It ends early once the incarnation it was made for (gen) is no longer
// the one the client addresses (a leave, a duplicate join, the socket's
// end): a V1 client's frames carry no join_ref, so phoenix.js would
// apply the rest of the pieces to the channel's next join. At most the
// piece already queued when the join ended still goes out.
type presenceStream struct {
	snap    *stateSnapshot
	m       *metrics
	ser     Serializer
	c       *channel
	gen     uint32
	joinRef string
	next    int
	closed  bool
}

// Next implements FrameStream.
func (ps *presenceStream) Next() []byte {
	for !ps.closed && ps.next < len(ps.snap.pieces) {
		if ps.c.curGen.Load() != ps.gen {
			return nil
		}
		i := ps.next
		ps.next++
		event, payload := "presence_state", ps.snap.pieces[i]
		if i > 0 {
			event = "presence_diff"
			d := make([]byte, 0, len(payload)+len(`{"joins":,"leaves":{}}`))
			d = append(d, `{"joins":`...)
			d = append(d, payload...)
			payload = append(d, `,"leaves":{}}`...)
			ps.m.presencePieces.Inc()
		}
		f, err := encodeMessage(ps.ser, ps.joinRef, "null", ps.c.topic, event, backends.Payload{Data: payload})
		if err != nil {
			ps.m.droppedFrames.WithLabelValues(dropReason(err)).Inc()
			continue
		}
		return f
	}
	return nil
}

// Close implements FrameStream.
func (ps *presenceStream) Close() {
	if ps.closed {
		return
	}
	ps.closed = true
	ps.snap.done()
}

// sendState queues snap's presence_state to c's incarnation gen, joined
// under joinRef: one frame when it is one piece, otherwise a stream (a
// transport without streams gets every piece now).
func (s *Socket) sendState(snap *stateSnapshot, c *channel, gen uint32, joinRef string) {
	if !snap.streamed() {
		s.sendOrDrop(encodeMessage(s.ser, joinRef, "null", c.topic, "presence_state", backends.Payload{Data: snap.pieces[0]}))
		return
	}
	snap.refs.Add(1)
	ps := &presenceStream{snap: snap, m: s.srv.m, ser: s.ser, c: c, gen: gen, joinRef: joinRef}
	sc, ok := s.conn.(StreamConn)
	switch {
	case s.closed.Load():
		ps.Close()
	case ok:
		s.srv.m.presenceStreams.Inc()
		sc.SendStream(ps)
	default:
		for f := ps.Next(); f != nil; f = ps.Next() {
			s.send(f)
		}
		ps.Close()
	}
}
