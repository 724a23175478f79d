package js_test

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// longPollFeaturesConfig is the longpoll-features phase's main gateway
// (longpoll-features/*.test.mjs): tokens required (HS256, per-run secret,
// 1 s leeway so an expiry test is quick), a 1 s long-poll window, the auth
// phase's join and `chat` limits (per player: every test signs for its
// own), room:* for auth and limits, lobby:* with presence. Every client of
// the phase comes from 127.0.0.1, so the per-address limits are raised;
// ip_max_conns is tested on a gateway of its own (longPollCapConfig).
const longPollFeaturesConfig = `# written by clients/js/longpoll_features_test.go (longpoll-features phase)
listen: "%s"
admin_listen: "%s"
api_listen: ""
idle_timeout: 60s
auth:
  required: true
  hs256_secret: "%s"
  leeway: 1s
longpoll:
  enabled: true
  window: 1s
limits:
  joins_per_second: 5
  join_burst: 20
  ip_max_conns: 1000
  ip_handshakes_per_second: 1000
  ip_handshake_burst: 1000
  ip_max_handshakes: 1000
  classes:
    chat: {per_second: 2, burst: 3}
routes:
  - topic: "room:*"
    backend: echo
    history: 100
    rate_limits:
      default_class: default
      events: {chat: chat}
  - topic: "lobby:*"
    backend: echo
    presence: true
`

// longPollCapConfig is the phase's second gateway: anonymous sockets and
// limits.ip_max_conns 3, the limit under test (limits.test.mjs).
const longPollCapConfig = `# written by clients/js/longpoll_features_test.go (longpoll-features phase, ip_max_conns)
listen: "%s"
admin_listen: "%s"
api_listen: ""
idle_timeout: 60s
auth:
  required: false
longpoll:
  enabled: true
  window: 1s
limits:
  ip_max_conns: 3
routes:
  - topic: "room:*"
    backend: echo
`

// runLongPollFeatures is the longpoll-features phase of
// TestConformancePhoenixJS: phoenix.js over LongPoll with presence, auth,
// limits, and longPollFallbackMs behind proxies that refuse or black-hole
// WebSocket upgrades.
func runLongPollFeatures(t *testing.T, bin, node, jsDir string) {
	secret := rand.Text() + rand.Text()
	var admin, capAdmin string
	url, _ := startGateway(t, bin, func(listen, a string) string {
		admin = a
		return fmt.Sprintf(longPollFeaturesConfig, listen, a, secret)
	})
	capURL, _ := startGateway(t, bin, func(listen, a string) string {
		capAdmin = a
		return fmt.Sprintf(longPollCapConfig, listen, a)
	})
	host := strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/socket")
	refuse := wsBlockingProxy(t, host, false)
	hole := wsBlockingProxy(t, host, true)
	runNode(t, node, jsDir, "longpoll-features/",
		"PHXGATE_URL="+url, "PHXGATE_ADMIN=http://"+admin, "PHXGATE_AUTH_SECRET="+secret,
		"PHXGATE_LONGPOLL_WINDOW_MS=1000",
		"PHXGATE_CAP_URL="+capURL, "PHXGATE_CAP_ADMIN=http://"+capAdmin,
		"PHXGATE_REFUSE_URL=ws://"+refuse.addr+"/socket", "PHXGATE_BLACKHOLE_URL=ws://"+hole.addr+"/socket")
	if t.Failed() {
		return
	}
	// The node tests see phoenix.js fall back; this checks the proxies did
	// block WebSocket attempts and carried the long-polls.
	for _, p := range []*blockingProxy{refuse, hole} {
		if p.upgrades.Load() == 0 || p.polls.Load() == 0 {
			t.Errorf("proxy %s (black-hole %v): %d WebSocket upgrades blocked, %d long-poll requests passed; want both > 0",
				p.addr, p.hole, p.upgrades.Load(), p.polls.Load())
		}
	}
}

// blockingProxy stands for a network that blocks WebSockets: it passes
// everything to the gateway except requests for …/websocket, which it
// refuses (HTTP 403, as a filtering proxy does) or, with hole, black-holes
// (the request is read and never answered until the client gives up).
type blockingProxy struct {
	addr     string
	hole     bool
	upgrades atomic.Int64 // WebSocket requests blocked
	polls    atomic.Int64 // long-poll requests passed
}

func wsBlockingProxy(t *testing.T, host string, hole bool) *blockingProxy {
	t.Helper()
	p := &blockingProxy{hole: hole}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(&url.URL{Scheme: "http", Host: host})
		r.Out.Host = host
	}}
	stop := make(chan struct{})
	var held sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/websocket") {
			p.upgrades.Add(1)
			if !hole {
				http.Error(w, "WebSockets are not allowed here", http.StatusForbidden)
				return
			}
			held.Add(1)
			defer held.Done()
			select { // until phoenix.js aborts the attempt, or cleanup
			case <-r.Context().Done():
			case <-stop:
			}
			return
		}
		if strings.HasSuffix(r.URL.Path, "/longpoll") {
			p.polls.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	p.addr = strings.TrimPrefix(srv.URL, "http://")
	// Cleanups run last-in first-out: the held requests are released
	// before srv.Close waits for them.
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		close(stop)
		held.Wait()
	})
	return p
}
