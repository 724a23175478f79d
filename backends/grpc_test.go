package backends

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// game is an in-process GameBackend: each method counts the request as an
// attempt, records it, and answers with its hook (an empty response when
// the hook is nil).
type game struct {
	backendv1.UnimplementedGameBackendServer

	join     func(context.Context, *backendv1.JoinRequest) (*backendv1.JoinResponse, error)
	handleIn func(context.Context, *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error)
	leave    func(context.Context, *backendv1.LeaveRequest) (*backendv1.LeaveResponse, error)

	attempts atomic.Int64
	mu       sync.Mutex
	reqs     []proto.Message
}

func (g *game) record(m proto.Message) {
	g.attempts.Add(1)
	g.mu.Lock()
	g.reqs = append(g.reqs, m)
	g.mu.Unlock()
}

func (g *game) requests() []proto.Message {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]proto.Message(nil), g.reqs...)
}

func (g *game) Join(ctx context.Context, r *backendv1.JoinRequest) (*backendv1.JoinResponse, error) {
	g.record(r)
	if g.join == nil {
		return &backendv1.JoinResponse{}, nil
	}
	return g.join(ctx, r)
}

func (g *game) HandleIn(ctx context.Context, r *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
	g.record(r)
	if g.handleIn == nil {
		return &backendv1.HandleInResponse{}, nil
	}
	return g.handleIn(ctx, r)
}

func (g *game) Leave(ctx context.Context, r *backendv1.LeaveRequest) (*backendv1.LeaveResponse, error) {
	g.record(r)
	if g.leave == nil {
		return &backendv1.LeaveResponse{}, nil
	}
	return g.leave(ctx, r)
}

// serveGame serves g over real TCP at addr ("127.0.0.1:0" for a free
// port) and returns the address and a stop function (also run at cleanup)
// that returns once the server's goroutines are done.
func serveGame(tb testing.TB, g *game, addr string, opts ...grpc.ServerOption) (string, func()) {
	tb.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatalf("listen %s: %v", addr, err)
	}
	srv := grpc.NewServer(opts...)
	backendv1.RegisterGameBackendServer(srv, g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	stop := sync.OnceFunc(func() {
		srv.Stop()
		<-done
	})
	tb.Cleanup(stop)
	return lis.Addr().String(), stop
}

// newEngine builds a gRPC engine from spec, lets tweak adjust the parsed
// config, and closes the engine at cleanup.
func newEngine(tb testing.TB, spec string, tweak func(*GRPCConfig)) *GRPC {
	tb.Helper()
	cfg, err := ParseGRPCSpec(spec)
	if err != nil {
		tb.Fatalf("ParseGRPCSpec(%q): %v", spec, err)
	}
	if tweak != nil {
		tweak(&cfg)
	}
	g, err := NewGRPC(cfg)
	if err != nil {
		tb.Fatalf("NewGRPC: %v", err)
	}
	tb.Cleanup(func() { _ = g.Close() })
	return g
}

// eventually polls f until it returns nil, failing tb with f's last error
// after timeout.
func eventually(tb testing.TB, timeout time.Duration, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("not within %v: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeClock is the breakers' clock in tests: time moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func wantErr(tb testing.TB, err error, kinds ...error) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("got no error, want %v", kinds)
	}
	for _, k := range kinds {
		if !errors.Is(err, k) {
			tb.Fatalf("got %v, want it to match %v", err, k)
		}
	}
}

func fullCall() *Call {
	return &Call{
		NodeID:         "node-a",
		ConnID:         1<<40 + 7,
		PlayerID:       "player-9",
		Claims:         []byte(`{"sub":"player-9","role":"gm"}`),
		Params:         []byte(`{"vsn":"2.0.0"}`),
		Topic:          "room:1",
		Event:          "phx_join",
		JoinRef:        "3",
		Ref:            "4",
		Payload:        Payload{Data: []byte(`{"seat":2}`)},
		IdempotencyKey: "i1:42:1:1",
		ResumePosition: "5-17",
		Recoverable:    true,
	}
}

func fullProtoCall(c *Call) *backendv1.Call {
	return &backendv1.Call{
		NodeId:         c.NodeID,
		ConnId:         c.ConnID,
		PlayerId:       c.PlayerID,
		Claims:         c.Claims,
		Params:         c.Params,
		Topic:          c.Topic,
		Event:          c.Event,
		JoinRef:        c.JoinRef,
		Ref:            c.Ref,
		Payload:        &backendv1.Payload{Data: c.Payload.Data, Binary: c.Payload.Binary},
		IdempotencyKey: c.IdempotencyKey,
	}
}

func TestGRPCJoinRoundTrip(t *testing.T) {
	g := &game{join: func(context.Context, *backendv1.JoinRequest) (*backendv1.JoinResponse, error) {
		return &backendv1.JoinResponse{
			Reply: &backendv1.Reply{Status: "ok", Response: &backendv1.Payload{Data: []byte(`{"hand":[1,2]}`)}},
			Broadcasts: []*backendv1.Broadcast{
				{Event: "joined", Payload: &backendv1.Payload{Data: []byte(`{"who":"player-9"}`)}},
				{Topic: "lobby", Event: "raw", Payload: &backendv1.Payload{Data: []byte{0, 1, 255}, Binary: true}},
				{Topic: "lobby", Event: "bare"}, // no payload at all: empty
			},
			Pushes:           []*backendv1.Push{{Event: "state", Payload: &backendv1.Payload{Data: []byte{9, 8}, Binary: true}}},
			PresenceMeta:     []byte(`{"status":"seated"}`),
			Stop:             backendv1.Stop_STOP_NONE,
			SnapshotPosition: "5-20",
		}, nil
	}}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	e := newEngine(t, "grpc://"+addr, nil)

	c := fullCall()
	c.Rejoin = true
	got, err := e.Join(context.Background(), c)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	want := &Reply{
		Status:   "ok",
		Response: Payload{Data: []byte(`{"hand":[1,2]}`)},
		Broadcasts: []Message{
			{Event: "joined", Payload: Payload{Data: []byte(`{"who":"player-9"}`)}},
			{Topic: "lobby", Event: "raw", Payload: Payload{Data: []byte{0, 1, 255}, Binary: true}},
			{Topic: "lobby", Event: "bare"},
		},
		Pushes:           []Message{{Event: "state", Payload: Payload{Data: []byte{9, 8}, Binary: true}}},
		PresenceMeta:     []byte(`{"status":"seated"}`),
		SnapshotPosition: "5-20",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("reply\n got %+v\nwant %+v", got, want)
	}
	wantReq := &backendv1.JoinRequest{Call: fullProtoCall(c), ResumePosition: "5-17", Recoverable: true, Rejoin: true}
	reqs := g.requests()
	if len(reqs) != 1 || !proto.Equal(reqs[0], wantReq) {
		t.Fatalf("request\n got %v\nwant %v", reqs, wantReq)
	}
}

func TestGRPCHandleInRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		resp *backendv1.HandleInResponse
		want *Reply
	}{
		{"binary reply, stop normal",
			&backendv1.HandleInResponse{
				Reply: &backendv1.Reply{Status: "error", Response: &backendv1.Payload{Data: []byte{1, 2, 3}, Binary: true}},
				Stop:  backendv1.Stop_STOP_NORMAL,
			},
			&Reply{Status: "error", Response: Payload{Data: []byte{1, 2, 3}, Binary: true}, Stop: StopNormal}},
		{"stop error",
			&backendv1.HandleInResponse{Stop: backendv1.Stop_STOP_ERROR},
			&Reply{Stop: StopCrash}},
		{"unknown stop keeps the channel",
			&backendv1.HandleInResponse{Reply: &backendv1.Reply{Status: "ok"}, Stop: backendv1.Stop(99)},
			&Reply{Status: "ok"}},
		{"empty response is no reply",
			&backendv1.HandleInResponse{},
			&Reply{}},
		{"broadcasts and pushes",
			&backendv1.HandleInResponse{
				Reply:      &backendv1.Reply{Status: "ok"},
				Broadcasts: []*backendv1.Broadcast{{Topic: "room:2", Event: "moved", Payload: &backendv1.Payload{Data: []byte(`{"x":1}`)}}},
				Pushes:     []*backendv1.Push{{Event: "you", Payload: &backendv1.Payload{Data: []byte(`"moved"`)}}},
			},
			&Reply{
				Status:     "ok",
				Broadcasts: []Message{{Topic: "room:2", Event: "moved", Payload: Payload{Data: []byte(`{"x":1}`)}}},
				Pushes:     []Message{{Event: "you", Payload: Payload{Data: []byte(`"moved"`)}}},
			}},
	}
	var resp atomic.Pointer[backendv1.HandleInResponse]
	g := &game{handleIn: func(context.Context, *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
		return resp.Load(), nil
	}}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	e := newEngine(t, "grpc://"+addr, nil)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp.Store(tc.resp)
			c := fullCall()
			c.Event, c.Ref, c.IdempotencyKey = "move", fmt.Sprint(10+i), fmt.Sprintf("k%d", i)
			c.ResumePosition, c.Recoverable = "", false
			c.Payload = Payload{Data: []byte{0, 0xfe, byte(i)}, Binary: true}
			got, err := e.HandleIn(context.Background(), c)
			if err != nil {
				t.Fatalf("HandleIn: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("reply\n got %+v\nwant %+v", got, tc.want)
			}
			reqs := g.requests()
			wantReq := &backendv1.HandleInRequest{Call: fullProtoCall(c)}
			if last := reqs[len(reqs)-1]; !proto.Equal(last, wantReq) {
				t.Fatalf("request\n got %v\nwant %v", last, wantReq)
			}
		})
	}
}

func TestGRPCLeaveReasons(t *testing.T) {
	tests := []struct {
		reason LeaveReason
		want   backendv1.LeaveReason
	}{
		{LeaveLeft, backendv1.LeaveReason_LEAVE_REASON_LEFT},
		{LeaveDisconnected, backendv1.LeaveReason_LEAVE_REASON_DISCONNECTED},
		{LeaveKicked, backendv1.LeaveReason_LEAVE_REASON_KICKED},
		{LeaveTimedOut, backendv1.LeaveReason_LEAVE_REASON_TIMEOUT},
		{LeaveDrained, backendv1.LeaveReason_LEAVE_REASON_DRAINED},
		{LeaveExpired, backendv1.LeaveReason_LEAVE_REASON_EXPIRED},
		{LeaveCrashed, backendv1.LeaveReason_LEAVE_REASON_CRASHED},
		{LeaveDuplicate, backendv1.LeaveReason_LEAVE_REASON_DUPLICATE_JOIN},
		{LeaveReason("something_new"), backendv1.LeaveReason_LEAVE_REASON_UNSPECIFIED},
	}
	g := &game{}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	e := newEngine(t, "grpc://"+addr, nil)
	for _, tc := range tests {
		t.Run(string(tc.reason), func(t *testing.T) {
			c := fullCall()
			c.Event, c.ResumePosition, c.Recoverable = "phx_leave", "", false
			if err := e.Leave(context.Background(), c, tc.reason); err != nil {
				t.Fatalf("Leave: %v", err)
			}
			reqs := g.requests()
			wantReq := &backendv1.LeaveRequest{Call: fullProtoCall(c), Reason: tc.want}
			if last := reqs[len(reqs)-1]; !proto.Equal(last, wantReq) {
				t.Fatalf("request\n got %v\nwant %v", last, wantReq)
			}
		})
	}
}

func TestGRPCRetriesUnavailableWithTheSameKey(t *testing.T) {
	var keys []string
	var mu sync.Mutex
	g := &game{}
	g.handleIn = func(_ context.Context, r *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
		mu.Lock()
		keys = append(keys, r.GetCall().GetIdempotencyKey())
		mu.Unlock()
		if g.attempts.Load() < 3 {
			return nil, status.Error(codes.Unavailable, "warming up")
		}
		return &backendv1.HandleInResponse{Reply: &backendv1.Reply{Status: "ok"}}, nil
	}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	e := newEngine(t, "grpc://"+addr+"?retries=2&backoff=1ms", nil)

	c := call("bet", `{"amount":5}`)
	c.IdempotencyKey = "i1:42:1:7"
	r, err := e.HandleIn(context.Background(), c)
	if err != nil {
		t.Fatalf("HandleIn: %v", err)
	}
	if r.Status != "ok" {
		t.Fatalf("status %q, want ok", r.Status)
	}
	if n := g.attempts.Load(); n != 3 {
		t.Fatalf("server saw %d attempts, want 3", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range keys {
		if k != keys[0] || k == "" {
			t.Fatalf("idempotency keys %q, want one non-empty key resent", keys)
		}
	}
	if s := e.Stats(); s.Attempts != 3 || s.Retries != 2 || s.OK != 1 {
		t.Fatalf("stats %+v, want 3 attempts, 2 retries, 1 ok", s)
	}
}

func TestGRPCRetriesAreBounded(t *testing.T) {
	g := &game{handleIn: func(context.Context, *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
		return nil, status.Error(codes.Unavailable, "down for good")
	}}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	e := newEngine(t, "grpc://"+addr+"?retries=2&backoff=1ms", nil)
	_, err := e.HandleIn(context.Background(), call("bet", `{}`))
	wantErr(t, err, ErrUnavailable)
	if n := g.attempts.Load(); n != 3 {
		t.Fatalf("server saw %d attempts, want 1 + 2 retries", n)
	}
}

func TestGRPCErrorMapping(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		resp     *backendv1.HandleInResponse
		kind     error
		reason   string
		attempts int64
	}{
		{name: "unavailable", err: status.Error(codes.Unavailable, "x"), kind: ErrUnavailable, reason: ReasonUnavailable, attempts: 2},
		{name: "deadline from the game", err: status.Error(codes.DeadlineExceeded, "x"), kind: ErrTimeout, reason: ReasonTimeout, attempts: 1},
		{name: "resource exhausted", err: status.Error(codes.ResourceExhausted, "x"), kind: ErrOverloaded, reason: ReasonOverloaded, attempts: 1},
		{name: "internal", err: status.Error(codes.Internal, "x"), kind: ErrBackend, reason: ReasonError, attempts: 1},
		{name: "invalid argument", err: status.Error(codes.InvalidArgument, "x"), kind: ErrBackend, reason: ReasonError, attempts: 1},
		{name: "plain error", err: errors.New("boom"), kind: ErrBackend, reason: ReasonError, attempts: 1},
		{name: "broadcast without event", resp: &backendv1.HandleInResponse{Broadcasts: []*backendv1.Broadcast{{Topic: "t"}}},
			kind: ErrBackend, reason: ReasonError, attempts: 1},
		{name: "push without event", resp: &backendv1.HandleInResponse{Pushes: []*backendv1.Push{{Payload: &backendv1.Payload{Data: []byte(`1`)}}}},
			kind: ErrBackend, reason: ReasonError, attempts: 1},
		{name: "response over max_message", resp: &backendv1.HandleInResponse{Reply: &backendv1.Reply{
			Status: "ok", Response: &backendv1.Payload{Data: make([]byte, 2048), Binary: true}}},
			kind: ErrOverloaded, reason: ReasonOverloaded, attempts: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &game{handleIn: func(context.Context, *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
				if tc.err != nil {
					return nil, tc.err
				}
				return tc.resp, nil
			}}
			addr, _ := serveGame(t, g, "127.0.0.1:0")
			e := newEngine(t, "grpc://"+addr+"?retries=1&backoff=1ms&max_message=1024", nil)
			r, err := e.HandleIn(context.Background(), call("e", `{}`))
			if r != nil {
				t.Fatalf("got reply %+v with error %v", r, err)
			}
			wantErr(t, err, tc.kind)
			var ce *CallError
			if !errors.As(err, &ce) || ce.Op != opHandleIn {
				t.Fatalf("got %#v, want a *CallError for %s", err, opHandleIn)
			}
			if got := ReplyReason(err); got != tc.reason {
				t.Fatalf("ReplyReason = %q, want %q", got, tc.reason)
			}
			if n := g.attempts.Load(); n != tc.attempts {
				t.Fatalf("server saw %d attempts, want %d", n, tc.attempts)
			}
		})
	}
}

func TestGRPCDeadline(t *testing.T) {
	g := &game{handleIn: func(ctx context.Context, _ *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	// Generous for a loaded CI, far below the 3s a lost deadline would
	// take (the call would block until the server stops).
	const bound = 2 * time.Second

	t.Run("engine timeout", func(t *testing.T) {
		e := newEngine(t, "grpc://"+addr+"?timeout=100ms", nil)
		start := time.Now()
		_, err := e.HandleIn(context.Background(), call("slow", `{}`))
		wantErr(t, err, ErrTimeout)
		if d := time.Since(start); d > bound {
			t.Fatalf("took %v, want about 100ms", d)
		}
		if s := e.Stats(); s.Timeouts != 1 {
			t.Fatalf("stats %+v, want 1 timeout", s)
		}
	})
	t.Run("caller deadline", func(t *testing.T) {
		e := newEngine(t, "grpc://"+addr+"?timeout=1m", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := e.HandleIn(ctx, call("slow", `{}`))
		wantErr(t, err, ErrTimeout)
		if d := time.Since(start); d > bound {
			t.Fatalf("took %v, want about 100ms", d)
		}
	})
	t.Run("caller already done", func(t *testing.T) {
		e := newEngine(t, "grpc://"+addr, nil)
		before := g.attempts.Load()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := e.HandleIn(ctx, call("slow", `{}`))
		wantErr(t, err, ErrBackend, context.Canceled)
		if g.attempts.Load() != before {
			t.Fatal("a call whose caller had given up reached the server")
		}
	})
}

// TestGRPCBreaker drives the breaker against a game that answers
// UNAVAILABLE, counting at the server what reaches it.
func TestGRPCBreaker(t *testing.T) {
	var healthy atomic.Bool
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var block atomic.Bool
	g := &game{handleIn: func(context.Context, *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
		if block.Load() {
			arrived <- struct{}{}
			<-release
		}
		if !healthy.Load() {
			return nil, status.Error(codes.Unavailable, "restarting")
		}
		return &backendv1.HandleInResponse{Reply: &backendv1.Reply{Status: "ok"}}, nil
	}}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	clock := newFakeClock()
	e := newEngine(t, "grpc://"+addr+"?retries=0&breaker_failures=3&breaker_cooldown=1m", func(c *GRPCConfig) { c.now = clock.Now })
	do := func() error {
		_, err := e.HandleIn(context.Background(), call("e", `{}`))
		return err
	}
	state := func(want BreakerState) {
		t.Helper()
		if s := e.Stats().Breaker; s != want {
			t.Fatalf("breaker %v, want %v", s, want)
		}
	}

	for i := 0; i < 3; i++ {
		err := do()
		wantErr(t, err, ErrUnavailable)
		if errors.Is(err, ErrCircuitOpen) {
			t.Fatalf("call %d failed fast before the threshold", i)
		}
	}
	state(BreakerOpen)
	for i := 0; i < 5; i++ {
		wantErr(t, do(), ErrUnavailable, ErrCircuitOpen)
	}
	// A Leave is never failed fast: it reaches the game while the breaker
	// is open (and leaves the breaker as it was).
	leavesBefore := len(g.requests())
	if err := e.Leave(context.Background(), call("phx_leave", `{}`), LeaveDisconnected); err != nil {
		t.Fatalf("Leave with the breaker open: %v", err)
	}
	if len(g.requests()) != leavesBefore+1 {
		t.Fatal("the Leave did not reach the game")
	}
	g.attempts.Add(-1) // the checks below count the other calls' attempts
	state(BreakerOpen)
	clock.Advance(59 * time.Second)
	wantErr(t, do(), ErrUnavailable, ErrCircuitOpen)
	if n := g.attempts.Load(); n != 3 {
		t.Fatalf("server saw %d attempts, want 3: the open breaker let calls through", n)
	}

	// The cool-down over, one probe goes; it fails and the breaker opens
	// again for a whole cool-down.
	clock.Advance(2 * time.Second)
	err := do()
	wantErr(t, err, ErrUnavailable)
	if errors.Is(err, ErrCircuitOpen) {
		t.Fatal("the probe was not sent")
	}
	state(BreakerOpen)
	wantErr(t, do(), ErrCircuitOpen)
	if n := g.attempts.Load(); n != 4 {
		t.Fatalf("server saw %d attempts, want 4", n)
	}

	// Next probe: the game is back. While the probe is out, other calls
	// still fail fast; its success closes the breaker.
	clock.Advance(time.Minute)
	healthy.Store(true)
	block.Store(true)
	probe := make(chan error, 1)
	go func() { probe <- do() }()
	<-arrived
	state(BreakerHalfOpen)
	wantErr(t, do(), ErrUnavailable, ErrCircuitOpen)
	block.Store(false)
	close(release)
	if err := <-probe; err != nil {
		t.Fatalf("probe: %v", err)
	}
	state(BreakerClosed)
	if err := do(); err != nil {
		t.Fatalf("after the breaker closed: %v", err)
	}
	s := e.Stats()
	if s.BreakerOpens != 2 || s.BreakerRejected != 8 || g.attempts.Load() != 6 {
		t.Fatalf("stats %+v, server attempts %d; want 2 openings, 8 fast failures, 6 attempts", s, g.attempts.Load())
	}
}

func TestGRPCBreakerIgnoresStaleResults(t *testing.T) {
	clock := newFakeClock()
	b := breaker{threshold: 1, cooldown: time.Minute, now: clock.Now}
	slow, _ := b.allow()
	fast, _ := b.allow()
	b.done(fast, outcomeFailure)
	if st, _, _ := b.stats(); st != BreakerOpen {
		t.Fatalf("breaker %v, want open", st)
	}
	b.done(slow, outcomeSuccess) // let through before the opening
	if st, _, _ := b.stats(); st != BreakerOpen {
		t.Fatalf("a result from before the opening closed the breaker: %v", st)
	}
	clock.Advance(time.Minute)
	p, ok := b.allow()
	if !ok || !p.probe {
		t.Fatalf("no probe after the cool-down: %+v %v", p, ok)
	}
	b.done(p, outcomeNeutral) // the probe's caller gave up: another may probe
	if p2, ok := b.allow(); !ok || !p2.probe {
		t.Fatalf("no second probe after a neutral one: %+v %v", p2, ok)
	}
}

func TestGRPCServerDownThenBack(t *testing.T) {
	g := &game{}
	addr, stop := serveGame(t, g, "127.0.0.1:0")
	clock := newFakeClock()
	e := newEngine(t, "grpc://"+addr+"?retries=1&backoff=1ms&breaker_failures=2&breaker_cooldown=1m&timeout=5s",
		func(c *GRPCConfig) { c.now = clock.Now })
	if _, err := e.Join(context.Background(), call("phx_join", `{}`)); err != nil {
		t.Fatalf("Join while up: %v", err)
	}
	stop()

	for i := 0; i < 2; i++ {
		_, err := e.Join(context.Background(), call("phx_join", `{}`))
		wantErr(t, err, ErrUnavailable)
		if errors.Is(err, ErrCircuitOpen) {
			t.Fatalf("call %d failed fast before the threshold", i)
		}
	}
	sent := e.Stats().Attempts
	start := time.Now()
	_, err := e.Join(context.Background(), call("phx_join", `{}`))
	wantErr(t, err, ErrUnavailable, ErrCircuitOpen)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("open breaker took %v to fail", d)
	}
	if s := e.Stats(); s.Attempts != sent || s.Breaker != BreakerOpen {
		t.Fatalf("stats %+v: want the breaker open and no request sent", s)
	}

	back := &game{}
	serveGame(t, back, addr)
	// Each round lets one probe through; the first ones may land while the
	// connection is still waiting to redial.
	eventually(t, 15*time.Second, func() error {
		clock.Advance(time.Minute)
		_, err := e.Join(context.Background(), call("phx_join", `{}`))
		return err
	})
	if s := e.Stats(); s.Breaker != BreakerClosed || back.attempts.Load() == 0 {
		t.Fatalf("stats %+v, server attempts %d: want the breaker closed by a call that reached the server", s, back.attempts.Load())
	}
}

func TestGRPCBulkhead(t *testing.T) {
	arrived := make(chan struct{}, 8)
	release := make(chan struct{})
	g := &game{handleIn: func(ctx context.Context, _ *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &backendv1.HandleInResponse{Reply: &backendv1.Reply{Status: "ok"}}, nil
	}}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	e := newEngine(t, "grpc://"+addr+"?max_inflight=2&max_queue=1&timeout=30s", nil)
	do := func(ctx context.Context) error {
		_, err := e.HandleIn(ctx, call("e", `{}`))
		return err
	}

	results := make(chan error, 3)
	for i := 0; i < 2; i++ {
		go func() { results <- do(context.Background()) }()
	}
	<-arrived
	<-arrived
	go func() { results <- do(context.Background()) }()
	eventually(t, 10*time.Second, func() error {
		if s := e.Stats(); s.Queued != 1 || s.InFlight != 2 {
			return fmt.Errorf("stats %+v, want 2 in flight and 1 queued", s)
		}
		return nil
	})

	start := time.Now()
	err := do(context.Background())
	wantErr(t, err, ErrOverloaded)
	if ReplyReason(err) != ReasonOverloaded {
		t.Fatalf("ReplyReason = %q, want %q", ReplyReason(err), ReasonOverloaded)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a refused call took %v", d)
	}
	if n := g.attempts.Load(); n != 2 {
		t.Fatalf("server saw %d calls, want 2", n)
	}

	close(release)
	for i := 0; i < 3; i++ {
		if err := <-results; err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	s := e.Stats()
	if s.OK != 3 || s.Overloaded != 1 || s.BulkheadRejected != 1 || s.InFlight != 0 || s.Queued != 0 {
		t.Fatalf("stats %+v", s)
	}
	if s.Breaker != BreakerClosed {
		t.Fatalf("refusals moved the breaker to %v", s.Breaker)
	}
}

func TestGRPCBulkheadQueueWaitEndsAtDeadline(t *testing.T) {
	arrived := make(chan struct{}, 1)
	g := &game{handleIn: func(ctx context.Context, _ *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
		arrived <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	e := newEngine(t, "grpc://"+addr+"?max_inflight=1&max_queue=4&timeout=30s", nil)
	ctx, cancel := context.WithCancel(context.Background())
	holder := make(chan error, 1)
	go func() {
		_, err := e.HandleIn(ctx, call("e", `{}`))
		holder <- err
	}()
	<-arrived
	wctx, wcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer wcancel()
	_, err := e.HandleIn(wctx, call("e", `{}`))
	wantErr(t, err, ErrOverloaded, context.DeadlineExceeded)
	cancel()
	<-holder
	if s := e.Stats(); s.Queued != 0 || s.InFlight != 0 {
		t.Fatalf("stats %+v: slots not given back", s)
	}
}

func TestGRPCCloseReturnsGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	g := &game{}
	addr, stop := serveGame(t, g, "127.0.0.1:0")
	cfg, err := ParseGRPCSpec("grpc://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewGRPC(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Go(func() {
			if _, err := e.HandleIn(context.Background(), call("e", `{}`)); err != nil {
				t.Errorf("HandleIn: %v", err)
			}
		})
	}
	wg.Wait()
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = e.HandleIn(context.Background(), call("e", `{}`))
	wantErr(t, err, ErrUnavailable, ErrClosed)
	stop()
	eventually(t, 10*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > base {
			return fmt.Errorf("%d goroutines, %d before", n, base)
		}
		return nil
	})
}

// selfSigned returns a server certificate for 127.0.0.1 and a pool that
// trusts it.
func selfSigned(tb testing.TB) (tls.Certificate, *x509.CertPool) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "game test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func TestGRPCS(t *testing.T) {
	cert, pool := selfSigned(t)
	g := &game{}
	addr, _ := serveGame(t, g, "127.0.0.1:0", grpc.Creds(credentials.NewServerTLSFromCert(&cert)))

	trusted := newEngine(t, "grpcs://"+addr, func(c *GRPCConfig) { c.rootCAs = pool })
	if _, err := trusted.Join(context.Background(), call("phx_join", `{}`)); err != nil {
		t.Fatalf("Join over TLS: %v", err)
	}
	// The system's roots do not know the test certificate.
	system := newEngine(t, "grpcs://"+addr+"?retries=0", nil)
	_, err := system.Join(context.Background(), call("phx_join", `{}`))
	wantErr(t, err, ErrUnavailable)
	// Nor does a plain-text engine speak to a TLS server.
	plain := newEngine(t, "grpc://"+addr+"?retries=0", nil)
	_, err = plain.Join(context.Background(), call("phx_join", `{}`))
	wantErr(t, err, ErrUnavailable)
	if n := g.attempts.Load(); n != 1 {
		t.Fatalf("server saw %d calls, want only the trusted one", n)
	}
}

func TestGRPCCollector(t *testing.T) {
	g := &game{}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	e := newEngine(t, "grpc://"+addr, nil)
	if _, err := e.Join(context.Background(), call("phx_join", `{}`)); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(e.Collector(prometheus.Labels{"route": "0"})); err != nil {
		t.Fatal(err)
	}
	// A second engine under other labels registers side by side.
	if err := reg.Register(newEngine(t, "grpc://"+addr, nil).Collector(prometheus.Labels{"route": "1"})); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, mf := range mfs {
		found[mf.GetName()] = true
		if mf.GetName() != "phxgate_backend_grpc_calls_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["route"] == "0" && labels["result"] == "ok" && m.GetCounter().GetValue() != 1 {
				t.Fatalf("route 0 ok calls = %v, want 1", m.GetCounter().GetValue())
			}
		}
	}
	for _, name := range []string{"calls_total", "attempts_total", "retries_total", "breaker_state", "breaker_opens_total",
		"breaker_rejected_total", "bulkhead_rejected_total", "inflight_calls", "queued_calls"} {
		if !found["phxgate_backend_grpc_"+name] {
			t.Fatalf("metric phxgate_backend_grpc_%s missing", name)
		}
	}
}

func TestGRPCSpec(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		got, err := ParseGRPCSpec("grpc://game.internal:5000")
		if err != nil {
			t.Fatal(err)
		}
		if want := NewGRPCConfig("game.internal:5000"); !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})
	t.Run("every option", func(t *testing.T) {
		got, err := ParseGRPCSpec("GRPCS://[::1]:5000/?timeout=1500ms&max_inflight=8&max_queue=0&retries=0&backoff=5ms" +
			"&breaker_failures=2&breaker_cooldown=250ms&keepalive=1m&keepalive_timeout=2s&max_message=65536")
		if err != nil {
			t.Fatal(err)
		}
		want := GRPCConfig{Target: "[::1]:5000", TLS: true, CallLimits: CallLimits{Timeout: 1500 * time.Millisecond, MaxInflight: 8, MaxQueue: 0,
			Retries: 0, Backoff: 5 * time.Millisecond, BreakerFailures: 2, BreakerCooldown: 250 * time.Millisecond, MaxMessage: 65536},
			Keepalive: time.Minute, KeepaliveTimeout: 2 * time.Second}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})
	bad := []struct {
		name, spec, mention string
	}{
		{"unknown option", "grpc://h:1?tiemout=3s", `"tiemout"`},
		{"option twice", "grpc://h:1?retries=1&retries=2", `"retries"`},
		{"timeout not a duration", "grpc://h:1?timeout=3", `"timeout"`},
		{"timeout zero", "grpc://h:1?timeout=0s", `"timeout"`},
		{"timeout negative", "grpc://h:1?timeout=-1s", `"timeout"`},
		{"timeout huge", "grpc://h:1?timeout=1h", `"timeout"`},
		{"max_inflight zero", "grpc://h:1?max_inflight=0", `"max_inflight"`},
		{"max_inflight not a number", "grpc://h:1?max_inflight=lots", `"max_inflight"`},
		{"max_queue negative", "grpc://h:1?max_queue=-1", `"max_queue"`},
		{"retries too many", "grpc://h:1?retries=11", `"retries"`},
		{"backoff empty", "grpc://h:1?backoff=", `"backoff"`},
		{"breaker_failures zero", "grpc://h:1?breaker_failures=0", `"breaker_failures"`},
		{"breaker_cooldown zero", "grpc://h:1?breaker_cooldown=0s", `"breaker_cooldown"`},
		{"keepalive too short", "grpc://h:1?keepalive=1s", `"keepalive"`},
		{"keepalive_timeout zero", "grpc://h:1?keepalive_timeout=0s", `"keepalive_timeout"`},
		{"max_message too small", "grpc://h:1?max_message=10", `"max_message"`},
		{"no port", "grpc://game", "host:port"},
		{"bad port", "grpc://game:99999", "port"},
		{"no host", "grpc://:5000", "host:port"},
		{"path", "grpc://h:1/api", "path"},
		{"credentials", "grpc://u:p@h:1", "credentials"},
		{"fragment", "grpc://h:1#x", "fragment"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.spec)
			if !errors.Is(err, ErrBadSpec) {
				t.Fatalf("New(%q) = %v, want ErrBadSpec", tc.spec, err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("error %q does not name %s", err, tc.mention)
			}
		})
	}
}

func TestNewGRPCIsCloser(t *testing.T) {
	b, err := New("grpc://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	c, ok := b.(io.Closer)
	if !ok {
		t.Fatalf("%T is not an io.Closer", b)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := Backend(Echo{}).(io.Closer); ok {
		t.Fatal("echo holds nothing to close")
	}
}

func TestReplyReason(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{ErrUnavailable, ReasonUnavailable},
		{&CallError{Op: opJoin, Kind: ErrTimeout}, ReasonTimeout},
		{fmt.Errorf("wrapped: %w", &CallError{Op: opJoin, Kind: ErrOverloaded, Err: errQueueFull}), ReasonOverloaded},
		{errors.Join(ErrTimeout, &CallError{Op: opJoin, Kind: ErrOverloaded}), ReasonOverloaded},
		{&CallError{Op: opLeave, Kind: ErrBackend, Err: errors.New("x")}, ReasonError},
		{errors.New("anything"), ReasonError},
	}
	for _, tc := range tests {
		if got := ReplyReason(tc.err); got != tc.want {
			t.Errorf("ReplyReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
