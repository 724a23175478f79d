package phx

import (
	"context"
	"sync"
	"time"
)

// Push is the future of one message sent on a channel.
type Push struct {
	ch      *Channel
	event   string
	payload []byte
	binary  bool
	done    chan struct{}
	// onAnswer, set before the push is shared, lets the channel react to
	// its join push's answer.
	onAnswer func(p *Push, r Reply, err error)

	mu    sync.Mutex
	ref   string
	timer *time.Timer
	reply Reply
	err   error
	fired bool
}

func newPush(ch *Channel, event string, payload []byte, binary bool) *Push {
	return &Push{ch: ch, event: event, payload: payload, binary: binary, done: make(chan struct{})}
}

// Ref returns the ref the push was sent with ("" while still buffered).
func (p *Push) Ref() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ref
}

// Done is closed when the push has its outcome.
func (p *Push) Done() <-chan struct{} { return p.done }

// Wait returns the reply, or the error that ended the push, or ctx's error.
// A push still pending when ctx ends stays pending (and times out on its
// own after Options.Timeout).
func (p *Push) Wait(ctx context.Context) (Reply, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.reply, p.err
	case <-ctx.Done():
		return Reply{}, ctx.Err()
	}
}

// startTimer arms the push's timeout.
func (p *Push) startTimer(d time.Duration, onTimeout func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.fired {
		p.timer = time.AfterFunc(d, onTimeout)
	}
}

func (p *Push) stopTimer() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
}

// resolve settles the push once; later calls are ignored.
func (p *Push) resolve(r Reply, err error) {
	p.mu.Lock()
	if p.fired {
		p.mu.Unlock()
		return
	}
	p.fired = true
	p.reply, p.err = r, err
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	cb := p.onAnswer
	p.mu.Unlock()
	close(p.done)
	if cb != nil {
		cb(p, r, err)
	}
}
