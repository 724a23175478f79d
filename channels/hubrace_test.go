package channels

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/phxgate/phxgate/pubsub"
)

// slowSubBroker widens the windows the hub's locking must cover: its
// Subscribe and Unsubscribe yield the processor before acting, as a
// network engine would wait on I/O.
type slowSubBroker struct{ *testBroker }

func (b slowSubBroker) Subscribe(ctx context.Context, topic string, h pubsub.Handler) (pubsub.Position, error) {
	yieldSome()
	return b.testBroker.Subscribe(ctx, topic, h)
}

func (b slowSubBroker) Unsubscribe(ctx context.Context, topic string) error {
	yieldSome()
	return b.testBroker.Unsubscribe(ctx, topic)
}

func yieldSome() {
	for i := 0; i < 5; i++ {
		runtime.Gosched()
	}
}

// TestHubChurnKeepsBrokerSubscription: subscribers of one topic come and go
// concurrently, so its hub entry is created, emptied and re-created. The
// broker unsubscribes by topic name, so a late Unsubscribe from an emptied
// entry must never remove the handler a newer entry installed: whenever a
// subscriber holds the topic, the broker must deliver it.
func TestHubChurnKeepsBrokerSubscription(t *testing.T) {
	env := newTestEnv(t, nil)
	env.srv.broker = slowSubBroker{env.broker} // before any use
	h := env.srv.hub
	const topic = "room:churn"
	rounds := 1000
	if testing.Short() {
		rounds = 300
	}
	var lost atomic.Bool
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					th, err := h.acquire(topic)
					if err != nil {
						t.Error(err)
						return
					}
					// Held, so subscribed: only a stale Unsubscribe from an
					// emptied entry could have removed the handler.
					yieldSome()
					if !env.broker.hasHandler(topic) {
						lost.Store(true)
					}
					h.release(th)
				}
			}()
		}
		wg.Wait()
		if lost.Load() {
			t.Fatalf("round %d: a holder of %s found no broker handler (a stale Unsubscribe, or a subscription the hub believes it has)", r, topic)
		}
		// Quiescent: a holder of the topic must be delivered to.
		th, err := h.acquire(topic)
		if err != nil {
			t.Fatal(err)
		}
		if !env.broker.hasHandler(topic) {
			t.Fatalf("round %d: the hub holds %s subscribed but the broker has no handler for it", r, topic)
		}
		h.release(th)
	}
}

// stuckSubBroker's Subscribe blocks until released, then fails, as a
// stalled network engine does after its timeout.
type stuckSubBroker struct {
	*testBroker
	calls atomic.Int64
	gate  chan struct{}
}

func (b *stuckSubBroker) Subscribe(context.Context, string, pubsub.Handler) (pubsub.Position, error) {
	b.calls.Add(1)
	<-b.gate
	return pubsub.Position{}, errors.New("broker stalled")
}

// Joins to a topic whose broker Subscribe is stuck share that one call's
// outcome: they are all refused when it fails, instead of each waiting
// for a timeout in turn (which would hold every worker for minutes).
func TestJoinsShareOneStuckSubscribe(t *testing.T) {
	env := newTestEnv(t, nil)
	b := &stuckSubBroker{testBroker: env.broker, gate: make(chan struct{})}
	env.srv.broker = b // before any use
	const n = 6
	conns := make([]*fakeConn, n)
	for i := range n {
		sock, conn := env.connect(t, V2)
		conns[i] = conn
		mustHandle(t, sock, `["1","1","room:stuck","phx_join",{}]`)
	}
	waitFor(t, waitLong, "the first Subscribe", func() bool { return b.calls.Load() == 1 })
	// Every join holds the topic (is in acquire) before the broker answers.
	waitFor(t, waitLong, "all joins waiting on it", func() bool {
		h := env.srv.hub
		h.mu.Lock()
		defer h.mu.Unlock()
		th := h.topics["room:stuck"]
		return th != nil && th.refs == n
	})
	close(b.gate)
	for i, c := range conns {
		if got := c.waitTexts(t, 1)[0]; !strings.Contains(got, `"status":"error"`) {
			t.Fatalf("join %d: %s, want an error reply", i, got)
		}
	}
	if got := b.calls.Load(); got != 1 {
		t.Fatalf("%d broker Subscribe calls for %d joins of one topic, want 1", got, n)
	}
}
