package channels

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels/auth"
	"github.com/phxgate/phxgate/channels/ratelimit"
)

// Socket is the protocol state of one connection. HandleText, HandleBinary
// and Terminate are called by the gateway; the worker pool and the topic hub
// touch the socket concurrently, so its state is guarded by mu.
type Socket struct {
	srv    *Server
	conn   Conn
	params []byte
	// identity is the connect token's identity (nil when anonymous). Its
	// PlayerID and Raw are the player and claims sent to the backend, so
	// the socket does not hold them twice; see connectIdentity.
	identity *auth.Identity
	rateKey  string // per-player rate limits (ConnectInfo.RateKey)
	closed   atomic.Bool
	ser      Serializer
	lane     uint16 // the Fanout lane of conn (Laned); 0 without one
	// hb is this connection's heartbeat limit. Only handle touches it, on
	// the poller, one frame at a time per socket, so it needs no lock.
	hb ratelimit.HeartbeatBucket

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
	return s.handle(&m)
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
	return s.handle(&m)
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
		c.curGen.Store(0)
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
	respTopicTooLong   = []byte(`{"reason":"` + ReplyTopicTooLong + `"}`)
	respJoinRefTooLong = []byte(`{"reason":"` + ReplyJoinRefTooLong + `"}`)
	respUnmatched      = []byte(`{"reason":"` + ReplyUnmatchedTopic + `"}`)
	respTooMany        = []byte(`{"reason":"` + ReplyTooManyChannels + `"}`)
	respCrashed        = []byte(`{"reason":"` + ReplyJoinCrashed + `"}`)
	respOverloaded     = []byte(`{"reason":"` + backends.ReasonOverloaded + `"}`)
	respNodeOverloaded = []byte(`{"reason":"` + ReplyOverloaded + `"}`)
	respUnavail        = []byte(`{"reason":"` + backends.ReasonUnavailable + `"}`)
	respTimeout        = []byte(`{"reason":"` + backends.ReasonTimeout + `"}`)
	respBackendError   = []byte(`{"reason":"` + backends.ReasonError + `"}`)
	respBadKey         = []byte(`{"reason":"` + ReplyBadIdempotencyKey + `"}`)
	payloadCrash       = []byte(`{"reason":"` + ReplyChannelCrash + `"}`)
)

// joinTooLong returns the refusal of a join whose topic or join_ref is
// over its limit, or nil.
func (s *Socket) joinTooLong(topic []byte, joinRef string) []byte {
	switch {
	case len(topic) > s.srv.cfg.MaxTopicBytes:
		return respTopicTooLong
	case len(joinRef) > s.srv.cfg.MaxJoinRefBytes:
		return respJoinRefTooLong
	}
	return nil
}

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

// channelFull reports (and counts) that n more client calls would take c
// past ChannelQueue. Called with mu held.
func (s *Socket) channelFull(c *channel, n int) bool {
	if len(c.queue)+n > s.srv.cfg.ChannelQueue {
		s.srv.m.overloaded.WithLabelValues("channel").Inc()
		return true
	}
	return false
}

// enqueue appends tasks to a channel's FIFO, all or none, and schedules the
// channel if idle. Client calls (must false) are refused past ChannelQueue
// or when the pool queue is full; the caller answers them with
// rejectInOrder. Called with mu held.
func (s *Socket) enqueue(c *channel, must bool, ts ...*task) bool {
	if !must && s.channelFull(c, len(ts)) {
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

// rejectInOrder answers a client message addressed to slot c (nil: the
// topic has no slot) with an error reply carrying response, without calling
// the backend, in its turn; see replyInOrder. Called with mu held.
func (s *Socket) rejectInOrder(c *channel, joinRef, ref, topic string, response []byte) error {
	return s.replyInOrder(c, joinRef, ref, topic, false, response)
}

// replyInOrder answers a client message addressed to slot c (nil: the
// topic has no slot) with an "ok" (ok set) or "error" reply carrying
// response (nil: {}), without calling the backend, in its turn: replies on
// one topic go out in the order the client sent the messages, as from
// Phoenix's per-channel mailbox. When c has work running or queued, the
// reply becomes a task at the tail of c's FIFO (holding the refs and
// response, not a frame); otherwise every earlier reply on c has been sent
// and it is sent at once. response is kept by reference until sent and
// must not be modified. Such a reply costs little, so a client can queue
// many, but not without bound: past ChannelQueueHard tasks on c nothing is
// queued and a *CloseError (1013, ReasonOverloaded) is returned, which
// HandleText/HandleBinary hand to the gateway to close the socket. Called
// with mu held.
func (s *Socket) replyInOrder(c *channel, joinRef, ref, topic string, ok bool, response []byte) error {
	if c == nil || !c.running {
		// Not running means the queue is empty and no task is executing
		// (run clears running only then, under mu): nothing is owed.
		s.send(s.replyFrame(joinRef, ref, topic, replyStatus(ok), response))
		return nil
	}
	if len(c.queue) >= s.srv.cfg.ChannelQueueHard {
		s.srv.m.floodCloses.Inc()
		return &CloseError{
			Code:   CloseTryAgainLater,
			Reason: ReasonOverloaded,
			Err:    fmt.Errorf("channels: %d messages queued on %q", len(c.queue), c.topic),
		}
	}
	c.queue = append(c.queue, &task{kind: taskReply, ok: ok, joinRef: joinRef, ref: ref, payload: response})
	return nil
}

func replyStatus(ok bool) string {
	if ok {
		return "ok"
	}
	return "error"
}

func (s *Socket) handle(m *message) error {
	// Refs are kept in queued tasks (and echoed) until the reply is sent:
	// bound them for every serializer here, before anything keeps one.
	if err := s.refsTooLong(m); err != nil {
		s.srv.m.messagesIn.WithLabelValues("malformed").Inc()
		return err
	}
	switch string(m.event) {
	case "heartbeat":
		if string(m.topic) == "phoenix" {
			s.srv.m.messagesIn.WithLabelValues("heartbeat").Inc()
			if ok, err := s.allowHeartbeat(); !ok {
				return err // over the limit: no reply (nil) or abuse (1008)
			}
			s.send(s.replyFrame("null", m.refToken(), "phoenix", "ok", nil))
			return nil
		}
	case "phx_join":
		s.srv.m.messagesIn.WithLabelValues("join").Inc()
		return s.handleJoin(m)
	case "phx_leave":
		s.srv.m.messagesIn.WithLabelValues("leave").Inc()
		return s.handleLeave(m)
	}
	s.srv.m.messagesIn.WithLabelValues("event").Inc()
	return s.handleEvent(m)
}

// refsTooLong returns a 1011 (malformed) *CloseError when m's ref, or the
// join_ref of a message other than a join, is over MaxRefBytes. A join's
// join_ref is the channel's and gets a reply instead (joinTooLong).
func (s *Socket) refsTooLong(m *message) error {
	limit := s.srv.cfg.MaxRefBytes
	if n := refTokenLen(m.ref, m.rawRefs, limit); n > limit {
		return malformed("ref of %d bytes, limit %d", n, limit)
	}
	if string(m.event) == "phx_join" {
		return nil
	}
	if n := refTokenLen(m.joinRef, m.rawRefs, limit); n > limit {
		return malformed("join_ref of %d bytes, limit %d", n, limit)
	}
	return nil
}

// refTokenLen is the length of the raw JSON token kept for a ref field b:
// b itself for text frames; for binary frames (raw set) the JSON string
// made of it (refTokenFromString), null when empty. Lengths over limit are
// reported without encoding.
func refTokenLen(b []byte, raw bool, limit int) int {
	switch {
	case !raw:
		return len(b)
	case len(b) == 0:
		return len("null")
	case len(b)+2 > limit:
		return len(b) + 2
	}
	var buf [80]byte
	return len(AppendJSONString(buf[:0], string(b)))
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

func (s *Socket) handleJoin(m *message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil
	}
	jr, ref := m.joinRefToken(), m.refToken()
	if resp, err := s.allowJoin(); resp != nil || err != nil {
		// Charged before anything else, so a flood of joins to unrouted
		// topics is limited too.
		if err != nil {
			return err
		}
		s.srv.m.joins.WithLabelValues(joinRateLimited).Inc()
		return s.rejectInOrder(s.find(m.topic), jr, ref, string(m.topic), resp)
	}
	// The channel's join_ref is join_ref || ref (Phoenix channel/server.ex);
	// V1 clients usually send none, and then close/error frames carry a
	// null ref.
	effJR, closeRefNull := jr, false
	if s.ser == V1 && !m.hasJoinRef() {
		effJR, closeRefNull = ref, true
	}
	// A channel keeps its topic and join_ref for its life: bound them so a
	// socket cannot pin MaxChannels × max_message_size bytes. In order
	// with the slot's replies when the topic already has one (a duplicate
	// join with a long join_ref).
	if resp := s.joinTooLong(m.topic, effJR); resp != nil {
		s.srv.m.joins.WithLabelValues(joinTooLong).Inc()
		return s.rejectInOrder(s.find(m.topic), jr, ref, string(m.topic), resp)
	}
	c := s.find(m.topic)
	var ts []*task
	if c != nil && c.curGen.Load() != 0 {
		s.srv.m.joins.WithLabelValues(joinDuplicate).Inc()
		ts = append(ts, &task{kind: taskDupLeave, gen: c.curGen.Load()})
	}
	fresh := false
	if c == nil {
		route := s.srv.router.match(m.topic)
		if route == nil && s.forbidsUnrouted(m) {
			// A topic the player may not join is unauthorized whether or
			// not it is routed: the answer does not reveal the routes.
			s.srv.m.joins.WithLabelValues(joinUnauthorized).Inc()
			s.send(s.replyFrame(jr, ref, string(m.topic), "error", respUnauthorized))
			return nil
		}
		if route == nil {
			s.srv.m.joins.WithLabelValues(joinUnmatched).Inc()
			s.send(s.replyFrame("null", ref, string(m.topic), "error", respUnmatched))
			return nil
		}
		if len(s.chans) >= s.srv.cfg.MaxChannels {
			s.srv.m.joins.WithLabelValues(joinTooMany).Inc()
			s.send(s.replyFrame(jr, ref, string(m.topic), "error", respTooMany))
			return nil
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
		t.token, t.hasToken = joinToken(m.payload)
	}
	ts = append(ts, t)
	if !s.enqueue(c, false, ts...) {
		s.srv.m.joins.WithLabelValues(joinOverloaded).Inc()
		if fresh {
			// A fresh slot is idle, so only the pool refused it and the
			// reply goes out at once.
			s.remove(c)
			c = nil
		}
		return s.rejectInOrder(c, jr, ref, string(m.topic), respOverloaded)
	}
	c.gen++
	c.curGen.Store(c.gen)
	c.curJoinRef = effJR
	return nil
}

func (s *Socket) handleLeave(m *message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil
	}
	c := s.find(m.topic)
	if c != nil && c.curGen.Load() != 0 {
		if staleJoinRef(m, c.curJoinRef) {
			s.srv.m.messagesIn.WithLabelValues("stale").Inc()
			return nil
		}
		// Unchecked against the queue bounds: there is one such leave per
		// incarnation (curGen is cleared below), and incarnations are
		// bounded by the joins, which are checked. joinRef is the
		// message's: it is the reply's join_ref only if the join fails
		// first, and Phoenix answers a leave on a topic not joined with
		// the message's join_ref (null when the client sent null).
		s.enqueue(c, true, &task{kind: taskLeave, gen: c.curGen.Load(), joinRef: m.joinRefToken(), ref: m.refToken()})
		c.curGen.Store(0)
		return nil
	}
	// Not joined: ok reply. Behind a busy slot it waits its turn so that
	// replies on one topic stay in order; a client can send any number of
	// these, so they are bounded like refusals.
	return s.replyInOrder(c, m.joinRefToken(), m.refToken(), string(m.topic), true, nil)
}

func (s *Socket) handleEvent(m *message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil
	}
	c := s.find(m.topic)
	if c == nil || c.curGen.Load() == 0 {
		// Not joined (possibly joining or leaving): in order behind the
		// slot's work, and bounded, since a client can send any number.
		return s.rejectInOrder(c, "null", m.refToken(), string(m.topic), respUnmatched)
	}
	if staleJoinRef(m, c.curJoinRef) {
		s.srv.m.messagesIn.WithLabelValues("stale").Inc()
		return nil
	}
	if resp, err := s.allowEvent(c, m.event); resp != nil || err != nil {
		if err != nil {
			return err
		}
		return s.rejectInOrder(c, c.curJoinRef, m.refToken(), c.topic, resp)
	}
	// Output budget spent: shed the push before it costs a backend call
	// or makes more output. Refusals are small and bounded like the rest.
	if s.srv.overloaded() {
		s.srv.m.shed.WithLabelValues(shedPush).Inc()
		return s.rejectInOrder(c, c.curJoinRef, m.refToken(), c.topic, respNodeOverloaded)
	}
	// Checked before the payload is copied: a refused push keeps nothing
	// of it.
	if s.channelFull(c, 1) {
		return s.rejectInOrder(c, c.curJoinRef, m.refToken(), c.topic, respOverloaded)
	}
	t := &task{
		kind: taskEvent, gen: c.curGen.Load(), joinRef: c.curJoinRef, ref: m.refToken(),
		event: string(m.event), payload: append([]byte(nil), m.payload...), binary: m.binary,
	}
	if !s.enqueue(c, false, t) {
		// The pool queue is full; c was idle (a running slot never asks
		// the pool), so this reply goes out at once and is still in order.
		return s.rejectInOrder(c, c.curJoinRef, t.ref, c.topic, respOverloaded)
	}
	return nil
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
