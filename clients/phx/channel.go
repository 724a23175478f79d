package phx

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// State is a channel's state, named as in phoenix.js.
type State string

const (
	StateClosed  State = "closed"
	StateJoining State = "joining"
	StateJoined  State = "joined"
	StateLeaving State = "leaving"
	StateErrored State = "errored"
)

// Channel is one topic joined on a Socket.
type Channel struct {
	s      *Socket
	topic  string
	params func() any

	mu          sync.Mutex
	state       State
	joinedOnce  bool
	joinRef     string
	joinPush    *Push
	joinWaiter  chan joinOutcome // the Join call waiting for its first answer
	handlers    map[string][]func(Message)
	buffer      []*Push // pushes made before the join was acknowledged
	rejoinTries int
	rejoinTimer *time.Timer
}

type joinOutcome struct {
	reply Reply
	err   error
}

// Topic returns the channel's topic.
func (ch *Channel) Topic() string { return ch.topic }

// State returns the channel's current state.
func (ch *Channel) State() State {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.state
}

// JoinRef returns the ref of the current join ("" before the first join).
func (ch *Channel) JoinRef() string {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.joinRef
}

// On registers fn for event on this channel. It also receives phx_close
// and phx_error. Handlers run on the socket's reader goroutine (see the
// package doc).
func (ch *Channel) On(event string, fn func(Message)) {
	ch.mu.Lock()
	ch.handlers[event] = append(ch.handlers[event], fn)
	ch.mu.Unlock()
}

// isMember is phoenix.js's rule: a message whose join_ref is non-empty and
// differs from the channel's current join_ref belongs to an older join and
// is dropped.
func (ch *Channel) isMember(joinRef string) bool {
	if joinRef == "" {
		return true
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return joinRef == ch.joinRef
}

// Join joins the channel and waits for the server's answer (or ctx). An
// ok reply returns it with a nil error. An error reply returns it with an
// error wrapping ErrJoinRefused, and, as in phoenix.js, the channel keeps
// retrying with Options.Rejoin backoff until Leave. If ctx ends first the
// join counts as timed out: a phx_leave is sent for it and a rejoin is
// scheduled. If the socket is down, the join is sent when it reconnects.
func (ch *Channel) Join(ctx context.Context) (Reply, error) {
	w := make(chan joinOutcome, 1)
	ch.mu.Lock()
	if ch.joinedOnce {
		ch.mu.Unlock()
		return Reply{}, ErrAlreadyJoined
	}
	ch.joinedOnce = true
	ch.joinWaiter = w
	ch.mu.Unlock()
	ch.s.addChannel(ch)
	ch.rejoin()

	select {
	case out := <-w:
		return out.reply, out.err
	case <-ctx.Done():
		ch.mu.Lock()
		if ch.joinWaiter == w {
			ch.joinWaiter = nil
		}
		p := ch.joinPush
		ch.mu.Unlock()
		select {
		case out := <-w: // answered while we were giving up
			return out.reply, out.err
		default:
		}
		if p != nil {
			ch.joinTimedOut(p)
		}
		return Reply{}, ctx.Err()
	case <-ch.s.done:
		return Reply{}, ErrSocketClosed
	}
}

// rejoin sends a new join (phoenix.js rejoin): other channels of the same
// topic on this socket are left first, a fresh ref becomes the join_ref, and
// params are evaluated again.
func (ch *Channel) rejoin() {
	ch.mu.Lock()
	if ch.state == StateLeaving || (ch.state == StateClosed && !ch.joinedOnce) {
		ch.mu.Unlock()
		return
	}
	ch.stopRejoinTimerLocked()
	ch.mu.Unlock()

	for _, other := range ch.s.otherChannels(ch) {
		if st := other.State(); st == StateJoined || st == StateJoining {
			go func() { _ = other.Leave(context.Background()) }()
		}
	}

	var payload any
	if ch.params != nil {
		payload = ch.params()
	}
	data, err := marshalPayload(payload)
	if err != nil {
		ch.s.opts.Logger.Error("phx: join params do not marshal", "topic", ch.topic, "err", err)
		data = []byte("{}")
	}
	ref := ch.s.nextRef()
	p := newPush(ch, EventJoin, data, false)
	p.ref = ref
	p.onAnswer = ch.joinAnswered

	ch.mu.Lock()
	if ch.state == StateLeaving || ch.state == StateClosed && ch.joinPush != nil {
		ch.mu.Unlock()
		return
	}
	ch.state = StateJoining
	ch.joinRef = ref
	ch.joinPush = p
	ch.mu.Unlock()

	ch.s.register(p)
	p.startTimer(ch.s.opts.Timeout, func() { ch.joinTimedOut(p) })
	if err := ch.s.send(ws.OpText, ch.s.ser.encode(&ref, &ref, ch.topic, EventJoin, data)); err != nil {
		// Down: the join goes out when the socket reopens (socketOpened
		// rejoins errored channels), exactly like phoenix.js's buffered join.
		ch.s.unregister(p)
		p.stopTimer()
		ch.mu.Lock()
		if ch.joinPush == p {
			ch.state = StateErrored
		}
		ch.mu.Unlock()
	}
}

// joinAnswered runs when the join push gets a reply or fails.
func (ch *Channel) joinAnswered(p *Push, r Reply, err error) {
	ch.mu.Lock()
	if ch.joinPush != p || ch.state != StateJoining {
		ch.mu.Unlock()
		return
	}
	w := ch.joinWaiter
	var out joinOutcome
	var flush []*Push
	switch {
	case err != nil:
		// Connection lost: socketLost already made the channel errored.
		ch.mu.Unlock()
		return
	case r.OK():
		ch.state = StateJoined
		ch.rejoinTries = 0
		flush, ch.buffer = ch.buffer, nil
		out = joinOutcome{reply: r}
	default:
		ch.state = StateErrored
		ch.scheduleRejoinLocked()
		out = joinOutcome{reply: r, err: fmt.Errorf("%w: %s %s", ErrJoinRefused, r.Status, r.Response)}
	}
	ch.joinWaiter = nil
	ch.mu.Unlock()
	if w != nil {
		w <- out
	}
	for _, bp := range flush {
		ch.sendPush(bp)
	}
}

// joinTimedOut is phoenix.js's join timeout: leave that join, become
// errored, and schedule a rejoin.
func (ch *Channel) joinTimedOut(p *Push) {
	ch.mu.Lock()
	if ch.joinPush != p || ch.state != StateJoining {
		// A superseded join: only forget it.
		ch.mu.Unlock()
		ch.s.unregister(p)
		p.resolve(Reply{}, ErrTimeout)
		return
	}
	ch.state = StateErrored
	ref := p.ref
	ch.scheduleRejoinLocked()
	ch.mu.Unlock()
	ch.s.unregister(p)
	p.resolve(Reply{}, ErrTimeout)
	leaveRef := ch.s.nextRef()
	_ = ch.s.send(ws.OpText, ch.s.ser.encode(&ref, &leaveRef, ch.topic, EventLeave, []byte("{}")))
}

func (ch *Channel) scheduleRejoinLocked() {
	ch.stopRejoinTimerLocked()
	ch.rejoinTries++
	ch.rejoinTimer = time.AfterFunc(ch.s.opts.Rejoin(ch.rejoinTries), func() {
		if ch.s.Connected() && ch.State() == StateErrored {
			ch.rejoin()
		}
	})
}

func (ch *Channel) stopRejoinTimerLocked() {
	if ch.rejoinTimer != nil {
		ch.rejoinTimer.Stop()
		ch.rejoinTimer = nil
	}
}

// socketOpened rejoins an errored channel at once (phoenix.js onOpen).
func (ch *Channel) socketOpened() {
	ch.mu.Lock()
	errored := ch.state == StateErrored
	if errored {
		ch.rejoinTries = 0
		ch.stopRejoinTimerLocked()
	}
	ch.mu.Unlock()
	if errored {
		ch.rejoin()
	}
}

// socketLost makes a joined or joining channel errored; it rejoins when the
// socket reopens. Pushes waiting for the join fail.
func (ch *Channel) socketLost() {
	ch.mu.Lock()
	if ch.state != StateJoined && ch.state != StateJoining {
		ch.mu.Unlock()
		return
	}
	ch.state = StateErrored
	ch.stopRejoinTimerLocked()
	h := ch.handlers[EventError]
	ch.mu.Unlock()
	msg := Message{Topic: ch.topic, Event: EventError, Payload: []byte(`{"source":"transport","reason":"connection_closed"}`)}
	for _, fn := range h {
		fn(msg)
	}
}

// dispatch delivers a server message (not a reply) to this channel.
func (ch *Channel) dispatch(msg Message) {
	ch.mu.Lock()
	if msg.JoinRef != "" && msg.JoinRef != ch.joinRef {
		ch.mu.Unlock()
		return // outdated join (isMember)
	}
	var failErr error
	var failed []*Push
	switch msg.Event {
	case EventClose:
		if ch.state == StateClosed {
			ch.mu.Unlock()
			return
		}
		ch.state = StateClosed
		ch.stopRejoinTimerLocked()
		failed, ch.buffer = ch.buffer, nil
		failErr = ErrChannelClosed
	case EventError:
		if ch.state == StateLeaving || ch.state == StateClosed {
			ch.mu.Unlock()
			return
		}
		ch.state = StateErrored
		failed, ch.buffer = ch.buffer, nil
		failErr = ErrChannelClosed
		if ch.s.Connected() {
			ch.scheduleRejoinLocked()
		}
	}
	h := append([]func(Message){}, ch.handlers[msg.Event]...)
	ch.mu.Unlock()
	if msg.Event == EventClose {
		ch.s.removeChannel(ch)
	}
	if failErr != nil {
		ch.failPending(failErr, failed)
	}
	for _, fn := range h {
		fn(msg)
	}
}

// failPending fails buffered pushes and every in-flight push of the
// channel's current join (their replies will never come).
func (ch *Channel) failPending(err error, buffered []*Push) {
	for _, p := range buffered {
		p.resolve(Reply{}, err)
	}
	ch.s.mu.Lock()
	var inflight []*Push
	for ref, p := range ch.s.pending {
		if p.ch == ch && p.event != EventJoin {
			inflight = append(inflight, p)
			delete(ch.s.pending, ref)
		}
	}
	ch.s.mu.Unlock()
	for _, p := range inflight {
		p.resolve(Reply{}, err)
	}
}

// closeLocal closes the channel without telling the server.
func (ch *Channel) closeLocal(err error) {
	ch.mu.Lock()
	ch.state = StateClosed
	ch.stopRejoinTimerLocked()
	buffered := ch.buffer
	ch.buffer = nil
	w := ch.joinWaiter
	ch.joinWaiter = nil
	jp := ch.joinPush
	ch.mu.Unlock()
	ch.s.removeChannel(ch)
	ch.failPending(err, buffered)
	if jp != nil {
		ch.s.unregister(jp)
		jp.resolve(Reply{}, err)
	}
	if w != nil {
		w <- joinOutcome{err: err}
	}
}

// Push sends event with a JSON payload (nil means {}) and returns its
// future. Before the join is acknowledged the push is buffered and sent
// after the join succeeds. It fails with ErrNotJoined on a channel that was
// never joined or was left, and with ErrTimeout after Options.Timeout.
func (ch *Channel) Push(event string, payload any) *Push {
	data, err := marshalPayload(payload)
	p := newPush(ch, event, data, false)
	if err != nil {
		p.resolve(Reply{}, fmt.Errorf("phx: payload: %w", err))
		return p
	}
	ch.enqueue(p)
	return p
}

// PushBinary sends event with raw bytes as a V2 binary frame (kind 0).
// It fails with ErrBinaryNeedsV2 on a V1 socket. data is copied.
func (ch *Channel) PushBinary(event string, data []byte) *Push {
	p := newPush(ch, event, append([]byte(nil), data...), true)
	if !ch.s.v2 {
		p.resolve(Reply{}, ErrBinaryNeedsV2)
		return p
	}
	ch.enqueue(p)
	return p
}

// Call pushes event and waits for its reply or ctx.
func (ch *Channel) Call(ctx context.Context, event string, payload any) (Reply, error) {
	return ch.Push(event, payload).Wait(ctx)
}

func (ch *Channel) enqueue(p *Push) {
	p.startTimer(ch.s.opts.Timeout, func() {
		ch.s.unregister(p)
		ch.mu.Lock()
		for i, bp := range ch.buffer {
			if bp == p {
				ch.buffer = append(ch.buffer[:i], ch.buffer[i+1:]...)
				break
			}
		}
		ch.mu.Unlock()
		p.resolve(Reply{}, ErrTimeout)
	})
	ch.mu.Lock()
	switch ch.state {
	case StateJoined:
		ch.mu.Unlock()
		if ch.s.Connected() {
			ch.sendPush(p)
			return
		}
		ch.mu.Lock()
		ch.buffer = append(ch.buffer, p)
		ch.mu.Unlock()
	case StateJoining, StateErrored:
		ch.buffer = append(ch.buffer, p)
		ch.mu.Unlock()
	default:
		ch.mu.Unlock()
		p.resolve(Reply{}, ErrNotJoined)
	}
}

// sendPush writes p with a fresh ref under the current join_ref.
func (ch *Channel) sendPush(p *Push) {
	ch.mu.Lock()
	joinRef := ch.joinRef
	ch.mu.Unlock()
	ref := ch.s.nextRef()
	p.mu.Lock()
	p.ref = ref
	p.mu.Unlock()
	var (
		frame []byte
		op    = ws.OpText
		err   error
	)
	if p.binary {
		op = ws.OpBinary
		frame, err = encodeBinaryPush(joinRef, ref, ch.topic, p.event, p.payload)
	} else {
		frame = ch.s.ser.encode(&joinRef, &ref, ch.topic, p.event, p.payload)
	}
	if err != nil {
		p.resolve(Reply{}, err)
		return
	}
	ch.s.register(p)
	if err := ch.s.send(op, frame); err != nil {
		ch.s.unregister(p)
		p.resolve(Reply{}, err)
	}
}

// Leave leaves the channel: phx_leave is sent and the channel is closed
// locally when the server replies or ctx ends (phoenix.js closes on the ok
// reply or on timeout alike). A channel that cannot push (not joined, or
// socket down) closes at once. No rejoin follows.
func (ch *Channel) Leave(ctx context.Context) error {
	// A leave nobody bounds still ends: phoenix.js closes on the leave
	// push's timeout too.
	ctx, cancel := context.WithTimeout(ctx, ch.s.opts.Timeout)
	defer cancel()
	ch.mu.Lock()
	ch.stopRejoinTimerLocked()
	canPush := ch.state == StateJoined && ch.s.Connected()
	if ch.state == StateClosed {
		ch.mu.Unlock()
		return nil
	}
	ch.state = StateLeaving
	joinRef := ch.joinRef
	ch.mu.Unlock()

	var err error
	if canPush {
		p := newPush(ch, EventLeave, []byte("{}"), false)
		p.ref = ch.s.nextRef()
		ch.s.register(p)
		if serr := ch.s.send(ws.OpText, ch.s.ser.encode(&joinRef, &p.ref, ch.topic, EventLeave, p.payload)); serr == nil {
			_, err = p.Wait(ctx)
			if errors.Is(err, ErrConnectionLost) || errors.Is(err, ErrChannelClosed) {
				err = nil
			}
		}
		ch.s.unregister(p)
	}
	ch.closeLocal(ErrChannelClosed)
	if err != nil && ctx.Err() != nil {
		return nil // timed out: closed locally anyway, as phoenix.js
	}
	return err
}
