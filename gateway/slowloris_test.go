//go:build linux

package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// silentFrom opens a TCP connection to addr from source address src and
// sends nothing. Its deadline (10 s) makes every read end, so a server that
// never answers fails the test by timing out rather than hanging it.
func silentFrom(tb testing.TB, src string, addr net.Addr) net.Conn {
	tb.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		tb.Fatalf("dial from %s: %v", src, err)
	}
	tb.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// readRefusal reads what the server answers on a silent connection: nil
// when it is the accept-time 429 (empty body, Connection: close) followed
// by the server closing the connection.
func readRefusal(c net.Conn) error {
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("no response: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.ContentLength != 0 || !resp.Close {
		return fmt.Errorf("got %s, Content-Length %d, close %v; want 429, 0, close", resp.Status, resp.ContentLength, resp.Close)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		return fmt.Errorf("after the 429: %q, %v; want EOF", rest, err)
	}
	return nil
}

// TestSlowlorisFromOneAddress: one address opens 300 connections and sends
// nothing, more than the 256 handshake workers. The handshake timeout is
// long (60 s), so without the accept-time cap every worker stays held and
// the test fails by its reads timing out. With it, the connections past
// limits.ip_max_handshakes are answered 429 and closed at once, the rest
// hold only that many workers, and a client from another address upgrades
// and is served.
func TestSlowlorisFromOneAddress(t *testing.T) {
	cfg := testConfig()
	cfg.HandshakeWorkers = DefaultHandshakeWorkers
	cfg.HandshakeTimeout = 60 * time.Second
	cfg.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo"}}
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
	limit := cfg.Limits.IPMaxHandshakes
	const silent = 300
	if silent <= cfg.HandshakeWorkers {
		t.Fatalf("the attack needs more connections (%d) than workers (%d)", silent, cfg.HandshakeWorkers)
	}

	// Every connection is read from its own goroutine: the ones holding a
	// worker get no answer until the test ends.
	results := make(chan error, silent)
	for range silent {
		c := silentFrom(t, "127.0.0.1", s.Addr())
		go func() { results <- readRefusal(c) }()
	}
	for range silent - limit {
		if err := <-results; err != nil {
			t.Fatalf("a silent connection over the cap: %v", err)
		}
	}

	reg := s.Registry()
	if got := counterValue(t, reg, "phxgate_gateway_connect_refused_total", "ip_handshakes"); got != silent-float64(limit) {
		t.Errorf("phxgate_gateway_connect_refused_total{ip_handshakes} = %v, want %d", got, silent-limit)
	}
	if got := counterValue(t, reg, "phxgate_gateway_connect_refused_total", "ip_handshakes"); got != silent-float64(limit) {
		t.Errorf("phxgate_gateway_connect_refused_total{ip_handshakes} = %v, want %d", got, silent-limit)
	}
	waitFor(t, 10*time.Second, func() bool { return s.busy.Load() == int64(limit) },
		fmt.Sprintf("the silent connections to hold %d workers", limit))

	// A real client from another address: upgraded and its heartbeat
	// answered well within its 10 s deadline.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	c := attempt(t, d, s.Addr(), "/socket/websocket?vsn=2.0.0")
	if c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("from 127.0.0.2: status = %d, want 101", c.status())
	}
	c.sendText(`[null,"1","phoenix","heartbeat",{}]`)
	c.expectMessage(ws.OpText, `[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]`)

	// The upgrade gave its slot back; the silent ones still hold exactly
	// the cap, and none of them was answered.
	if n := s.guard.ctl.Handshakes(netip.MustParseAddr("127.0.0.2")); n != 0 {
		t.Errorf("127.0.0.2 has %d handshakes in progress after its upgrade", n)
	}
	waitFor(t, 10*time.Second, func() bool { return s.busy.Load() == int64(limit) },
		fmt.Sprintf("%d workers busy after the upgrade", limit))
	if n := s.guard.ctl.Handshakes(netip.MustParseAddr("127.0.0.1")); n != limit {
		t.Errorf("127.0.0.1 has %d handshakes in progress, want %d", n, limit)
	}
	select {
	case err := <-results:
		t.Fatalf("a connection within the cap was answered: %v", err)
	default:
	}
}

// TestHandshakeCapExemptsTrustedProxies: a trusted proxy carries many
// clients, so its connections are not counted at accept (the client
// behind it is capped once X-Forwarded-For is read); another peer is.
func TestHandshakeCapExemptsTrustedProxies(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.HandshakeTimeout = 60 * time.Second
		c.TrustedProxies = []string{"127.0.0.3"}
		c.Limits.IPMaxHandshakes = 2
	})
	const fromProxy = 5 // within testConfig's 8 workers
	for range fromProxy {
		silentFrom(t, "127.0.0.3", s.Addr())
	}
	waitFor(t, 10*time.Second, func() bool { return s.busy.Load() == fromProxy },
		"every connection of the proxy to hold a worker")
	if n := s.guard.ctl.Handshakes(netip.MustParseAddr("127.0.0.3")); n != 0 {
		t.Fatalf("the trusted proxy has %d handshakes counted, want 0", n)
	}
	// An untrusted peer is capped.
	silentFrom(t, "127.0.0.1", s.Addr())
	silentFrom(t, "127.0.0.1", s.Addr())
	if err := readRefusal(silentFrom(t, "127.0.0.1", s.Addr())); err != nil {
		t.Fatalf("third silent connection from 127.0.0.1: %v", err)
	}
}

// TestHandshakeSlotReleasedEveryWay: with a cap of one handshake in
// progress per address, each way a handshake can end (upgrade, refusal,
// timeout, hand-off to net/http) must give the slot back, or the next
// connection from the same address would be refused with 429.
func TestHandshakeSlotReleasedEveryWay(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.HandshakeTimeout = time.Second
		c.Limits.IPMaxHandshakes = 1
	})
	ip := netip.MustParseAddr("127.0.0.1")
	released := func(what string) {
		t.Helper()
		waitFor(t, 10*time.Second, func() bool { return s.guard.ctl.Handshakes(ip) == 0 }, what+": slot given back")
	}

	// Upgraded (and kept open).
	open(t, s.Addr())
	released("upgrade")

	// Refused before the upgrade (unsupported vsn: 403).
	if c := handshake(t, s.Addr(), "/socket/websocket?vsn=9.0.0"); c.resp.StatusCode != http.StatusForbidden {
		t.Fatalf("bad vsn: status = %d, want 403", c.resp.StatusCode)
	}
	released("refusal")

	// Handed to net/http: released at hand-off, although the kept-alive
	// connection stays open.
	hc := dialRaw(t, s.Addr())
	if _, err := io.WriteString(hc, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(hc), nil)
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("plain HTTP: %v, %v", resp, err)
	}
	resp.Body.Close()
	released("http hand-off")

	// Timed out: the server hangs up after handshake_timeout.
	tc := dialRaw(t, s.Addr())
	if _, err := io.Copy(io.Discard, tc); err != nil {
		t.Fatalf("want EOF from the server, got %v", err)
	}
	released("timeout")

	// And the address is still served.
	stillServes(t, s)
}
