package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phxgate/phxgate/backends/examples/dice/game"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const waitLong = 5 * time.Second

// logLines is run's log output, one line per Write (slog writes whole
// lines), kept and handed to the test on lines.
type logLines struct {
	mu    sync.Mutex
	all   []string
	lines chan string
}

func newLogLines() *logLines { return &logLines{lines: make(chan string, 4096)} }

func (l *logLines) Write(p []byte) (int, error) {
	s := string(p)
	l.mu.Lock()
	l.all = append(l.all, s)
	l.mu.Unlock()
	select {
	case l.lines <- s:
	default: // the test reads only what it waits for
	}
	return len(p), nil
}

// waitFor waits for a log line containing sub.
func (l *logLines) waitFor(tb testing.TB, sub string) string {
	tb.Helper()
	deadline := time.After(waitLong)
	for {
		select {
		case s := <-l.lines:
			if strings.Contains(s, sub) {
				return s
			}
		case <-deadline:
			l.mu.Lock()
			defer l.mu.Unlock()
			tb.Fatalf("no log line with %q within %v; log:\n%s", sub, waitLong, strings.Join(l.all, ""))
			return ""
		}
	}
}

// gateway records the broadcasts phxgate's Gateway would get.
type gateway struct {
	backendv1.UnimplementedGatewayServer
	got chan *backendv1.BroadcastRequest
}

func (g *gateway) Broadcast(ctx context.Context, r *backendv1.BroadcastRequest) (*backendv1.BroadcastResponse, error) {
	select {
	case g.got <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &backendv1.BroadcastResponse{}, nil
}

func serveGateway(tb testing.TB) (*gateway, string) {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	gw := &gateway{got: make(chan *backendv1.BroadcastRequest, 64)}
	srv := grpc.NewServer()
	backendv1.RegisterGatewayServer(srv, gw)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	tb.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return gw, lis.Addr().String()
}

// start runs the binary's run with args on a free port and returns a
// client of its GameBackend and a stop function returning run's error.
func start(tb testing.TB, logs *logLines, args ...string) (backendv1.GameBackendClient, func() error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	ran := make(chan error, 1)
	go func() {
		ran <- run(ctx, append([]string{"-listen", "127.0.0.1:0"}, args...), logs, func(a net.Addr) { ready <- a })
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-ran:
		cancel()
		tb.Fatalf("run: %v", err)
	case <-time.After(waitLong):
		cancel()
		tb.Fatal("run never got ready")
	}
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	stop := sync.OnceValue(func() error {
		_ = conn.Close()
		cancel()
		select {
		case err := <-ran:
			return err
		case <-time.After(waitLong):
			return errors.New("run did not return after its context was cancelled")
		}
	})
	tb.Cleanup(func() { _ = stop() })
	return backendv1.NewGameBackendClient(conn), stop
}

var keySeq atomic.Int64

func newKey() string { return fmt.Sprintf("n:1:1:%d", keySeq.Add(1)) }

// joinAndBet joins player to topic and bets 100 on high, in the round
// the join opened.
func joinAndBet(tb testing.TB, c backendv1.GameBackendClient, topic, player string) {
	tb.Helper()
	ctx := context.Background()
	call := &backendv1.Call{PlayerId: player, Topic: topic, Event: "phx_join", IdempotencyKey: newKey()}
	res, err := c.Join(ctx, &backendv1.JoinRequest{Call: call})
	if err != nil || res.GetReply().GetStatus() != game.StatusOK {
		tb.Fatalf("Join: %v %v", res, err)
	}
	call = &backendv1.Call{PlayerId: player, Topic: topic, Event: game.EventBet, IdempotencyKey: newKey(),
		Payload: &backendv1.Payload{Data: []byte(`{"amount":100,"pick":"high"}`)}}
	in, err := c.HandleIn(ctx, &backendv1.HandleInRequest{Call: call})
	if err != nil || in.GetReply().GetStatus() != game.StatusOK {
		tb.Fatalf("bet: %v %v", in, err)
	}
}

// TestRun serves the game as the binary does, plays rounds whose results
// reach a Gateway, and stops it by cancelling its context, as SIGTERM does.
func TestRun(t *testing.T) {
	gw, gwAddr := serveGateway(t)
	base := runtime.NumGoroutine()
	logs := newLogLines()
	client, stop := start(t, logs, "-api", gwAddr, "-window", "500ms")
	joinAndBet(t, client, "table:1", "alice")

	var r struct {
		Round   uint64           `json:"round"`
		Roll    int              `json:"roll"`
		Payouts map[string]int64 `json:"payouts"`
	}
	select {
	case b := <-gw.got:
		if b.GetTopic() != "table:1" || b.GetEvent() != game.EventRoundResult {
			t.Fatalf("broadcast %s %s", b.GetTopic(), b.GetEvent())
		}
		if err := json.Unmarshal(b.GetPayload().GetData(), &r); err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLong):
		t.Fatal("no round result reached the Gateway")
	}
	want := map[string]int64{}
	if r.Roll >= 4 {
		want["alice"] = 200
	}
	if r.Round != 1 || r.Roll < 1 || r.Roll > 6 || len(r.Payouts) != len(want) || r.Payouts["alice"] != want["alice"] {
		t.Fatalf("round result %+v, want round 1 paying %v", r, want)
	}

	if err := stop(); err != nil {
		t.Fatalf("run after stop: %v", err)
	}
	logs.waitFor(t, "dice: stopped")
	goroutinesBackTo(t, base)
}

// TestRunGatewayUnreachable: with nothing at -api the game logs the
// results it could not broadcast and goes on taking bets.
func TestRunGatewayUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	api := lis.Addr().String()
	_ = lis.Close()
	logs := newLogLines()
	client, stop := start(t, logs, "-api", api, "-window", "300ms")
	joinAndBet(t, client, "table:1", "alice")
	logs.waitFor(t, "round result broadcast failed, retrying")
	logs.waitFor(t, "round result not broadcast, given up")
	// Still playing: a new table, a new bet.
	joinAndBet(t, client, "table:2", "bob")
	if err := stop(); err != nil {
		t.Fatalf("run after stop: %v", err)
	}
}

func TestRunRefusesBadFlags(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-tables", "3"}, "flag provided but not defined"},
		{"window too short", []string{"-window", "1ms"}, "Window"},
		{"no keys", []string{"-max-keys", "0"}, "MaxKeys"},
		{"stray argument", []string{"serve"}, "unexpected arguments"},
		{"bad listen", []string{"-listen", "127.0.0.1:99999"}, "99999"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, newLogLines(), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%q) = %v, want an error mentioning %q", tc.args, err, tc.want)
			}
		})
	}
	if err := run(context.Background(), []string{"-window", "1ms"}, newLogLines(), nil); !errors.Is(err, game.ErrBadConfig) {
		t.Fatalf("run -window 1ms: %v, want ErrBadConfig", err)
	}
}

// goroutinesBackTo waits until no more than base goroutines run (gRPC's
// own goroutines end shortly after their connections close).
func goroutinesBackTo(tb testing.TB, base int) {
	tb.Helper()
	deadline := time.Now().Add(waitLong)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			tb.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}
