//go:build linux

package gateway

import (
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gobwas/ws"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/pubsub/redistest"
	"google.golang.org/grpc"
)

// readyzCode asks a node's /readyz.
func readyzCode(tb testing.TB, s *Server) int {
	tb.Helper()
	resp, err := http.Get("http://" + s.AdminAddr().String() + "/readyz")
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// serveGame serves a gameServer on addr ("127.0.0.1:0" for a free port)
// until the returned stop is called (also at cleanup).
func serveGame(tb testing.TB, addr string) (net.Addr, func()) {
	tb.Helper()
	var ln net.Listener
	var err error
	// The port of a game just stopped may take a moment to be free again.
	waitFor(tb, 10*time.Second, func() bool { ln, err = net.Listen("tcp", addr); return err == nil }, "listen on "+addr)
	gs := grpc.NewServer()
	backendv1.RegisterGameBackendServer(gs, &gameServer{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(ln)
	}()
	stop := func() { gs.Stop(); <-done }
	tb.Cleanup(stop)
	return ln.Addr(), stop
}

// TestReadyzFollowsGRPCBackend: a route's gRPC game stops, /readyz turns
// 503 while the sockets stay connected; the game comes back on the same
// address and /readyz turns 200 by itself, and the game's channel works
// again.
func TestReadyzFollowsGRPCBackend(t *testing.T) {
	addr, stop := serveGame(t, "127.0.0.1:0")
	s := prodServer(t, func(c *Config) {
		c.Auth.HS256Secret = ""
		c.IdleTimeout = 0
		c.Routes = []RouteConfig{
			{Topic: "game:*", Backend: "grpc://" + addr.String() + "?timeout=1s&retries=0"},
			{Topic: "room:*", Backend: "echo"},
		}
	})
	c := rawSocket(t, s, "", "room:a")
	c.sendText(`["2","2","game:1","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["2","2","game:1","phx_reply",{"response":{"seat":1},"status":"ok"}]`)
	waitFor(t, 10*time.Second, func() bool { return readyzCode(t, s) == http.StatusOK }, "/readyz 200 with the game up")

	stop()
	waitFor(t, 10*time.Second, func() bool { return readyzCode(t, s) == http.StatusServiceUnavailable }, "/readyz 503 with the game down")
	for i := range 3 {
		ref := fmt.Sprint(10 + i)
		c.sendText(`["1","` + ref + `","room:a","echo",{"still":"here"}]`)
		c.expectMessage(ws.OpText, `["1","`+ref+`","room:a","phx_reply",{"response":{"still":"here"},"status":"ok"}]`)
		if code := readyzCode(t, s); code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz = %d while the game is down", code)
		}
	}

	serveGame(t, addr.String())
	waitFor(t, 15*time.Second, func() bool { return readyzCode(t, s) == http.StatusOK }, "/readyz 200 with the game back")
	c.sendText(`["2","20","game:1","bet",{"amount":5}]`)
	c.expectMessage(ws.OpText, `["2","20","game:1","phx_reply",{"response":{"amount":5},"status":"ok"}]`)
	if n := s.Connections(); n != 1 {
		t.Fatalf("connections = %d, want the one socket throughout", n)
	}
}

// TestReadyzFollowsRedisKill: redis-server is killed, /readyz turns 503
// within a few seconds while the sockets stay connected; it restarts and
// /readyz turns 200 by itself.
func TestReadyzFollowsRedisKill(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	a := redisNode(t, rs.URL(), func(c *Config) { c.RedisTimeout = 300 * time.Millisecond })
	members := []*member{joinMember(t, a, true), joinMember(t, a, false)}
	if code := readyzCode(t, a); code != http.StatusOK {
		t.Fatalf("/readyz = %d before the kill", code)
	}
	rs.Kill()
	waitFor(t, 10*time.Second, func() bool { return readyzCode(t, a) == http.StatusServiceUnavailable }, "/readyz 503 with Redis killed")
	for i, m := range members {
		m.heartbeat(fmt.Sprintf("killed%d", i))
	}
	rs.Restart()
	waitFor(t, 20*time.Second, func() bool { return readyzCode(t, a) == http.StatusOK }, "/readyz 200 with Redis back")
	for i, m := range members {
		m.heartbeat(fmt.Sprintf("back%d", i))
	}
	if n := a.Connections(); n != len(members) {
		t.Fatalf("connections = %d, want %d throughout", n, len(members))
	}
}
