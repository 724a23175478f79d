package channels

import (
	"context"
	"runtime"
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
