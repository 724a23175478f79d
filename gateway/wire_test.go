//go:build linux

package gateway

import (
	"context"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
)

// TestProductionWiringSpeaksPhoenix runs the real channels server behind
// the gateway: heartbeat, join on an echo route, an echo push, and a
// malformed message closing with 1011.
func TestProductionWiringSpeaksPhoenix(t *testing.T) {
	cfg := testConfig()
	cfg.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo", History: 10}}
	s, err := Start(context.Background(), cfg, WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	c := open(t, s.Addr())
	c.sendText(`[null,"1","phoenix","heartbeat",{}]`)
	c.expectMessage(ws.OpText, `[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
	c.sendText(`["2","2","room:lobby","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["2","2","room:lobby","phx_reply",{"response":{},"status":"ok"}]`)
	c.sendText(`["2","3","room:lobby","echo",{"a":1}]`)
	_, p, err := c.readFrame()
	if err != nil || !strings.HasPrefix(string(p), `["2","3","room:lobby","phx_reply",{"response":`) {
		t.Fatalf("echo reply = %s, %v", p, err)
	}
	c.sendText(`{"not":"an array"}`)
	c.expectClose(1011)
}

func TestStartRejectsUnknownBackendByKey(t *testing.T) {
	cfg := testConfig()
	for _, spec := range []string{"grpc://127.0.0.1:1?timeout=forever", "inproc:missing"} {
		cfg.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo"}, {Topic: "g:*", Backend: spec}}
		s, err := Start(context.Background(), cfg, WithLogger(discardLogger()))
		if err == nil {
			_ = s.Shutdown(context.Background())
		}
		if err == nil || !strings.Contains(err.Error(), "routes[1].backend") {
			t.Fatalf("%s: err = %v, want it to name routes[1].backend", spec, err)
		}
	}
}

// TestConnStructStaysSmall pins the per-connection footprint of the
// transport (the target is ≤ 1.5 KB per idle joined connection in all):
// conn is exactly the 192-byte size class, so one more field costs 16
// bytes.
func TestConnStructStaysSmall(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 192 {
		t.Fatalf("conn is %d bytes; keep it within 192", n)
	}
}
