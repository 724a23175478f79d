package channels

import (
	"sync"
	"sync/atomic"

	"github.com/phxgate/phxgate/backends"
)

// Socket is the protocol state of one connection. HandleText, HandleBinary
// and Terminate are called by the gateway; the worker pool and the topic hub
// touch the socket concurrently, so its state is guarded by mu.
type Socket struct {
	srv      *Server
	conn     Conn
	params   []byte
	claims   []byte
	playerID string
	closed   atomic.Bool
	ser      Serializer

	mu    sync.Mutex
	chans []*channel // slots by topic; a slice because sockets hold few
}

// Serializer returns the socket's wire format.
func (s *Socket) Serializer() Serializer { return s.ser }

// HandleText handles one text frame. data is valid only until return and
// is valid UTF-8 (the gateway closes with 1007 otherwise). A
// *CloseError means the gateway must close the socket with its Code.
func (s *Socket) HandleText(data []byte) error {
	var m message
	var err error
	if s.ser == V1 {
		err = decodeV1(data, &m)
	} else {
		err = decodeV2(data, &m)
	}
	if err != nil {
		s.srv.m.messagesIn.WithLabelValues("malformed").Inc()
		return err
	}
	s.handle(&m)
	return nil
}

// HandleBinary handles one binary frame (V2 binary push). V1 is text only,
// so a binary frame on a V1 socket is malformed (1011), as Phoenix's V1
// serializer cannot decode it either.
func (s *Socket) HandleBinary(data []byte) error {
	if s.ser == V1 {
		s.srv.m.messagesIn.WithLabelValues("malformed").Inc()
		return malformed("binary frame on a V1 socket")
	}
	var m message
	if err := decodeBinary(data, &m); err != nil {
		s.srv.m.messagesIn.WithLabelValues("malformed").Inc()
		return err
	}
	s.handle(&m)
	return nil
}

// Terminate ends the socket: every channel gets exactly one Leave with
// reason, after its pending calls, and nothing more is sent. Idempotent.
func (s *Socket) Terminate(reason backends.LeaveReason) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return
	}
	for _, c := range s.chans {
		c.curGen = 0
		s.enqueue(c, true, &task{kind: taskTerminate, reason: reason})
	}
}

// send queues a frame unless the socket is terminated.
func (s *Socket) send(frame []byte) {
	if frame == nil || s.closed.Load() {
		return
	}
	s.conn.Send(frame)
}

func (s *Socket) sendOrDrop(frame []byte, err error) {
	if err != nil {
		s.srv.m.droppedFrames.WithLabelValues(dropReason(err)).Inc()
		return
	}
	s.send(frame)
}

func (s *Socket) reply(joinRef, ref, topic, status string, resp backends.Payload) {
	s.sendOrDrop(encodeReply(s.ser, joinRef, ref, topic, status, resp))
}

func (s *Socket) replyFrame(joinRef, ref, topic, status string, resp []byte) []byte {
	f, _ := encodeReply(s.ser, joinRef, ref, topic, status, backends.Payload{Data: resp})
	return f
}

var (
	respUnmatched  = []byte(`{"reason":"` + ReplyUnmatchedTopic + `"}`)
	respTooMany    = []byte(`{"reason":"` + ReplyTooManyChannels + `"}`)
	respCrashed    = []byte(`{"reason":"` + ReplyJoinCrashed + `"}`)
	respOverloaded = []byte(`{"reason":"` + backends.ReasonOverloaded + `"}`)
	respUnavail    = []byte(`{"reason":"` + backends.ReasonUnavailable + `"}`)
	respTimeout    = []byte(`{"reason":"` + backends.ReasonTimeout + `"}`)
	payloadCrash   = []byte(`{"reason":"` + ReplyChannelCrash + `"}`)
)

// find returns the slot for topic. Called with mu held.
func (s *Socket) find(topic []byte) *channel {
	for _, c := range s.chans {
		if c.topic == string(topic) {
			return c
		}
	}
	return nil
}

// remove drops a slot. Called with mu held.
func (s *Socket) remove(c *channel) {
	for i, x := range s.chans {
		if x == c {
			last := len(s.chans) - 1
			s.chans[i] = s.chans[last]
			s.chans[last] = nil
			s.chans = s.chans[:last]
			if len(s.chans) == 0 {
				s.chans = nil
			}
			return
		}
	}
}

// enqueue appends tasks to a channel's FIFO, all or none, and schedules the
// channel if idle. Client calls (must false) are refused past ChannelQueue
// or when the pool queue is full. Called with mu held.
func (s *Socket) enqueue(c *channel, must bool, ts ...*task) bool {
	if !must && len(c.queue)+len(ts) > s.srv.cfg.ChannelQueue {
		s.srv.m.overloaded.WithLabelValues("channel").Inc()
		return false
	}
	if !c.running {
		if !s.srv.schedule(c, must) {
			s.srv.m.overloaded.WithLabelValues("pool").Inc()
			return false
		}
		c.running = true
	}
	c.queue = append(c.queue, ts...)
	return true
}

func (s *Socket) handle(m *message) {
	switch string(m.event) {
	case "heartbeat":
		if string(m.topic) == "phoenix" {
			s.srv.m.messagesIn.WithLabelValues("heartbeat").Inc()
			s.send(s.replyFrame("null", m.refToken(), "phoenix", "ok", nil))
			return
		}
	case "phx_join":
		s.srv.m.messagesIn.WithLabelValues("join").Inc()
		s.handleJoin(m)
		return
	case "phx_leave":
		s.srv.m.messagesIn.WithLabelValues("leave").Inc()
		s.handleLeave(m)
		return
	}
	s.srv.m.messagesIn.WithLabelValues("event").Inc()
	s.handleEvent(m)
}

// staleJoinRef reports whether m addresses an older incarnation of c: a
// non-null join_ref that differs from the current one (1.8.12 accepts null).
func staleJoinRef(m *message, cur string) bool {
	if !m.hasJoinRef() {
		return false
	}
	if m.rawRefs {
		return refString(cur) != string(m.joinRef)
	}
	return string(m.joinRef) != cur
}

func (s *Socket) handleJoin(m *message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return
	}
	jr, ref := m.joinRefToken(), m.refToken()
	// The channel's join_ref is join_ref || ref (Phoenix channel/server.ex);
	// V1 clients usually send none, and then close/error frames carry a
	// null ref.
	effJR, closeRefNull := jr, false
	if s.ser == V1 && !m.hasJoinRef() {
		effJR, closeRefNull = ref, true
	}
	c := s.find(m.topic)
	var ts []*task
	if c != nil && c.curGen != 0 {
		s.srv.m.joins.WithLabelValues(joinDuplicate).Inc()
		ts = append(ts, &task{kind: taskDupLeave, gen: c.curGen})
	}
	fresh := false
	if c == nil {
		route := s.srv.router.match(m.topic)
		if route == nil {
			s.srv.m.joins.WithLabelValues(joinUnmatched).Inc()
			s.send(s.replyFrame("null", ref, string(m.topic), "error", respUnmatched))
			return
		}
		if len(s.chans) >= s.srv.cfg.MaxChannels {
			s.srv.m.joins.WithLabelValues(joinTooMany).Inc()
			s.send(s.replyFrame(jr, ref, string(m.topic), "error", respTooMany))
			return
		}
		c = &channel{sock: s, topic: string(m.topic), route: route, hubIdx: -1}
		s.chans = append(s.chans, c)
		fresh = true
	}
	t := &task{kind: taskJoin, gen: c.gen + 1, joinRef: effJR, ref: ref, closeRefNull: closeRefNull, binary: m.binary}
	if m.binary {
		t.payload = append([]byte(nil), m.payload...)
	} else {
		t.payload, t.offset, t.positions = stripJoinPayload(m.payload)
	}
	ts = append(ts, t)
	if !s.enqueue(c, false, ts...) {
		s.srv.m.joins.WithLabelValues(joinOverloaded).Inc()
		if fresh {
			s.remove(c)
		}
		s.send(s.replyFrame(jr, ref, string(m.topic), "error", respOverloaded))
		return
	}
	c.gen++
	c.curGen, c.curJoinRef = c.gen, effJR
}

func (s *Socket) handleLeave(m *message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return
	}
	c := s.find(m.topic)
	if c != nil && c.curGen != 0 {
		if staleJoinRef(m, c.curJoinRef) {
			s.srv.m.messagesIn.WithLabelValues("stale").Inc()
			return
		}
		s.enqueue(c, true, &task{kind: taskLeave, gen: c.curGen, joinRef: c.curJoinRef, ref: m.refToken()})
		c.curGen = 0
		return
	}
	// Not joined: ok reply. Behind a busy slot it waits its turn so that
	// replies on one topic stay in order.
	f := s.replyFrame(m.joinRefToken(), m.refToken(), string(m.topic), "ok", nil)
	if c != nil {
		s.enqueue(c, true, &task{kind: taskFrame, frame: f})
		return
	}
	s.send(f)
}

func (s *Socket) handleEvent(m *message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return
	}
	c := s.find(m.topic)
	if c == nil || c.curGen == 0 {
		f := s.replyFrame("null", m.refToken(), string(m.topic), "error", respUnmatched)
		if c != nil {
			s.enqueue(c, true, &task{kind: taskFrame, frame: f})
			return
		}
		s.send(f)
		return
	}
	if staleJoinRef(m, c.curJoinRef) {
		s.srv.m.messagesIn.WithLabelValues("stale").Inc()
		return
	}
	t := &task{
		kind: taskEvent, gen: c.curGen, joinRef: c.curJoinRef, ref: m.refToken(),
		event: string(m.event), payload: append([]byte(nil), m.payload...), binary: m.binary,
	}
	if !s.enqueue(c, false, t) {
		s.send(s.replyFrame(c.curJoinRef, t.ref, c.topic, "error", respOverloaded))
	}
}

// stripJoinPayload copies a join payload without the keys the gateway
// consumes ("offset" for positions, "token" for join auth), so the backend
// never sees them. It reports the raw "offset" value and whether it was
// present (the per-channel opt-in to positions).
func stripJoinPayload(p []byte) (out []byte, offset string, positions bool) {
	if len(p) == 0 || p[0] != '{' {
		return append([]byte(nil), p...), "", false
	}
	strip := false
	objectMembers(p, func(key, val []byte, _, _ int) bool {
		switch string(key) {
		case "offset":
			offset, positions, strip = string(val), true, true
		case "token":
			strip = true
		}
		return true
	})
	if !strip {
		return append([]byte(nil), p...), offset, positions
	}
	out = make([]byte, 0, len(p))
	out = append(out, '{')
	objectMembers(p, func(key, _ []byte, start, end int) bool {
		if string(key) == "offset" || string(key) == "token" {
			return true
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, p[start:end]...)
		return true
	})
	out = append(out, '}')
	return out, offset, positions
}
