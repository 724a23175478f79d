package channels

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels/auth"
	"github.com/phxgate/phxgate/pubsub"
	"go.opentelemetry.io/otel/trace"
)

type taskKind uint8

const (
	taskJoin      taskKind = iota // phx_join for incarnation gen
	taskEvent                     // client event for incarnation gen
	taskLeave                     // phx_leave for incarnation gen (joinRef: the message's)
	taskDupLeave                  // incarnation gen replaced by a duplicate join
	taskTerminate                 // the transport is gone
	taskReply                     // a reply made without a backend call (ok: status; payload: the shared, read-only response)
	taskLost                      // the topic's continuity was lost (hub): end with phx_error if still marked
)

// task is one queued piece of work for a channel. Everything in it is owned
// (copied out of the frame buffer).
type task struct {
	kind         taskKind
	binary       bool
	positions    bool // join: the payload had "offset" (opt-in)
	closeRefNull bool // join (V1): close/error frames carry a null ref
	ok           bool // reply: status "ok" rather than "error"
	gen          uint32
	joinRef      string // raw token: the channel's join_ref (leave: the message's)
	ref          string // raw token
	event        string
	offset       string // join: raw "offset" value
	token        string // join: the payload's "token" (never sent to the backend)
	hasToken     bool   // join: the payload had a "token" key
	payload      []byte
	reason       backends.LeaveReason
}

// channel is one topic slot on a socket. The client addresses an
// incarnation (one join); a duplicate join or a rejoin after leave makes a
// new incarnation in the same slot, so that every call for a topic goes
// through one FIFO, in the order the client sent it.
//
// Every idle joined connection holds one, so it is kept at 128 bytes (a
// malloc size class): fields that are set only by join tokens, duplicate
// joins or resuming joins live in channelRare, allocated on first use. The
// fields are ordered so that the small ones share words.
type channel struct {
	sock  *Socket
	route *Route
	topic string

	// Poller side, guarded by sock.mu.
	curJoinRef string
	queue      []*task
	gen        uint32 // last incarnation handed out
	// curGen is the incarnation the client addresses (0: none). Written
	// under sock.mu; atomic because a presence_state stream reads it from
	// the transport, which must not take sock.mu (presenceStream.Next).
	curGen  atomic.Uint32
	running bool

	// Worker side: only the goroutine running the slot touches these.
	wCloseRefNull bool
	wGen          uint32 // joined incarnation; 0: not joined
	wJoinRef      string

	// Hub side, guarded by the mu of the topic lane holding the channel.
	th        *topicHub
	hubIdx    int32
	positions bool

	// rare is nil until one of its fields is first needed, then set once
	// (by the goroutine running the slot) and never cleared, so a reader
	// holding any of the locks sees nil or the one side struct. Atomic
	// because its readers hold different locks; each field inside keeps
	// the lock it had as a channel field.
	rare atomic.Pointer[channelRare]
}

// channelRare holds the channel fields that are zero on almost every
// channel; see channel.rare.
type channelRare struct {
	// joinID is the identity of this channel's join token (nil: the
	// socket's applies). Guarded by sock.mu: written by the worker under
	// it; read by the poller under it and by the worker running the slot.
	joinID *auth.Identity
	// pendingClose holds the join_refs of replaced incarnations (phx_close
	// after the next join reply). Worker side.
	pendingClose []string
	// resume is non-nil from an opted-in join until its first live event
	// past the reported position (see resumeState). Hub side, guarded
	// like channel.th.
	resume *resumeState
	// ahead is the lane sequence number up to which this channel already
	// has its topic's pending events, queued to it directly when it
	// broadcast to its own topic (drainOwn); the lane skips it for those.
	// 0 when none. Hub side, guarded like channel.th; reset on add and del.
	ahead uint64
	// lost marks a channel holding positions whose topic lost continuity:
	// it gets no more events and its worker ends it with phx_error
	// (taskLost). Hub side, guarded like channel.th; reset on add and del.
	lost bool
	// presenceTag names the presence this incarnation holds on the
	// tracker ("" when none). Worker side.
	presenceTag string
}

// side returns c.rare, allocating it on first use.
func (c *channel) side() *channelRare {
	if r := c.rare.Load(); r != nil {
		return r
	}
	c.rare.CompareAndSwap(nil, &channelRare{})
	return c.rare.Load()
}

// joinIdentity returns the join token's identity (nil: the socket's
// applies). The caller holds sock.mu or is the worker running the slot.
func (c *channel) joinIdentity() *auth.Identity {
	if r := c.rare.Load(); r != nil {
		return r.joinID
	}
	return nil
}

// closeRef is the ref slot of this incarnation's phx_close/phx_error: the
// join_ref, or null for a V1 client that sent none.
func (c *channel) closeRef() string {
	if c.wCloseRefNull {
		return "null"
	}
	return c.wJoinRef
}

// run executes the slot's queued tasks one at a time until the queue is
// empty. Exactly one run is active per slot (guarded by running).
func (c *channel) run() {
	s := c.sock
	for {
		s.mu.Lock()
		if len(c.queue) == 0 {
			c.running = false
			c.queue = nil // an idle channel holds no queue memory
			if c.curGen.Load() == 0 && c.wGen == 0 {
				s.remove(c)
			}
			s.mu.Unlock()
			return
		}
		t := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		s.mu.Unlock()
		c.exec(t)
	}
}

func (c *channel) exec(t *task) {
	s := c.sock
	switch t.kind {
	case taskReply:
		// Encoded only now: a flood of such replies holds refs, not frames.
		s.send(s.replyFrame(t.joinRef, t.ref, c.topic, replyStatus(t.ok), t.payload))
	case taskJoin:
		c.join(t)
	case taskEvent:
		switch {
		case c.wGen != 0 && c.wGen == t.gen:
			c.handleIn(t)
		case c.wGen == 0:
			// The join failed or the channel ended while this waited.
			s.send(s.replyFrame("null", t.ref, c.topic, "error", respUnmatched))
		}
	case taskLeave:
		if c.wGen != 0 && c.wGen == t.gen {
			// Out of the hub first: no broadcast follows phx_close.
			s.srv.hub.unsubscribe(c)
			s.send(s.replyFrame(c.wJoinRef, t.ref, c.topic, "ok", nil))
			c.sendControl("phx_close", emptyObject)
			c.end(backends.LeaveLeft)
			return
		}
		// Not joined (the join failed): the message's join_ref, as Phoenix.
		s.send(s.replyFrame(t.joinRef, t.ref, c.topic, "ok", nil))
	case taskDupLeave:
		if c.wGen != 0 && c.wGen == t.gen {
			ref := c.closeRef()
			c.end(backends.LeaveDuplicate)
			r := c.side()
			r.pendingClose = append(r.pendingClose, ref)
		}
	case taskLost:
		if c.wGen != 0 && c.th != nil && c.th.isLost(c) {
			c.stop(backends.StopCrash)
		}
	case taskTerminate:
		if r := c.rare.Load(); r != nil {
			r.pendingClose = nil
		}
		if c.wGen != 0 {
			if key, ok := c.seatKey(); ok && t.reason == backends.LeaveDisconnected && c.route.LeaveGrace > 0 {
				c.park(key)
			} else {
				c.end(t.reason)
			}
		}
	}
}

// sendControl sends [J,J,T,event,payload] (V1: ref = the close ref).
func (c *channel) sendControl(event string, payload []byte) {
	c.sock.sendOrDrop(encodeMessage(c.sock.ser, c.wJoinRef, c.closeRef(), c.topic, event, backends.Payload{Data: payload}))
}

func (c *channel) flushPendingClose() {
	r := c.rare.Load()
	if r == nil {
		return
	}
	for _, ref := range r.pendingClose {
		jr := ref
		if c.sock.ser == V1 {
			jr = "null"
		}
		c.sock.sendOrDrop(encodeMessage(c.sock.ser, jr, ref, c.topic, "phx_close", backends.Payload{Data: emptyObject}))
	}
	r.pendingClose = nil
}

// newCall builds a backend call for incarnation gen of c.
func (c *channel) newCall(gen uint32, event, joinRef, ref string, p backends.Payload) *backends.Call {
	s := c.sock
	jr, r := refString(joinRef), refString(ref)
	var player string
	var claims []byte
	id := c.joinIdentity()
	if id == nil {
		id = s.identity
	}
	if id != nil {
		player, claims = id.PlayerID, id.Raw
	}
	node := s.srv.cfg.NodeID
	key := s.srv.callKey(s.conn.ID(), gen, player, event, p)
	return &backends.Call{
		NodeID:         node,
		ConnID:         s.conn.ID(),
		PlayerID:       player,
		Claims:         claims,
		Params:         s.params,
		Topic:          c.topic,
		Event:          event,
		JoinRef:        jr,
		Ref:            r,
		Payload:        p,
		IdempotencyKey: key,
	}
}

const (
	opJoin     = "join"
	opHandleIn = "handle_in"
	opLeave    = "leave"
)

// call runs one backend call with the configured deadline and records it.
func (c *channel) call(op string, call *backends.Call, reason backends.LeaveReason) (*backends.Reply, error) {
	srv := c.sock.srv
	ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.CallTimeout)
	defer cancel()
	start := time.Now()
	var rep *backends.Reply
	var err error
	b := c.route.Backend
	var obs = srv.m.callDurationJoin
	switch op {
	case opHandleIn:
		obs = srv.m.callDurationIn
	case opLeave:
		obs = srv.m.callDurationLv
	}
	var span trace.Span
	if srv.cfg.Tracer != nil && op != opLeave {
		ctx, span = startCallSpan(ctx, srv.cfg.Tracer, op, call, srv.cfg.TrustClientTraceContext)
	}
	rep, err = invoke(ctx, b, op, call, reason)
	if span != nil {
		endCallSpan(span, rep, err)
	}
	if op == opLeave {
		if err == nil {
			srv.m.leaves.WithLabelValues(string(reason)).Inc()
		} else {
			srv.m.leavesLost.Inc() // the game never heard of it
		}
	}
	if errors.Is(err, errBackendPanic) {
		srv.m.backendPanics.Inc()
	}
	obs.Observe(time.Since(start).Seconds())
	if err == nil && rep == nil && op != opLeave {
		rep = &backends.Reply{}
	}
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && !errors.Is(err, backends.ErrUnavailable) {
		err = errors.Join(backends.ErrTimeout, err)
	}
	srv.m.backendCalls.WithLabelValues(op, callResult(err)).Inc()
	if err != nil {
		srv.logCallFailed(ctx, op, call, err)
	}
	return rep, err
}

// logCallFailed logs a failed backend call with the call's context, so a
// traced join or push's line carries its trace_id and span_id. A panic is
// an error; any other failure is counted in phxgate_backend_calls_total
// and logged at debug, so an unreachable game does not flood the log.
func (s *Server) logCallFailed(ctx context.Context, op string, call *backends.Call, err error) {
	level := slog.LevelDebug
	if errors.Is(err, errBackendPanic) {
		level = slog.LevelError
	}
	if !s.log.Enabled(ctx, level) {
		return
	}
	s.log.LogAttrs(ctx, level, "backend call failed",
		slog.Uint64("conn", call.ConnID), slog.String("op", op), slog.String("topic", call.Topic),
		slog.String("event", call.Event), slog.String("result", callResult(err)), slog.Any("err", err))
}

// errBackendPanic is the error of a backend call that panicked: the panic
// is recovered and counted, and only that channel pays (a crashed join, or
// phx_error).
var errBackendPanic = errors.New("channels: backend panicked")

// invoke makes one backend call, turning a panic into errBackendPanic.
func invoke(ctx context.Context, b backends.Backend, op string, call *backends.Call, reason backends.LeaveReason) (rep *backends.Reply, err error) {
	defer func() {
		if r := recover(); r != nil {
			rep, err = nil, fmt.Errorf("%w: %s %s: %v", errBackendPanic, op, call.Topic, r)
		}
	}()
	switch op {
	case opJoin:
		return b.Join(ctx, call)
	case opHandleIn:
		return b.HandleIn(ctx, call)
	default:
		return nil, b.Leave(ctx, call, reason)
	}
}

// callResult labels a call's outcome (phxgate_backend_calls_total).
// "error" is a crash: an error of no class (an in-process backend's own
// error, a panic), which ends the channel as a crashed Phoenix channel
// would; the classed failures get an error reply and keep the channel.
func callResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, backends.ErrOverloaded):
		return "overloaded"
	case errors.Is(err, backends.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, backends.ErrTimeout):
		return "timeout"
	case errors.Is(err, backends.ErrBackend):
		return "backend_error"
	default:
		return "error"
	}
}

// joinMayHaveApplied reports whether a failed Join may still have been
// applied by the game: its answer timed out, or the connection failed
// while it was in flight. A call refused before it was sent (bulkhead
// full, breaker open, engine closed) or answered with an error was not.
func joinMayHaveApplied(err error) bool {
	switch {
	case errors.Is(err, backends.ErrOverloaded), errors.Is(err, backends.ErrCircuitOpen), errors.Is(err, backends.ErrClosed):
		return false
	case errors.Is(err, backends.ErrTimeout), errors.Is(err, backends.ErrUnavailable):
		return true
	}
	return false
}

// errorResponse maps a backend failure to a reply response
// ({"reason":"backend_unavailable"} …); crash is the response for a
// failure of no class.
func errorResponse(err error, crash []byte) []byte {
	switch {
	case errors.Is(err, backends.ErrOverloaded):
		return respOverloaded
	case errors.Is(err, backends.ErrUnavailable):
		return respUnavail
	case errors.Is(err, backends.ErrTimeout):
		return respTimeout
	case errors.Is(err, backends.ErrBackend):
		return respBackendError
	default:
		return crash
	}
}

// failJoin forgets incarnation gen after its join was refused.
func (c *channel) failJoin(gen uint32) {
	s := c.sock
	s.mu.Lock()
	if c.curGen.Load() == gen {
		c.curGen.Store(0)
	}
	s.mu.Unlock()
}

func (c *channel) join(t *task) {
	s := c.sock
	m := s.srv.m
	if s.closed.Load() {
		c.failJoin(t.gen)
		return
	}
	if !c.authorize(t) {
		m.joins.WithLabelValues(joinUnauthorized).Inc()
		s.send(s.replyFrame(t.joinRef, t.ref, c.topic, "error", respUnauthorized))
		c.failJoin(t.gen)
		c.flushPendingClose()
		return
	}
	call := c.newCall(t.gen, "phx_join", t.joinRef, t.ref, backends.Payload{Data: t.payload, Binary: t.binary})
	// rejoined: the backend accepted a join that took a held seat, which
	// then needs no Leave of its own (the new channel has its own).
	rejoined := false
	var taken *seat
	if c.route.LeaveGrace > 0 {
		if key, ok := c.seatKey(); ok {
			if taken = s.srv.seats.take(key); taken != nil {
				// The player's dropped seat: no Leave if this join
				// succeeds; its Leave goes out if it fails.
				call.Rejoin = true
				call.RejoinConnID, call.RejoinJoinRef = taken.call.ConnID, taken.call.JoinRef
				defer func() {
					if !rejoined {
						s.srv.seats.leave(taken)
					} else {
						// This channel subscribed (or ended) on its own.
						taken.unpin(s.srv.hub)
					}
				}()
			}
		}
	}
	rep, err := c.call(opJoin, call, "")
	if err != nil {
		if callResult(err) == "error" {
			m.joins.WithLabelValues(joinCrashed).Inc()
		} else {
			m.joins.WithLabelValues(joinBackend).Inc()
		}
		s.send(s.replyFrame(t.joinRef, t.ref, c.topic, "error", errorResponse(err, respCrashed)))
		if joinMayHaveApplied(err) {
			// The game may have seated the player without our hearing of
			// it: its Leave (same connection and join_ref) undoes that,
			// and a game ignores a Leave for a join it never applied.
			s.srv.seats.leaveNow(c.route.Backend, c.newCall(t.gen, "phx_leave", t.joinRef, "null", backends.Payload{}), backends.LeaveCrashed)
		}
		c.failJoin(t.gen)
		c.flushPendingClose()
		return
	}
	status := rep.Status
	if status == "" {
		status = "ok"
	}
	// A lost broadcast of a join is counted; the join's answer stands.
	c.publish(call, rep.Broadcasts)
	if status != "ok" {
		m.joins.WithLabelValues(joinError).Inc()
		s.reply(t.joinRef, t.ref, c.topic, status, rep.Response)
		c.failJoin(t.gen)
		c.flushPendingClose()
		return
	}
	rejoined = true
	c.wGen, c.wJoinRef, c.wCloseRefNull = t.gen, t.joinRef, t.closeRefNull
	overflow, err := s.srv.hub.subscribe(c, t, rep.Response, rep.SnapshotPosition)
	if err != nil {
		// The reply was not sent: the broker could not subscribe or read
		// history. The backend accepted the join, so it gets its Leave.
		m.joins.WithLabelValues(joinBackend).Inc()
		s.send(s.replyFrame(t.joinRef, t.ref, c.topic, "error", respUnavail))
		if taken != nil && taken.presenceTag != "" {
			// The seat's presence ends with the join that took it.
			c.side().presenceTag, taken.presenceTag = taken.presenceTag, ""
			c.untrackPresence()
		}
		c.wGen = 0
		c.call(opLeave, c.newCall(t.gen, "phx_leave", c.wJoinRef, "null", backends.Payload{}), backends.LeaveCrashed)
		c.failJoin(t.gen)
		c.flushPendingClose()
		return
	}
	m.joins.WithLabelValues(joinOK).Inc()
	m.channels.Inc()
	c.flushPendingClose()
	c.pushes(rep.Pushes)
	if !c.trackPresence(rep, taken) {
		c.stop(backends.StopCrash)
		return
	}
	if overflow {
		m.resumeOverflow.Inc()
		c.stop(backends.StopCrash)
		return
	}
	c.stop(rep.Stop)
}

func (c *channel) handleIn(t *task) {
	s := c.sock
	// A client that sends its own idempotency key relies on it: one that
	// is not usable is refused rather than silently replaced.
	if !t.binary {
		if _, present, ok := clientKey(t.payload); present && !ok {
			s.send(s.replyFrame(t.joinRef, t.ref, c.topic, "error", respBadKey))
			return
		}
	}
	// The budget is checked again when the push's turn comes: it may have
	// waited behind others while the node's output grew. Refused before
	// the backend call, so no action is applied and no broadcast dropped.
	if s.srv.overloaded() {
		s.srv.m.shed.WithLabelValues(shedPush).Inc()
		s.send(s.replyFrame(t.joinRef, t.ref, c.topic, "error", respNodeOverloaded))
		return
	}
	call := c.newCall(c.wGen, t.event, t.joinRef, t.ref, backends.Payload{Data: t.payload, Binary: t.binary})
	rep, err := c.call(opHandleIn, call, "")
	if err != nil {
		if callResult(err) == "error" {
			c.stop(backends.StopCrash)
			return
		}
		s.send(s.replyFrame(t.joinRef, t.ref, c.topic, "error", errorResponse(err, nil)))
		return
	}
	// Broadcasts first: a shout reaches the sender before its own reply,
	// as in Phoenix.
	lost := !c.publish(call, rep.Broadcasts)
	if rep.Status != "" {
		s.reply(t.joinRef, t.ref, c.topic, rep.Status, rep.Response)
	}
	c.pushes(rep.Pushes)
	if lost {
		// A broadcast the backend asked for could not be published: the
		// channel errors, so the client rejoins and resyncs from the
		// backend rather than missing an event silently.
		c.stop(backends.StopCrash)
		return
	}
	c.stop(rep.Stop)
}

// publish publishes a backend reply's broadcasts, in order, and reports
// whether all were published. A broker failure is retried within the
// call's deadline; a refusal by the output budget is not (the node is
// shedding). A broadcast that is lost is counted
// (phxgate_reply_broadcasts_lost_total).
func (c *channel) publish(call *backends.Call, bs []backends.Message) bool {
	if len(bs) == 0 {
		return true
	}
	srv := c.sock.srv
	ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.CallTimeout)
	defer cancel()
	var own pubsub.Position
	ok := true
	for i, b := range bs {
		topic := b.Topic
		if topic == "" {
			topic = c.topic
		}
		m := pubsub.Message{Event: b.Event, Payload: b.Payload.Data, Binary: b.Payload.Binary,
			IdempotencyKey: broadcastKey(call.IdempotencyKey, i)}
		pos, err := srv.publishRetrying(ctx, topic, m)
		if err != nil {
			srv.m.replyBroadcastsLost.Inc()
			ok = false
			continue
		}
		if topic == c.topic {
			own = pos
		}
	}
	if th := c.th; !own.IsZero() && th != nil {
		// The sender gets its own broadcast before its reply, whenever
		// the engine delivers it.
		th.waitDelivered(own)
		c.drainOwn()
	}
	return ok
}

// broadcastKey is the publish idempotency key of the i-th broadcast of a
// call's reply: a publish retried after a lost answer is published once.
// Keys too long for the broker are hashed.
func broadcastKey(callKey string, i int) string {
	if callKey == "" {
		return ""
	}
	k := callKey + ":b" + strconv.Itoa(i)
	if len(k) <= pubsub.MaxIdempotencyKeyLen {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return "h:" + hex.EncodeToString(sum[:])
}

// publishRetrying publishes m, retrying broker failures with a growing
// pause until ctx ends.
func (s *Server) publishRetrying(ctx context.Context, topic string, m pubsub.Message) (pubsub.Position, error) {
	pause := 5 * time.Millisecond
	for {
		pos, err := s.Publish(ctx, topic, m)
		if err == nil || errors.Is(err, ErrOverloaded) {
			return pos, err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return pos, err
		case <-t.C:
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
}

func (c *channel) pushes(ps []backends.Message) {
	for _, p := range ps {
		c.sock.sendOrDrop(encodeMessage(c.sock.ser, c.wJoinRef, "null", c.topic, p.Event, p.Payload))
	}
}

// stop ends the channel as the backend asked: phx_close or phx_error.
func (c *channel) stop(how backends.Stop) {
	if how == backends.StopNormal || how == backends.StopCrash {
		// Out of the hub first: no broadcast follows phx_close/phx_error.
		c.sock.srv.hub.unsubscribe(c)
	}
	switch how {
	case backends.StopNormal:
		c.sendControl("phx_close", emptyObject)
		c.end(backends.LeaveLeft)
	case backends.StopCrash:
		c.sendControl("phx_error", payloadCrash)
		c.end(backends.LeaveCrashed)
	}
}

// seatKey is the player's seat on c's topic (ok false for an anonymous
// channel, which holds no seat).
func (c *channel) seatKey() (seatKey, bool) {
	id := c.joinIdentity()
	if id == nil {
		id = c.sock.identity
	}
	if id == nil || id.PlayerID == "" {
		return seatKey{}, false
	}
	return seatKey{player: id.PlayerID, topic: c.topic}, true
}

// park ends the channel like end, but holds its Leave for the route's
// LeaveGrace (see Route.LeaveGrace).
func (c *channel) park(key seatKey) {
	s := c.sock
	gen := c.wGen
	// The presence stays with the seat: a rejoin within the grace keeps
	// it, its end removes it. Until then the seat keeps the topic
	// subscribed here (pinned before this channel lets go of it), so an
	// update of that presence, routed to this node through the topic,
	// still arrives when no subscriber is left.
	var tag string
	var pinned *topicHub
	if r := c.rare.Load(); r != nil {
		tag, r.presenceTag = r.presenceTag, ""
	}
	if tag != "" && c.th != nil {
		pinned = c.th
		s.srv.hub.pin(pinned)
	}
	s.srv.hub.unsubscribe(c)
	call := c.newCall(gen, "phx_leave", c.wJoinRef, "null", backends.Payload{})
	s.srv.seats.hold(key, c.route.Backend, call, tag, pinned, c.route.LeaveGrace)
	c.forget(gen)
}

// forget ends the worker's hold on incarnation gen and, unless the client
// addresses a newer one, the poller's.
func (c *channel) forget(gen uint32) {
	s := c.sock
	c.wGen = 0
	s.srv.m.channels.Dec()
	s.mu.Lock()
	if c.curGen.Load() == gen {
		c.curGen.Store(0)
	}
	s.mu.Unlock()
}

// end leaves the hub, calls the backend's Leave once, and forgets the
// incarnation.
func (c *channel) end(reason backends.LeaveReason) {
	s := c.sock
	gen := c.wGen
	s.srv.hub.unsubscribe(c)
	c.untrackPresence()
	c.call(opLeave, c.newCall(gen, "phx_leave", c.wJoinRef, "null", backends.Payload{}), reason)
	c.forget(gen)
}

// errBadResume marks a resume position that could not be parsed.
var errBadResume = errors.New("channels: bad resume position")

// parseOffset reads a join's raw "offset" value: null or "" mean from now,
// a position string means resume after it; anything else is a failed resume.
func parseOffset(raw string) (since pubsub.Position, resuming bool, err error) {
	if raw == "null" || raw == `""` || raw == "" {
		return pubsub.Position{}, false, nil
	}
	s := refString(raw)
	if raw[0] != '"' {
		return pubsub.Position{}, true, errBadResume
	}
	p, err := pubsub.ParsePosition(s)
	if err != nil {
		return pubsub.Position{}, true, err
	}
	return p, true, nil
}
