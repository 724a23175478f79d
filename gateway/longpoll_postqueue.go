//go:build linux

package gateway

import (
	"io"
	"net/http"
	"sync"
	"time"
)

// lpPostQueue orders the POSTs of one session. phoenix.js before 1.7.0
// sends one POST per push without waiting for the previous one (joining
// two channels in one tick is two concurrent POSTs), and Phoenix handles
// them concurrently, each handing its messages to the session process in
// the order the bodies were read. So a POST here reads its body first,
// then waits for the session's dispatch turn: turns are handed out in the
// order the POSTs asked for them (the order their bodies were read), one
// at a time. At most longPollMaxSessionPosts POSTs of a session are in
// flight (reading, waiting or dispatching); past that a POST is refused
// with 409 before its body is read.
//
// Its mutex is a leaf: nothing else is locked while it is held.
type lpPostQueue struct {
	mu       sync.Mutex
	inFlight int             // POSTs admitted and not yet done
	busy     bool            // a POST holds the dispatch turn
	waiting  []chan struct{} // POSTs waiting for the turn, in arrival order
}

// enter admits a POST; false past longPollMaxSessionPosts.
func (q *lpPostQueue) enter() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.inFlight >= longPollMaxSessionPosts {
		return false
	}
	q.inFlight++
	return true
}

// leave undoes enter.
func (q *lpPostQueue) leave() {
	q.mu.Lock()
	q.inFlight--
	q.mu.Unlock()
}

// lock waits for the dispatch turn until it comes, the timer fires (the
// window passed), the client leaves or the node stops; true if the caller
// holds the turn and must unlock.
func (q *lpPostQueue) lock(timer <-chan time.Time, gone, stop <-chan struct{}) bool {
	q.mu.Lock()
	if !q.busy && len(q.waiting) == 0 {
		q.busy = true
		q.mu.Unlock()
		return true
	}
	turn := make(chan struct{}, 1)
	q.waiting = append(q.waiting, turn)
	q.mu.Unlock()
	select {
	case <-turn:
		return true
	case <-timer:
	case <-gone:
	case <-stop:
	}
	q.mu.Lock()
	for i, w := range q.waiting {
		if w == turn {
			q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
			q.mu.Unlock()
			return false
		}
	}
	q.mu.Unlock()
	// The turn was handed over as the wait ended: pass it on.
	<-turn
	q.unlock()
	return false
}

// unlock hands the turn to the first waiting POST, if any.
func (q *lpPostQueue) unlock() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) == 0 {
		q.busy = false
		return
	}
	next := q.waiting[0]
	q.waiting = q.waiting[1:]
	next <- struct{}{}
}

// waiters is the number of POSTs waiting for the turn (tests).
func (q *lpPostQueue) waiters() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiting)
}

// dispatchTurn waits for ss's dispatch turn for up to a window, while the
// client is there (once its body is read, net/http notices a departed
// client) and the node runs.
func (lp *longPoll) dispatchTurn(r *http.Request, ss *lpSession) bool {
	t := time.NewTimer(lp.cfg.Window)
	defer t.Stop()
	return ss.posts.lock(t.C, r.Context().Done(), lp.stop)
}

// lpReadBody reads a POST body. One of known length (the caller refused
// one over LongPollMaxBodyBytes) ends in one buffer of exactly that
// length, but the buffer grows with what arrives: it starts at
// lpBodyStartBytes and doubles up to LongPollSmallPostBytes, then goes to
// the full length, so a POST that sent only its headers holds
// lpBodyStartBytes, a small one at most twice what it sent, and a large
// one (which holds a reading slot) allocates little over its length. One
// of unknown length grows to at most LongPollMaxBodyBytes.
func lpReadBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	n := r.ContentLength
	if n < 0 {
		return io.ReadAll(http.MaxBytesReader(w, r.Body, LongPollMaxBodyBytes))
	}
	buf := make([]byte, 0, min(n, lpBodyStartBytes))
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			next := n
			if c := int64(cap(buf)); c < LongPollSmallPostBytes {
				next = min(2*c, n)
			}
			grown := make([]byte, len(buf), next)
			copy(grown, buf)
			buf = grown
		}
		m, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		switch {
		case err == io.EOF && int64(len(buf)) < n:
			return nil, io.ErrUnexpectedEOF
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return nil, err
		}
	}
	return buf, nil
}
