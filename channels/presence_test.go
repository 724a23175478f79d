package channels

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/phxgate/phxgate/presence"
	"github.com/phxgate/phxgate/pubsub"
)

// fakePresence is a PresenceTracker that records calls and serves a
// state whose version grows with every call to State.
type fakePresence struct {
	mu      sync.Mutex
	calls   []string
	version atomic.Int64
}

func (f *fakePresence) TrackPresence(_ context.Context, topic, tag, key string, meta []byte) (presence.Presence, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "track "+topic+" "+key+" "+string(meta))
	return presence.Presence{Key: key, Meta: meta}, nil
}

func (f *fakePresence) Untrack(_ context.Context, topic, tag string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "untrack "+topic)
}

func (f *fakePresence) State(context.Context, string) ([]byte, error) {
	return []byte(`{"v":` + string(rune('0'+f.version.Add(1))) + `}`), nil
}

func (f *fakePresence) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Presence routes: an anonymous channel is not tracked but gets
// presence_state after its join; a broker resync sends it again (diffs
// have no history to fill from); other routes get none.
func TestPresenceStateOnJoinAndResync(t *testing.T) {
	fp := &fakePresence{}
	env := newTestEnv(t, func(c *Config) { c.Presence = fp })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	mustHandle(t, sock, `["2","2","room:a","phx_join",{}]`)
	// The two channels run on their own workers: compare per topic.
	got := conn.waitTexts(t, 3)
	here := slices.DeleteFunc(slices.Clone(got), func(f string) bool { return !strings.Contains(f, `"here:a"`) })
	want := []string{
		`["1","1","here:a","phx_reply",{"response":{},"status":"ok"}]`,
		`["1",null,"here:a","presence_state",{"v":1}]`,
	}
	if !slices.Equal(here, want) || !slices.Contains(got, `["2","2","room:a","phx_reply",{"response":{},"status":"ok"}]`) {
		t.Fatalf("got  %s\nwant %s and room:a's reply", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	if l := fp.log(); len(l) != 0 {
		t.Fatalf("an anonymous channel was tracked: %v", l)
	}
	env.broker.resync("here:a")
	env.broker.resync("room:a")
	got = conn.waitTexts(t, 4)
	if got[3] != `["1",null,"here:a","presence_state",{"v":2}]` {
		t.Fatalf("after a resync: %s", got[3])
	}
}

// A join whose outcome is unknown (the backend unreachable or slow past
// the deadline while the call was out) gets a Leave for the same
// connection and join_ref, so a game that did seat the player unseats
// them; a join the game answered (even with a crash) gets none.
func TestJoinWithUnknownOutcomeGetsItsLeave(t *testing.T) {
	env := newTestEnv(t, nil)
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:unavail","phx_join",{}]`)
	mustHandle(t, sock, `["2","2","room:lostanswer","phx_join",{}]`)
	mustHandle(t, sock, `["3","3","room:crash","phx_join",{}]`)
	mustHandle(t, sock, `["4","4","room:fullbulkhead","phx_join",{}]`)
	mustHandle(t, sock, `["5","5","room:breakeropen","phx_join",{}]`)
	conn.waitTexts(t, 5)
	waitFor(t, waitLong, "the unknown joins' Leaves", func() bool {
		l := env.backend.logged()
		return slices.Contains(l, "leave room:unavail 1 crashed") && slices.Contains(l, "leave room:lostanswer 2 crashed")
	})
	env.srv.seats.flush(context.Background()) // every queued Leave sent
	for _, l := range env.backend.logged() {
		for _, never := range []string{"leave room:crash", "leave room:fullbulkhead", "leave room:breakeropen"} {
			if strings.HasPrefix(l, never) {
				t.Fatalf("a Leave for a join that was answered or never sent: %v", env.backend.logged())
			}
		}
	}
}

// failingState is a tracker whose state cannot be read.
type failingState struct{ fakePresence }

func (*failingState) State(context.Context, string) ([]byte, error) {
	return nil, errors.New("store down")
}

// A join whose presence_state cannot be read is ended with phx_error, so
// the client rejoins: phoenix.js would otherwise hold every later diff
// waiting for a state that never comes.
func TestPresenceStateUnreadableEndsTheChannel(t *testing.T) {
	env := newTestEnv(t, func(c *Config) { c.Presence = &failingState{} })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	got := conn.waitTexts(t, 2)
	if want := `["1","1","here:a","phx_error",{"reason":"channel_crash"}]`; got[1] != want {
		t.Fatalf("after the join: %s, want %s", got[1], want)
	}
}

// gatedState is a tracker whose State waits, once shut, until released
// (a slow store).
type gatedState struct {
	fakePresence
	shut    atomic.Bool
	entered chan struct{}
	release chan struct{}
	reads   atomic.Int64
}

func (g *gatedState) State(ctx context.Context, topic string) ([]byte, error) {
	g.reads.Add(1)
	if g.shut.Load() {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-g.release
	}
	return g.fakePresence.State(ctx, topic)
}

// A presence refresh (after a resync) reads the state without holding up
// the topic's deliveries while the store is slow; a presence_diff
// delivered meanwhile makes it read again, so the state it sends is not
// older than that diff.
func TestPresenceRefreshDoesNotStallDelivery(t *testing.T) {
	gs := &gatedState{entered: make(chan struct{}, 1), release: make(chan struct{})}
	env := newTestEnv(t, func(c *Config) { c.Presence = gs })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	conn.waitTexts(t, 2) // reply, presence_state v1
	gs.shut.Store(true)
	env.broker.resync("here:a")
	<-gs.entered // the refresh waits on the store
	published := make(chan struct{})
	go func() {
		defer close(published)
		ctx := context.Background()
		_, _ = env.broker.Publish(ctx, "here:a", pubsub.Message{Event: "news", Payload: []byte(`{"n":1}`)})
		_, _ = env.broker.Publish(ctx, "here:a", pubsub.Message{Event: "presence_diff", Payload: []byte(`{"joins":{},"leaves":{}}`), Ephemeral: true})
	}()
	waitFor(t, waitLong, "the topic's events delivered while the store is slow", func() bool {
		select {
		case <-published:
			return true
		default:
			return false
		}
	})
	got := conn.waitTexts(t, 4)
	if !strings.Contains(got[2], `"news"`) || !strings.Contains(got[3], `"presence_diff"`) {
		t.Fatalf("while the refresh waits: %s", strings.Join(got[2:], "\n"))
	}
	gs.shut.Store(false)
	close(gs.release)
	// The refresh's state, read before the diff came, is followed by the
	// diff again, so the client ends with it applied.
	got = conn.waitTexts(t, 6)
	if !strings.Contains(got[4], `"presence_state"`) || !strings.Contains(got[5], `"presence_diff"`) {
		t.Fatalf("after the store answered: %s, want presence_state then the diff again", strings.Join(got[4:], "\n"))
	}
}

// bigState is a tracker whose presence_state is 20 keys of about 130
// bytes.
type bigState struct{ fakePresence }

func (*bigState) State(context.Context, string) ([]byte, error) {
	b := []byte("{")
	for i := range 20 {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `"p`+strconv.Itoa(i)+`":{"metas":[{"pad":"`+strings.Repeat("x", 100)+`","phx_ref":"r`+strconv.Itoa(i)+`"}]}`...)
	}
	return append(b, '}'), nil
}

// A presence_state larger than the node's whole budget for states sent in
// pieces is not sent: the channel ends with phx_error, counted; the
// socket and its other channels stay.
func TestPresenceStateTooLarge(t *testing.T) {
	env := newTestEnv(t, func(c *Config) {
		c.Presence = &bigState{}
		c.PresencePieceBytes, c.PresenceStreamBytes = 1024, 1024
	})
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	got := conn.waitTexts(t, 2)
	if want := `["1","1","here:a","phx_error",{"reason":"channel_crash"}]`; got[1] != want {
		t.Fatalf("after the join: %s, want %s", got[1], want)
	}
	if n := counterValue(t, env.reg, "phxgate_presence_state_too_large_total", ""); n != 1 {
		t.Fatalf("phxgate_presence_state_too_large_total = %v, want 1", n)
	}
	mustHandle(t, sock, `["2","2","room:b","phx_join",{}]`)
	if got := conn.waitTexts(t, 3); got[2] != `["2","2","room:b","phx_reply",{"response":{},"status":"ok"}]` {
		t.Fatalf("another channel on the same socket: %s", got[2])
	}
}

// collectDiffs is a presence publisher that keeps the diffs.
type collectDiffs struct {
	mu    sync.Mutex
	diffs []string
}

func (d *collectDiffs) publish(_ context.Context, _ string, payload []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.diffs = append(d.diffs, string(payload))
	return nil
}

func (d *collectDiffs) take() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.diffs
	d.diffs = nil
	return out
}

// A topic whose presence_state is over the node's budget for states sent
// in pieces: a join is refused its presence before being tracked
// (counted as state_too_large) and ends with phx_error; no rejoin
// broadcasts a join+leave diff.
func TestPresenceStateTooLargeRefusesBeforeTracking(t *testing.T) {
	d := &collectDiffs{}
	tr := presence.NewTracker(presence.Config{Window: time.Millisecond}, presence.NewMemory(), d.publish, nil)
	for i := range 20 { // the room holds a big state already
		if err := tr.Track(context.Background(), "here:a", "x"+strconv.Itoa(i), "big"+strconv.Itoa(i), []byte(`{"pad":"`+strings.Repeat("x", 100)+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, waitLong, "the room's diff", func() bool { return len(d.take()) > 0 })
	env := newTestEnv(t, func(c *Config) { c.Presence = tr; c.PresencePieceBytes, c.PresenceStreamBytes = 1024, 1024 })
	for range 3 { // three rejoins of one client
		sock, conn := env.connectPlayer(t, "alice")
		mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
		if got := conn.waitTexts(t, 2); !strings.Contains(got[1], "phx_error") {
			t.Fatalf("after the join: %s, want phx_error", got[1])
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(tr.Collector())
	if n := counterValue(t, reg, "phxgate_presence_refused_total", "state_too_large"); n != 3 {
		t.Fatalf("refused{state_too_large} = %v, want 3", n)
	}
	// A diff published for those joins would be queued by now: a Track
	// queues its join under the topic's lock before it returns.
	tr.Drain(context.Background())
	for _, diff := range d.take() {
		if strings.Contains(diff, "alice") {
			t.Fatalf("a diff names alice, whose joins all ended in phx_error: %s", diff)
		}
	}
}

// failingAdd is a presence store whose Add fails (not a refusal).
type failingAdd struct{ presence.Store }

func (failingAdd) Add(context.Context, string, string, presence.Presence, presence.Limits) error {
	return errors.New("store down")
}

// A join whose presence could not be stored (an error, not a refusal)
// ends with phx_error: the client rejoins, instead of staying joined and
// absent with nothing to repair it.
func TestPresenceTrackErrorEndsTheChannel(t *testing.T) {
	tr := presence.NewTracker(presence.Config{Window: time.Millisecond}, failingAdd{presence.NewMemory()}, (&collectDiffs{}).publish, nil)
	env := newTestEnv(t, func(c *Config) { c.Presence = tr })
	sock, conn := env.connectPlayer(t, "alice")
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	if got := conn.waitTexts(t, 2); got[1] != `["1","1","here:a","phx_error",{"reason":"channel_crash"}]` {
		t.Fatalf("after the join: %s, want phx_error", got[1])
	}
}
