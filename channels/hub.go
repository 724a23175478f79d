package channels

import (
	"context"
	"errors"
	"sync"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/pubsub"
)

// hub maps topics to this node's local subscribers. It holds one broker
// subscription per topic with local subscribers: the first subscriber
// subscribes, the last one gone unsubscribes.
//
// Lock order: topicHub.subMu → hub.mu. topicHub.mu is never held with
// another hub lock, and never across a broker call, so a broker that delivers
// while holding its own locks cannot deadlock with us.
type hub struct {
	srv    *Server
	mu     sync.Mutex
	topics map[string]*topicHub
}

type topicHub struct {
	h    *hub
	name string

	refs int // subscribers and joins in progress; guarded by hub.mu

	subMu      sync.Mutex // serializes broker Subscribe/Unsubscribe
	subscribed bool       // guarded by subMu

	mu   sync.Mutex // guards subs and each subscriber's hub fields
	subs []*channel // swap-remove by channel.hubIdx
}

// resumeState holds the live events that arrive while a resuming (or
// opted-in) join reads the topic's history.
type resumeState struct {
	buf      []*pubsub.Event
	overflow bool
}

func newHub(s *Server) *hub {
	return &hub{srv: s, topics: make(map[string]*topicHub)}
}

func (h *hub) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), h.srv.cfg.CallTimeout)
}

// acquire pins the topic and makes sure the broker delivers it here.
func (h *hub) acquire(topic string) (*topicHub, error) {
	h.mu.Lock()
	th := h.topics[topic]
	if th == nil {
		th = &topicHub{h: h, name: topic}
		h.topics[topic] = th
	}
	th.refs++
	h.mu.Unlock()

	th.subMu.Lock()
	var err error
	if !th.subscribed {
		ctx, cancel := h.ctx()
		err = h.srv.broker.Subscribe(ctx, topic, th.deliver)
		cancel()
		th.subscribed = err == nil
	}
	th.subMu.Unlock()
	if err != nil {
		h.release(th)
		return nil, err
	}
	return th, nil
}

// release unpins the topic; the last release unsubscribes.
func (h *hub) release(th *topicHub) {
	h.mu.Lock()
	th.refs--
	last := th.refs == 0
	h.mu.Unlock()
	if !last {
		return
	}
	th.subMu.Lock()
	h.mu.Lock()
	still := th.refs == 0
	h.mu.Unlock()
	if still && th.subscribed {
		ctx, cancel := h.ctx()
		// An error leaves a handler behind in the broker; it finds no
		// subscribers and the next acquire replaces it.
		_ = h.srv.broker.Unsubscribe(ctx, th.name)
		cancel()
		th.subscribed = false
	}
	// Forget the topic before letting go of subMu. The broker unsubscribes
	// by name, so a newer topicHub for the same name must not exist while
	// any release of this one can still reach Unsubscribe: a new one is
	// only created once this one has left the map, and this one leaves it
	// only here, under subMu, after its last Unsubscribe. Every later
	// release of this one (refs fell to 0 before the delete) then finds it
	// unsubscribed and calls nothing.
	h.mu.Lock()
	if th.refs == 0 && h.topics[th.name] == th {
		delete(h.topics, th.name)
	}
	h.mu.Unlock()
	th.subMu.Unlock()
}

// add appends c to the subscribers. Called with th.mu held.
func (th *topicHub) add(c *channel) {
	c.th = th
	c.hubIdx = int32(len(th.subs))
	th.subs = append(th.subs, c)
}

// del swap-removes c. Called with th.mu held.
func (th *topicHub) del(c *channel) {
	i := int(c.hubIdx)
	if i < 0 || i >= len(th.subs) || th.subs[i] != c {
		return
	}
	last := len(th.subs) - 1
	th.subs[i] = th.subs[last]
	th.subs[i].hubIdx = int32(i)
	th.subs[last] = nil
	th.subs = th.subs[:last]
	c.hubIdx = -1
	c.th = nil
	if r := c.rare.Load(); r != nil {
		r.resume = nil
	}
	c.positions = false
}

// subscribe adds a just-joined channel to its topic and sends the join
// reply, so that the reply precedes every broadcast. For an opted-in channel
// it reads the topic position (and, when resuming, the missed events) and
// sends reply, replay and the live events that arrived meanwhile, in order,
// without duplicates. overflow reports that live events were lost while
// catching up (the caller ends the channel with phx_error).
func (h *hub) subscribe(c *channel, t *task, resp backends.Payload) (overflow bool, err error) {
	s := c.sock
	th, err := h.acquire(c.topic)
	if err != nil {
		return false, err
	}
	if !t.positions {
		th.mu.Lock()
		s.reply(t.joinRef, t.ref, c.topic, "ok", resp)
		th.add(c)
		th.mu.Unlock()
		return false, nil
	}

	since, resuming, perr := parseOffset(t.offset)
	r := c.side() // allocated before taking th.mu
	th.mu.Lock()
	c.positions = true
	r.resume = &resumeState{}
	th.add(c)
	th.mu.Unlock()

	ctx, cancel := h.ctx()
	var hr pubsub.HistoryResult
	if resuming && perr == nil {
		hr, err = h.srv.broker.History(ctx, c.topic, since, 0)
	} else {
		hr, err = h.srv.broker.History(ctx, c.topic, pubsub.Position{}, 0)
	}
	cancel()
	if err != nil {
		th.mu.Lock()
		th.del(c)
		th.mu.Unlock()
		h.release(th)
		return false, err
	}
	recovered := resuming && perr == nil && hr.Recovered

	th.mu.Lock()
	defer th.mu.Unlock()
	if !resp.Binary {
		resp.Data = withPosition(resp.Data, hr.Top, resuming, recovered)
	}
	s.reply(t.joinRef, t.ref, c.topic, "ok", resp)
	if recovered {
		for _, ev := range hr.Events {
			v := broadcastVariant(s.ser, true, ev.Binary)
			if v < 0 {
				continue
			}
			s.sendOrDrop(encodeBroadcast(v, ev))
			h.srv.m.replayed.Inc()
		}
	}
	top := hr.Top
	if n := len(hr.Events); recovered && n > 0 && hr.Events[n-1].Pos.Epoch == top.Epoch && hr.Events[n-1].Pos.Offset > top.Offset {
		top = hr.Events[n-1].Pos
	}
	rs := r.resume
	r.resume = nil
	for _, ev := range rs.buf {
		if ev.Pos.Epoch == top.Epoch && ev.Pos.Offset <= top.Offset {
			continue // already replayed or before the reported position
		}
		v := broadcastVariant(s.ser, true, ev.Binary)
		if v < 0 {
			continue
		}
		s.sendOrDrop(encodeBroadcast(v, ev))
	}
	return rs.overflow, nil
}

// unsubscribe removes c from its topic.
func (h *hub) unsubscribe(c *channel) {
	th := c.th
	if th == nil {
		return
	}
	th.mu.Lock()
	th.del(c)
	th.mu.Unlock()
	h.release(th)
}

// deliver is the broker handler of one topic. It encodes the event at most
// once per variant actually needed and sends the same bytes to every
// subscriber: nothing is allocated per subscriber.
func (th *topicHub) deliver(ev *pubsub.Event) {
	m := th.h.srv.m
	limit := th.h.srv.cfg.ResumeBuffer
	var frames [numVariants][]byte
	var failed [numVariants]bool
	n := 0
	th.mu.Lock()
	for _, c := range th.subs {
		if rs := c.catchingUp(); rs != nil {
			if len(rs.buf) < limit {
				rs.buf = append(rs.buf, ev)
			} else {
				rs.overflow = true
			}
			continue
		}
		s := c.sock
		if s.closed.Load() {
			continue
		}
		v := broadcastVariant(s.ser, c.positions, ev.Binary)
		if v < 0 {
			continue // binary events are not sent to V1 sockets
		}
		f := frames[v]
		if f == nil {
			if failed[v] {
				continue
			}
			var err error
			if f, err = encodeBroadcast(v, ev); err != nil {
				failed[v] = true
				m.droppedFrames.WithLabelValues(dropReason(err)).Inc()
				continue
			}
			frames[v] = f
		}
		s.conn.Send(f)
		n++
	}
	th.mu.Unlock()
	m.broadcasts.Inc()
	m.fanout.Add(float64(n))
}

func dropReason(err error) string {
	switch {
	case errors.Is(err, errBinaryOnV1):
		return "binary_on_v1"
	case errors.Is(err, ErrStringTooLong):
		return "string_too_long"
	default:
		return "encode"
	}
}

// withPosition adds "position" (and, when resuming, "recovered") to a join
// response: to the backend's object if it answered one, otherwise as an
// object of just these keys. The keys go first; should the backend's object
// hold a key of the same name too, JSON decoders keep the last one (the
// backend's), which is the backend's choice to make.
func withPosition(resp []byte, top pubsub.Position, resuming, recovered bool) []byte {
	i := skipWS(resp, 0)
	isObj := i < len(resp) && resp[i] == '{'
	out := make([]byte, 0, len(resp)+64)
	out = append(out, `{"position":"`...)
	out = top.AppendTo(out)
	out = append(out, '"')
	if resuming {
		out = append(out, `,"recovered":`...)
		out = append(out, boolJSON(recovered)...)
	}
	if isObj {
		rest := resp[skipWS(resp, i+1):]
		if len(rest) > 0 && rest[0] != '}' {
			out = append(out, ',')
			out = append(out, rest...)
			return out
		}
	}
	return append(out, '}')
}

func boolJSON(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
