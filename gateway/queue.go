package gateway

import "github.com/phxgate/phxgate/channels"

// entryOverhead is what one queued frame costs beyond its bytes, charged
// against write_queue_max_bytes and the node's output budget: its ring
// slot, a 24-byte slice header, of which the ring holds up to four per
// entry before it shrinks (96 bytes at worst). A frame made for one socket
// (a reply) is also its own allocation, but its bytes are charged already.
// Without this a flood of tiny frames would hold megabytes while being
// charged a few kilobytes.
const entryOverhead = 96

// minRing is the smallest ring allocated, and the largest kept once the
// queue is empty: a socket that had a burst gives the rest back.
const minRing = 8

// outQueue is what one socket holds for its client: shared immutable
// frames, oldest first, in a ring that grows by doubling and shrinks as it
// drains. It exists only while the socket has something to send (and
// until the next sweep), so an idle socket holds none. Guarded by conn.mu.
type outQueue struct {
	ring [][]byte // power-of-two length; nil until the first push
	head int32    // index of the oldest entry
	n    int32    // entries
	off  int32    // bytes of the oldest entry already written
	// charged is what the queue holds for the client: unwritten frame
	// bytes plus entryOverhead per entry, the pending pong included.
	charged int64
	// pong is the pong owed for the most recent ping, not yet in the ring
	// (RFC 6455 §5.5.3 allows answering only the most recent ping, so a
	// ping flood holds one pong, not one per ping). It goes in at the
	// front at the next frame boundary: control frames may be sent
	// between the frames of a message, and a pong should not wait behind
	// a backlog.
	pong []byte
	// frontPong: the oldest entry is a pong taken from pong (it may be
	// partly written). A newer pong replaces it while it has not started
	// and otherwise waits for it, so pongs never overtake each other.
	frontPong bool
	// streams are the frame streams queued (channels.StreamConn), oldest
	// first: each holds one place in the ring, a nil entry (no frame is
	// ever empty), charged entryOverhead like a frame. When a stream's
	// place reaches the front, the writer puts the stream's next frame
	// before it (pullStream); frames behind it wait until it is done. A
	// nil stream was given up (closed already): its place is just
	// removed.
	streams []channels.FrameStream
	// moved is the poller clock of the last write that took bytes from
	// the queue, or of the sweep that first found it holding something
	// (0: not seen holding anything since it last emptied). Poller only.
	moved int64
}

// cost is what a frame of n bytes is charged while queued.
func cost(n int) int64 { return int64(n) + entryOverhead }

func (q *outQueue) empty() bool { return q.n == 0 && q.pong == nil }

func (q *outQueue) mask() int32 { return int32(len(q.ring)) - 1 }

// at returns the i-th oldest entry.
func (q *outQueue) at(i int32) []byte { return q.ring[(q.head+i)&q.mask()] }

func (q *outQueue) push(f []byte) {
	q.pushEntry(f)
	q.charged += cost(len(f))
}

// pushStream queues st's place.
func (q *outQueue) pushStream(st channels.FrameStream) {
	q.pushEntry(nil)
	q.streams = append(q.streams, st)
	q.charged += entryOverhead
}

// pushEntry appends one ring entry, uncharged.
func (q *outQueue) pushEntry(f []byte) {
	if int(q.n) == len(q.ring) {
		q.resize(max(minRing, 2*len(q.ring)))
	}
	q.ring[(q.head+q.n)&q.mask()] = f
	q.n++
}

// pushFront puts f before every entry. The caller makes sure the oldest
// entry is not partly written (off == 0) and has charged f already.
func (q *outQueue) pushFront(f []byte) {
	if int(q.n) == len(q.ring) {
		q.resize(max(minRing, 2*len(q.ring)))
	}
	q.head = (q.head - 1) & q.mask()
	q.ring[q.head] = f
	q.n++
}

// streamAtFront reports whether the oldest entry is a stream's place.
func (q *outQueue) streamAtFront() bool { return q.n > 0 && q.at(0) == nil }

// pullStream makes progress on the stream whose place is at the front
// (streamAtFront): its next frame goes before its place, charged; a
// stream that is done (or was given up) is closed and its place removed.
// It returns the bytes charged (negative when a place was removed).
// Called with conn.mu held, so Next and Close run one at a time.
func (q *outQueue) pullStream() int64 {
	st := q.streams[0]
	var f []byte
	if st != nil {
		f = st.Next()
	}
	if len(f) > 0 {
		q.pushFront(f)
		q.charged += cost(len(f))
		return cost(len(f))
	}
	if st != nil {
		st.Close()
	}
	q.streams[0] = nil
	q.streams = q.streams[1:]
	if len(q.streams) == 0 {
		q.streams = nil
	}
	q.ring[q.head] = nil
	q.head = (q.head + 1) & q.mask()
	q.n--
	q.charged -= entryOverhead
	return -entryOverhead
}

// giveUpStreams closes every queued stream now (the socket is closing:
// nothing more of them will be read); their places stay, to be removed
// as the writer reaches them.
func (q *outQueue) giveUpStreams() {
	for i, st := range q.streams {
		if st != nil {
			st.Close()
			q.streams[i] = nil
		}
	}
}

// setPong records the pong owed for the latest ping, replacing one still
// pending (never one already in the ring, which may be partly written).
func (q *outQueue) setPong(f []byte) {
	if q.pong != nil {
		q.charged -= cost(len(q.pong))
	}
	q.pong = f
	q.charged += cost(len(f))
}

// takePong moves a pending pong to the front of the ring when the oldest
// entry has not been started, so that it leaves with the next write. An
// older pong still at the front is replaced if it has not started (only
// the latest ping needs an answer), or else is left to finish first.
func (q *outQueue) takePong() {
	if q.pong == nil || q.off != 0 {
		return
	}
	if q.frontPong {
		q.charged -= cost(len(q.ring[q.head]))
		q.ring[q.head] = q.pong
	} else {
		q.pushFront(q.pong)
		q.frontPong = true
	}
	q.pong = nil
}

// written pops n written bytes off the front and returns the number of
// frames completed. It shrinks the ring once it is a quarter full.
func (q *outQueue) written(n int) (done int) {
	q.charged -= int64(n)
	for n > 0 {
		rem := len(q.at(0)) - int(q.off)
		if n < rem {
			q.off += int32(n)
			break
		}
		n -= rem
		q.off = 0
		q.frontPong = false
		q.ring[q.head] = nil
		q.head = (q.head + 1) & q.mask()
		q.n--
		q.charged -= entryOverhead
		done++
	}
	if len(q.ring) > minRing && int(q.n) <= len(q.ring)/4 {
		q.resize(len(q.ring) / 2)
	}
	return done
}

// dropUnsent discards every entry but a partly written oldest one (cutting
// it would corrupt the stream) and the newest one when keepLast is set
// (the close frame). It returns the bytes no longer charged.
func (q *outQueue) dropUnsent(keepLast bool) int64 {
	before := q.charged
	var first, last []byte
	keepFirst := q.off > 0 && q.n > 0
	if keepFirst {
		first = q.at(0)
	}
	if keepLast && q.n > 0 && (!keepFirst || q.n > 1) {
		last = q.at(q.n - 1)
	}
	q.giveUpStreams()
	off, frontPong := q.off, q.frontPong
	*q = outQueue{}
	if first != nil {
		q.push(first)
		q.off = off
		q.charged -= int64(off)
		q.frontPong = frontPong
	}
	if last != nil {
		q.push(last)
	}
	return before - q.charged
}

// resize moves the entries, oldest first, into a ring of size entries.
func (q *outQueue) resize(size int) {
	ring := make([][]byte, size)
	for i := range q.n {
		ring[i] = q.at(i)
	}
	q.ring, q.head = ring, 0
}
