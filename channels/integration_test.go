package channels

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/pubsub"
	"github.com/prometheus/client_golang/prometheus"
)

// newRealEnv wires the real memory broker and the built-in echo and bench
// backends.
func newRealEnv(tb testing.TB) (*Server, *pubsub.Memory) {
	tb.Helper()
	mc := pubsub.NewMemoryConfig()
	mc.HistorySize = func(string) int { return 100 }
	br := pubsub.NewMemory(mc)
	tb.Cleanup(func() { _ = br.Close() })
	router, err := NewRouter([]Route{
		{Pattern: "room:*", Backend: backends.Echo{}, History: 100},
		{Pattern: "bench:*", Backend: backends.Bench{}},
	})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := NewConfig()
	srv, err := NewServer(cfg, router, br, prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Close(ctx)
	})
	return srv, br
}

func TestRealShoutAndEcho(t *testing.T) {
	srv, _ := newRealEnv(t)
	a, b := newFakeConn(t), newFakeConn(t)
	sa := srv.Connect(a, ConnectInfo{Serializer: V2})
	sb := srv.Connect(b, ConnectInfo{Serializer: V1})
	mustHandle(t, sa, `["1","1","room:x","phx_join",{}]`)
	mustHandle(t, sb, `{"topic":"room:x","event":"phx_join","payload":{},"ref":"1"}`)
	a.waitTexts(t, 1)
	b.waitTexts(t, 1)
	mustHandle(t, sa, `["1","2","room:x","shout",{"m":1}]`)
	got := a.waitTexts(t, 3)
	want := []string{
		`["1","1","room:x","phx_reply",{"response":{},"status":"ok"}]`,
		`[null,null,"room:x","shout",{"m":1}]`,
		`["1","2","room:x","phx_reply",{"response":{},"status":"ok"}]`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	if got := b.waitTexts(t, 2); got[1] != `{"event":"shout","payload":{"m":1},"ref":null,"topic":"room:x"}` {
		t.Fatal(got)
	}
	mustHandle(t, sa, `["1","3","room:x","crash",{}]`)
	if got := a.waitTexts(t, 4); got[3] != `["1","1","room:x","phx_error",{"reason":"channel_crash"}]` {
		t.Fatal(got)
	}
}

func TestRealBenchNullJoin(t *testing.T) {
	srv, _ := newRealEnv(t)
	c := newFakeConn(t)
	s := srv.Connect(c, ConnectInfo{Serializer: V1})
	mustHandle(t, s, `{"topic":"bench:1","event":"phx_join","payload":null,"ref":""}`)
	if got := c.waitTexts(t, 1); got[0] != `{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"","topic":"bench:1"}` {
		t.Fatal(got)
	}
	mustHandle(t, s, `{"topic":"bench:1","event":"echo","payload":{"body":"x"},"ref":"2"}`)
	if got := c.waitTexts(t, 2); got[1] != `{"event":"phx_reply","payload":{"response":{"type":"echo","body":"x"},"status":"ok"},"ref":"2","topic":"bench:1"}` {
		t.Fatal(got)
	}
}

// Resume against the real memory broker: join from now, disconnect, miss
// events, rejoin with the last position seen: exactly the missed events.
func TestRealResume(t *testing.T) {
	srv, br := newRealEnv(t)
	c1 := newFakeConn(t)
	s1 := srv.Connect(c1, ConnectInfo{Serializer: V2})
	mustHandle(t, s1, `["1","1","room:r","phx_join",{"offset":null}]`)
	got := c1.waitTexts(t, 1)
	var reply []json.RawMessage
	if err := json.Unmarshal([]byte(got[0]), &reply); err != nil {
		t.Fatal(err)
	}
	var rp struct {
		Response struct{ Position string }
	}
	if err := json.Unmarshal(reply[4], &rp); err != nil || rp.Response.Position == "" {
		t.Fatalf("no position in %s", got[0])
	}
	pos0, err := pubsub.ParsePosition(rp.Response.Position)
	if err != nil || pos0.Offset != 0 {
		t.Fatalf("position %q: %v", rp.Response.Position, err)
	}
	ctx := context.Background()
	for i := 1; i <= 2; i++ {
		if _, err := br.Publish(ctx, "room:r", pubsub.Message{Event: "ev", Payload: []byte(fmt.Sprintf(`{"i":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	got = c1.waitTexts(t, 3)
	last := pubsub.Position{Epoch: pos0.Epoch, Offset: 2}.String()
	if want := fmt.Sprintf(`[null,"%s","room:r","ev",{"i":2}]`, last); got[2] != want {
		t.Fatalf("got %s want %s", got[2], want)
	}
	s1.Terminate(backends.LeaveDisconnected)
	for i := 3; i <= 5; i++ {
		if _, err := br.Publish(ctx, "room:r", pubsub.Message{Event: "ev", Payload: []byte(fmt.Sprintf(`{"i":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	c2 := newFakeConn(t)
	s2 := srv.Connect(c2, ConnectInfo{Serializer: V2})
	mustHandle(t, s2, `["5","5","room:r","phx_join",{"offset":"`+last+`"}]`)
	got = c2.waitTexts(t, 4)
	p := func(o uint64) string { return pubsub.Position{Epoch: pos0.Epoch, Offset: o}.String() }
	want := []string{
		fmt.Sprintf(`["5","5","room:r","phx_reply",{"response":{"position":"%s","recovered":true},"status":"ok"}]`, p(5)),
		fmt.Sprintf(`[null,"%s","room:r","ev",{"i":3}]`, p(3)),
		fmt.Sprintf(`[null,"%s","room:r","ev",{"i":4}]`, p(4)),
		fmt.Sprintf(`[null,"%s","room:r","ev",{"i":5}]`, p(5)),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}
