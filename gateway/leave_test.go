//go:build linux

package gateway

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
	"github.com/phxgate/phxgate/backends"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
)

// leaveCounter is an in-process backend whose Leave is slow and counted
// per (connection, topic).
type leaveCounter struct {
	delay  time.Duration
	mu     sync.Mutex
	leaves map[string][]backends.LeaveReason
}

func (b *leaveCounter) Join(context.Context, *backends.Call) (*backends.Reply, error) {
	return &backends.Reply{Status: "ok"}, nil
}

func (b *leaveCounter) HandleIn(context.Context, *backends.Call) (*backends.Reply, error) {
	return &backends.Reply{Status: "ok"}, nil
}

func (b *leaveCounter) Leave(_ context.Context, c *backends.Call, r backends.LeaveReason) error {
	time.Sleep(b.delay) // a slow backend; the call's deadline is not the point here
	b.mu.Lock()
	defer b.mu.Unlock()
	k := fmt.Sprintf("%d %s", c.ConnID, c.Topic)
	b.leaves[k] = append(b.leaves[k], r)
	return nil
}

// TestDrainRunsEveryLeave: SIGTERM-style drain of 2,000 joined channels
// behind a backend whose Leave takes 200 ms (about 6 s of Leaves for the
// 64 workers, more than one call timeout): every channel gets exactly one
// Leave, with reason "drained", before Shutdown returns.
func TestDrainRunsEveryLeave(t *testing.T) {
	testDrainLeaves(t, 30*time.Second)
}

// TestDrainTooShortCountsLostLeaves: the same drain with a window too
// short for the Leaves: Shutdown says how many never ran, and every
// channel is either a Leave the game got or a Leave counted lost.
func TestDrainTooShortCountsLostLeaves(t *testing.T) {
	testDrainLeaves(t, 3*time.Second)
}

func testDrainLeaves(t *testing.T, window time.Duration) {
	const sockets, perSocket = 20, 100
	be := &leaveCounter{delay: 200 * time.Millisecond, leaves: map[string][]backends.LeaveReason{}}
	cfg := testConfig()
	cfg.Routes = []RouteConfig{{Topic: "room:*", Backend: InprocPrefix + "slow"}}
	cfg.Limits.JoinsPerSecond, cfg.Limits.JoinBurst = 1e6, 1e6 // 2,000 joins from one address
	s, err := Start(context.Background(), cfg, WithLogger(discardLogger()), WithBackend("slow", be))
	if err != nil {
		t.Fatal(err)
	}
	for i := range sockets {
		c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0")
		if c.status() != http.StatusSwitchingProtocols {
			t.Fatalf("status %d", c.status())
		}
		var frames []byte
		for j := range perSocket {
			frames = append(frames, clientFrame(0x81, true, fmt.Appendf(nil, `["%d","%d","room:%d","phx_join",{}]`, j, j, j), -1)...)
		}
		c.write(frames)
		for range perSocket {
			h, p, err := c.readFrame()
			if err != nil || h.OpCode != ws.OpText || !strings.Contains(string(p), `"status":"ok"`) {
				t.Fatalf("socket %d: join reply %s: %v", i, p, err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), window)
	defer cancel()
	err = s.Shutdown(ctx)
	got := sumCounter(t, s.Registry(), "phxgate_leaves_total", "reason", "drained")
	lost := counterValue(t, s.Registry(), "phxgate_leaves_lost_total", "")
	t.Logf("window %v: %v Leaves, %v lost", window, got, lost)
	if window < 5*time.Second { // about 6 s of Leaves for 64 workers
		if err == nil || !strings.Contains(err.Error(), "never ran") || lost == 0 || got+lost != sockets*perSocket {
			t.Fatalf("Shutdown: %v; %v Leaves and %v lost, want the %d split between them and the loss reported", err, got, lost, sockets*perSocket)
		}
		return
	}
	if err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got != sockets*perSocket || lost != 0 {
		t.Errorf("phxgate_leaves_total{reason=drained} = %v, lost %v, want %d and 0", got, lost, sockets*perSocket)
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if len(be.leaves) != sockets*perSocket {
		t.Fatalf("%d channels got a Leave, want %d", len(be.leaves), sockets*perSocket)
	}
	for k, rs := range be.leaves {
		if len(rs) != 1 || rs[0] != backends.LeaveDrained {
			t.Fatalf("%s: leaves %v, want exactly one %q", k, rs, backends.LeaveDrained)
		}
	}
}

// TestLeaveExactlyOnceWithReason: whatever ends a joined channel, the game
// gets exactly one Leave with the reason that ended it: the client's
// phx_leave (left), the socket killed (disconnected), a kick through the
// Gateway service (kicked), the idle timeout (timed_out), the connect
// token's expiry (expired).
func TestLeaveExactlyOnceWithReason(t *testing.T) {
	be := &leaveCounter{leaves: map[string][]backends.LeaveReason{}}
	s := prodServer(t, func(c *Config) {
		c.Auth.Leeway = 0
		c.IdleTimeout = 2 * time.Second
		c.APIListen = "127.0.0.1:0"
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: InprocPrefix + "count"}}
	}, WithBackend("count", be))
	open := func(player, topic string, exp time.Time) *client {
		claims := jwt.MapClaims{"sub": player, "exp": exp.Unix()}
		return rawSocket(t, s, hsToken(t, claims), topic)
	}
	later := time.Now().Add(time.Hour)
	left := open("p-left", "room:left", later)
	killed := open("p-killed", "room:killed", later)
	kicked := open("p-kicked", "room:kicked", later)
	_ = open("p-idle", "room:idle", later) // sends nothing more: idle
	expiring := open("p-expired", "room:expired", time.Unix(time.Now().Unix()+2, 0))

	left.sendText(`["1","2","room:left","phx_leave",{}]`)
	left.expectMessage(ws.OpText, `["1","2","room:left","phx_reply",{"response":{},"status":"ok"}]`)
	killed.conn.Close()
	api := apiClient(t, s)
	if _, err := api.Disconnect(t.Context(), &backendv1.DisconnectRequest{Target: &backendv1.DisconnectRequest_PlayerId{PlayerId: "p-kicked"}}); err != nil {
		t.Fatal(err)
	}
	// The others keep their sockets alive (heartbeats), but for idle.
	stop := time.Now().Add(6 * time.Second)
	for time.Now().Before(stop) {
		for _, c := range []*client{left, kicked, expiring} {
			_, _ = c.conn.Write(clientFrame(0x81, true, []byte(`[null,"h","phoenix","heartbeat",{}]`), -1))
		}
		be.mu.Lock()
		n := len(be.leaves)
		be.mu.Unlock()
		if n == 5 {
			break
		}
		time.Sleep(100 * time.Millisecond) // heartbeat pacing, not synchronization
	}
	want := map[string]backends.LeaveReason{
		"room:left": backends.LeaveLeft, "room:killed": backends.LeaveDisconnected,
		"room:kicked": backends.LeaveKicked, "room:idle": backends.LeaveTimedOut,
		"room:expired": backends.LeaveExpired,
	}
	waitFor(t, 10*time.Second, func() bool {
		be.mu.Lock()
		defer be.mu.Unlock()
		return len(be.leaves) == len(want)
	}, "a Leave for each of the five channels")
	be.mu.Lock()
	defer be.mu.Unlock()
	for k, rs := range be.leaves {
		topic := k[strings.IndexByte(k, ' ')+1:]
		if len(rs) != 1 || rs[0] != want[topic] {
			t.Errorf("%s: leaves %v, want exactly one %q", topic, rs, want[topic])
		}
	}
}
