//go:build linux

package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/phxgate/phxgate/backends"
)

// TestWebhookRoute: a route on an https?:// webhook reaches a receiver
// that checks every request's signature (backends.VerifyWebhook): join,
// an action with its reply, leave when the socket goes; a receiver with
// another secret refuses the calls, which the client sees as
// backend_error.
func TestWebhookRoute(t *testing.T) {
	secret := "a-webhook-secret-of-at-least-32-bytes"
	t.Setenv("PHXGATE_TEST_WEBHOOK_SECRET", secret)
	var mu sync.Mutex
	var calls []string
	receiver := func(key string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			if err := backends.VerifyWebhook([]byte(key), r, body, time.Minute); err != nil {
				http.Error(w, "bad signature", http.StatusUnauthorized)
				return
			}
			var req struct {
				Call struct {
					Event   string `json:"event"`
					Payload struct {
						Data json.RawMessage `json:"data"`
					} `json:"payload"`
				} `json:"call"`
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal(body, &req)
			mu.Lock()
			calls = append(calls, r.URL.Path+" "+req.Call.Event+" "+req.Reason)
			mu.Unlock()
			switch r.URL.Path {
			case "/game/join":
				_, _ = io.WriteString(w, `{"reply":{"status":"ok","response":{"data":{"seat":3}}}}`)
			case "/game/handle_in":
				_, _ = io.WriteString(w, `{"reply":{"status":"ok","response":{"data":`+string(req.Call.Payload.Data)+`}}}`)
			default:
				_, _ = io.WriteString(w, `{}`)
			}
		})
	}
	good := httptest.NewServer(receiver(secret))
	t.Cleanup(good.Close)
	wrong := httptest.NewServer(receiver("another-secret-that-is-32-bytes-long!!"))
	t.Cleanup(wrong.Close)

	s := prodServer(t, func(c *Config) {
		c.Routes = []RouteConfig{
			{Topic: "game:*", Backend: good.URL + "/game?secret_env=PHXGATE_TEST_WEBHOOK_SECRET"},
			{Topic: "forged:*", Backend: wrong.URL + "/game?secret_env=PHXGATE_TEST_WEBHOOK_SECRET"},
		}
	})
	c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0")
	if c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", c.status())
	}
	c.sendText(`["1","1","game:1","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["1","1","game:1","phx_reply",{"response":{"seat":3},"status":"ok"}]`)
	c.sendText(`["1","2","game:1","bet",{"amount":5}]`)
	c.expectMessage(ws.OpText, `["1","2","game:1","phx_reply",{"response":{"amount":5},"status":"ok"}]`)
	c.sendText(`["3","3","forged:1","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["3","3","forged:1","phx_reply",{"response":{"reason":"backend_error"},"status":"error"}]`)
	c.conn.Close()
	waitFor(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) == 3
	}, "join, bet and leave at the receiver")
	mu.Lock()
	defer mu.Unlock()
	want := []string{"/game/join phx_join ", "/game/handle_in bet ", "/game/leave phx_leave disconnected"}
	for i, w := range want {
		if calls[i] != w {
			t.Fatalf("receiver got %q, want %q", calls, want)
		}
	}
}
