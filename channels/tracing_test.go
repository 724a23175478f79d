package channels

import (
	"context"
	"runtime"
	"testing"

	"github.com/phxgate/phxgate/backends"
	"github.com/prometheus/client_golang/prometheus"
)

// fixedBackend answers every push with the same reply and allocates
// nothing, so that a push's allocations are phxgate's own.
type fixedBackend struct{ rep backends.Reply }

func (b *fixedBackend) Join(context.Context, *backends.Call) (*backends.Reply, error) {
	return &backends.Reply{}, nil
}
func (b *fixedBackend) HandleIn(context.Context, *backends.Call) (*backends.Reply, error) {
	return &b.rep, nil
}
func (b *fixedBackend) Leave(context.Context, *backends.Call, backends.LeaveReason) error {
	return nil
}

// pushEnv is a server with one socket joined to room:bench on a
// fixedBackend; tweak adjusts the config (tracing).
func pushEnv(tb testing.TB, tweak func(*Config)) (s *Socket, conn *discardConn) {
	tb.Helper()
	be := &fixedBackend{rep: backends.Reply{Status: "ok", Response: backends.Payload{Data: []byte(`{"ok":1}`)}}}
	router, err := NewRouter([]Route{{Pattern: "room:*", Backend: be}})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := NewConfig()
	cfg.NodeID = "n1"
	cfg.Workers = 2
	cfg.ChannelQueue, cfg.ChannelQueueHard = 1<<20, 1<<20
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := NewServer(cfg, router, newTestBroker(), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		_ = srv.Close(ctx)
	})
	conn = &discardConn{}
	s = srv.Connect(conn, ConnectInfo{Serializer: V2, Params: []byte(`{}`)})
	if err := s.HandleText([]byte(`["1","1","room:bench","phx_join",{}]`)); err != nil {
		tb.Fatal(err)
	}
	waitFor(tb, waitLong, "join reply", func() bool { return conn.n.Load() == 1 })
	return s, conn
}

var benchPush = []byte(`["1","2","room:bench","bet",{"amount":10,"pick":"high"}]`)

// pushOnce sends one push and spins (no allocation) until its reply is
// out, so that the worker's allocations fall inside the measurement.
func pushOnce(tb testing.TB, s *Socket, conn *discardConn) {
	want := conn.n.Load() + 1
	if err := s.HandleText(benchPush); err != nil {
		tb.Fatal(err)
	}
	for conn.n.Load() < want {
		runtime.Gosched()
	}
}

// pushAllocsBudget is the allocations of one forwarded push, poller and
// worker sides, reply included, with tracing off: the count measured
// before tracing existed. Tracing off must not add one.
const pushAllocsBudget = 13

func TestPushAllocsTracingOff(t *testing.T) {
	s, conn := pushEnv(t, nil)
	pushOnce(t, s, conn) // warm up the pools
	allocs := testing.AllocsPerRun(200, func() { pushOnce(t, s, conn) })
	t.Logf("%v allocs per forwarded push (tracing off)", allocs)
	if allocs != pushAllocsBudget {
		t.Errorf("%v allocs per forwarded push with tracing off, want %d", allocs, pushAllocsBudget)
	}
}

func BenchmarkPushTracingOff(b *testing.B) {
	s, conn := pushEnv(b, nil)
	b.ReportAllocs()
	for b.Loop() {
		pushOnce(b, s, conn)
	}
}
