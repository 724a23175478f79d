package channels

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phxgate/phxgate/pubsub"
)

// discardConn counts frames and keeps none.
type discardConn struct{ n atomic.Int64 }

func (c *discardConn) Send([]byte)                       { c.n.Add(1) }
func (c *discardConn) Close(CloseCode, DisconnectReason) {}
func (c *discardConn) ID() uint64                        { return 1 }

// hubWithSubscribers builds a topic hub with n joined subscribers, a mix
// of V1, V2 and opted-in V2, without going through joins.
func hubWithSubscribers(tb testing.TB, n int) (*topicHub, *discardConn) {
	tb.Helper()
	env := newTestEnv(tb, nil)
	conn := &discardConn{}
	th := newTopicHub(env.srv.hub, "room:bench")
	for i := range n {
		ser := V2
		if i%4 == 0 {
			ser = V1
		}
		s := env.srv.Connect(conn, ConnectInfo{Serializer: ser})
		c := &channel{sock: s, topic: th.name, hubIdx: -1, positions: i%3 == 0}
		th.add(th.lane(c), c)
	}
	return th, conn
}

var benchEvent = &pubsub.Event{Topic: "room:bench", Event: "broadcast",
	Payload: []byte(`{"type":"broadcast","body":{"player":"p1","x":10,"y":20}}`), Pos: posE7}

// The allocations of one broadcast do not grow with the subscriber count:
// one encoding per variant, the same bytes to everyone.
func TestBroadcastAllocsIndependentOfSubscribers(t *testing.T) {
	var prev float64 = -1
	for _, n := range []int{16, 256, 4096} {
		th, conn := hubWithSubscribers(t, n)
		allocs := testing.AllocsPerRun(50, func() { th.emit(benchEvent) })
		t.Logf("%d subscribers: %v allocs per broadcast", n, allocs)
		if allocs > 4 {
			t.Errorf("%d subscribers: %v allocs, want ≤ 4 (one per variant)", n, allocs)
		}
		if prev >= 0 && allocs > prev {
			t.Errorf("allocs grew with subscribers: %v → %v", prev, allocs)
		}
		prev = allocs
		if conn.n.Load() == 0 {
			t.Fatal("nothing sent")
		}
	}
}

func BenchmarkEncodeV2(b *testing.B) {
	for _, tc := range []struct {
		name    string
		variant int
	}{{"broadcast", variantV2}, {"broadcast_position", variantV2Pos}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(benchEvent.Payload)))
			for b.Loop() {
				_, _ = encodeBroadcast(tc.variant, benchEvent)
			}
		})
	}
	b.Run("push", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = encodeV2(`"12"`, "null", nil, "room:bench", "broadcast", benchEvent.Payload)
		}
	})
}

func BenchmarkDecodeV2(b *testing.B) {
	msg := []byte(`["12","34","room:bench","broadcast",{"type":"broadcast","body":{"player":"p1","x":10,"y":20}}]`)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	var m message
	for b.Loop() {
		if err := decodeV2(msg, &m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeV1(b *testing.B) {
	msg := []byte(`{"topic":"room:bench","event":"broadcast","payload":{"type":"broadcast","body":{"x":10}},"ref":"34","join_ref":"12"}`)
	b.ReportAllocs()
	var m message
	for b.Loop() {
		if err := decodeV1(msg, &m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBroadcast10kSubscribers(b *testing.B) {
	th, _ := hubWithSubscribers(b, 10_000)
	b.ReportAllocs()
	for b.Loop() {
		th.emit(benchEvent)
	}
}

func BenchmarkHeartbeat(b *testing.B) {
	env := newTestEnv(b, nil)
	s := env.srv.Connect(&discardConn{}, ConnectInfo{Serializer: V2})
	msg := []byte(`[null,"42","phoenix","heartbeat",{}]`)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.HandleText(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func ExampleRouter_Match() {
	r, _ := NewRouter([]Route{{Pattern: "room:*", Backend: newTestBackend()}})
	fmt.Println(r.Match("room:lobby").Pattern, r.Match("game:1") == nil)
	// Output: room:* true
}

// BenchmarkEventRoundTrip: one client event through the worker pool to an
// in-test backend and back as a reply frame.
func BenchmarkEventRoundTrip(b *testing.B) {
	env := newTestEnv(b, func(c *Config) { c.ChannelQueue, c.ChannelQueueHard = 1<<20, 1<<20 })
	conn := &discardConn{}
	s := env.srv.Connect(conn, ConnectInfo{Serializer: V2})
	if err := s.HandleText([]byte(`["1","1","room:bench","phx_join",{}]`)); err != nil {
		b.Fatal(err)
	}
	waitFor(b, waitLong, "join", func() bool { return conn.n.Load() == 1 })
	env.backend.mu.Lock()
	env.backend.log = nil
	env.backend.mu.Unlock()
	msg := []byte(`["1","2","room:bench","noop",{"x":1}]`)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if err := s.HandleText(msg); err != nil {
			b.Fatal(err)
		}
		n++
	}
	waitFor(b, 30*time.Second, "replies", func() bool { return conn.n.Load() == int64(n+1) })
}
