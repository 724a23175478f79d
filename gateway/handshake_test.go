//go:build linux

package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/phxgate/phxgate/channels"
)

// expectRefusal checks an HTTP refusal: the status, and an empty body as
// Phoenix sends.
func expectRefusal(t *testing.T, c *client, status int) {
	t.Helper()
	if c.resp.StatusCode != status {
		t.Fatalf("status = %d, want %d", c.resp.StatusCode, status)
	}
	body, _ := io.ReadAll(c.resp.Body)
	if len(body) != 0 {
		t.Fatalf("refusal body = %q, want empty", body)
	}
}

func TestVsnNegotiation(t *testing.T) {
	s := startServer(t, nil)
	tests := []struct {
		name   string
		query  string
		status int
		want   channels.Serializer
	}{
		{name: "missing is V1", query: "", status: 101, want: channels.V1},
		{name: "1.0.0", query: "vsn=1.0.0", status: 101, want: channels.V1},
		{name: "1.0.7", query: "vsn=1.0.7", status: 101, want: channels.V1},
		{name: "2.0.0", query: "vsn=2.0.0", status: 101, want: channels.V2},
		{name: "2.0.3", query: "vsn=2.0.3", status: 101, want: channels.V2},
		{name: "2.1.0", query: "vsn=2.1.0", status: 403},
		{name: "3.0.0", query: "vsn=3.0.0", status: 403},
		{name: "abc", query: "vsn=abc", status: 403},
		{name: "array", query: "vsn[]=x", status: 403},
		{name: "two parts", query: "vsn=1.0", status: 403},
		{name: "empty", query: "vsn=", status: 403},
		{name: "leading zero", query: "vsn=02.0.0", status: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := handshake(t, s.Addr(), "/socket/websocket?"+tt.query)
			if tt.status != 101 {
				expectRefusal(t, c, tt.status)
				return
			}
			if c.resp.StatusCode != 101 {
				t.Fatalf("status = %d, want 101", c.resp.StatusCode)
			}
			if got := s.rec.lastInfo().Serializer; got != tt.want {
				t.Errorf("serializer = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestConnectParams(t *testing.T) {
	s := startServer(t, nil)
	tests := []struct {
		name   string
		query  string
		status int
		want   string
	}{
		{name: "phoenix.js nested", query: "token=abc&user%5Bid%5D=1&vsn=2.0.0", status: 101, want: `{"token":"abc","user":{"id":"1"}}`},
		{name: "array", query: "ids%5B0%5D=a&ids%5B1%5D=b&vsn=2.0.0", status: 101, want: `{"ids":["a","b"]}`},
		{name: "none", query: "vsn=2.0.0", status: 101, want: `{}`},
		{name: "bad escape is 400", query: "a=%zz&vsn=2.0.0", status: 400},
		{name: "too deep is 400", query: "a" + strings.Repeat("%5Bx%5D", 20) + "=1", status: 400},
		{name: "connect refused is 403", query: "refuse=1&vsn=2.0.0", status: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := handshake(t, s.Addr(), "/socket/websocket?"+tt.query)
			if tt.status != 101 {
				expectRefusal(t, c, tt.status)
				return
			}
			if c.resp.StatusCode != 101 {
				t.Fatalf("status = %d", c.resp.StatusCode)
			}
			info := s.rec.lastInfo()
			if string(info.Params) != tt.want {
				t.Errorf("params = %s, want %s", info.Params, tt.want)
			}
			if !json.Valid(info.Params) {
				t.Errorf("params not JSON: %s", info.Params)
			}
			if info.RemoteAddr != "127.0.0.1" {
				t.Errorf("remote addr = %q, want 127.0.0.1", info.RemoteAddr)
			}
		})
	}
}

func TestAuthTokenSubprotocol(t *testing.T) {
	s := startServer(t, nil)
	tests := []struct {
		name      string
		header    string
		status    int
		answer    string
		wantToken string
	}{
		{name: "token 1234", header: "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.MTIzNA", status: 101, answer: "phoenix", wantToken: "1234"},
		{name: "jwt-like token", header: "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.ZXlKaGJHY2lPaUpJVXpJMU5pSjkuZS5z", status: 101, answer: "phoenix", wantToken: "eyJhbGciOiJIUzI1NiJ9.e.s"},
		{name: "phoenix only", header: "Sec-WebSocket-Protocol: phoenix", status: 101, answer: "phoenix"},
		{name: "phoenix on a second header line", header: "Sec-WebSocket-Protocol: other\r\nSec-WebSocket-Protocol: phoenix", status: 101, answer: "phoenix"},
		{name: "no protocol header", header: "", status: 101, answer: ""},
		{name: "only foreign protocols", header: "Sec-WebSocket-Protocol: chat, superchat", status: 403},
		{name: "token without phoenix", header: "Sec-WebSocket-Protocol: base64url.bearer.phx.MTIzNA", status: 403},
		{name: "undecodable token", header: "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.!!!", status: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var extra []string
			if tt.header != "" {
				extra = append(extra, tt.header)
			}
			c := handshake(t, s.Addr(), "/socket/websocket?vsn=2.0.0", extra...)
			if tt.status != 101 {
				expectRefusal(t, c, tt.status)
				return
			}
			if c.resp.StatusCode != 101 {
				t.Fatalf("status = %d", c.resp.StatusCode)
			}
			if got := c.resp.Header.Values("Sec-WebSocket-Protocol"); strings.Join(got, ",") != tt.answer {
				t.Errorf("answered protocol %q, want %q", got, tt.answer)
			}
			if got := s.rec.lastInfo().AuthToken; got != tt.wantToken {
				t.Errorf("token = %q, want %q", got, tt.wantToken)
			}
			c.sendText("works")
			c.expectMessage(ws.OpText, "works")
		})
	}
}

func TestNonGetOnSocketPathIs400(t *testing.T) {
	s := startServer(t, nil)
	for _, m := range []string{"POST", "PUT", "HEAD", "DELETE"} {
		t.Run(m, func(t *testing.T) {
			conn := dialRaw(t, s.Addr())
			_, _ = io.WriteString(conn, m+" /socket/websocket HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
			c := readUpgrade(t, conn)
			if c.resp.StatusCode != 400 || c.resp.ContentLength != 0 {
				t.Fatalf("status %d length %d, want 400 with empty body", c.resp.StatusCode, c.resp.ContentLength)
			}
		})
	}
}

func TestMalformedUpgradesAreRefusedWithEmptyBody(t *testing.T) {
	s := startServer(t, nil)
	tests := []struct {
		name string
		req  string
	}{
		{name: "no key", req: "GET /socket/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"},
		{name: "no upgrade", req: "GET /socket/websocket HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "http/1.0", req: "GET /socket/websocket HTTP/1.0\r\nHost: x\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dialRaw(t, s.Addr())
			_, _ = io.WriteString(conn, tt.req)
			c := readUpgrade(t, conn)
			if c.resp.StatusCode < 400 || c.resp.StatusCode > 599 {
				t.Fatalf("status = %d, want 4xx/5xx", c.resp.StatusCode)
			}
			expectRefusal(t, c, c.resp.StatusCode)
		})
	}
}

func TestOversizedRequestHeadIs431(t *testing.T) {
	s := startServer(t, nil)
	conn := dialRaw(t, s.Addr())
	_, _ = io.WriteString(conn, "GET /socket/websocket HTTP/1.1\r\nX-Big: "+strings.Repeat("a", MaxHandshakeBytes)+"\r\n\r\n")
	c := readUpgrade(t, conn)
	expectRefusal(t, c, http.StatusRequestHeaderFieldsTooLarge)
	stillServes(t, s)
}

func TestOtherPathsGoToHTTP(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hi "+r.URL.Query().Get("n")) })
	// With long-poll off, its path is just another path.
	s := startServer(t, func(c *Config) { c.LongPoll.Enabled = false }, WithHTTP(mux))
	resp, err := http.Get("http://" + s.Addr().String() + "/hello?n=there")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hi there" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	resp, err = http.Get("http://" + s.Addr().String() + "/socket/longpoll")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("status = %d, want 404", resp.StatusCode)
	}
	// Default handler: 404 for everything.
	s2 := startServer(t, nil)
	resp, err = http.Get("http://" + s2.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("status = %d, want 404", resp.StatusCode)
	}
}

func TestAdmitSeesTheRequestBeforeTheUpgrade(t *testing.T) {
	seen := make(chan Request, 1)
	var releases atomic.Int32
	admit := func(r *Request) (int, Releaser) {
		seen <- *r
		if r.Origin == "https://evil.example" {
			return http.StatusForbidden, nil
		}
		if r.XForwardedFor == "10.0.0.9" {
			return http.StatusTooManyRequests, nil
		}
		r.Info.PlayerID = "player-1"
		return 0, ReleaseFunc(func() { releases.Add(1) })
	}
	s := startServer(t, nil, WithAdmit(admit))
	tests := []struct {
		name   string
		extra  []string
		status int
	}{
		{name: "admitted", extra: []string{"Origin: https://good.example", "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.MTIzNA"}, status: 101},
		{name: "bad origin", extra: []string{"Origin: https://evil.example"}, status: 403},
		{name: "per-ip cap", extra: []string{"X-Forwarded-For: 10.0.0.9"}, status: 429},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := handshake(t, s.Addr(), "/socket/websocket?token=t&vsn=2.0.0", tt.extra...)
			r := <-seen
			if r.Path != "/socket/websocket" || r.RawQuery != "token=t&vsn=2.0.0" || r.RemoteAddr != "127.0.0.1" {
				t.Errorf("request = %+v", r)
			}
			if string(r.Info.Params) != `{"token":"t"}` || r.Info.Serializer != channels.V2 {
				t.Errorf("info = %+v", r.Info)
			}
			if tt.status != 101 {
				expectRefusal(t, c, tt.status)
				return
			}
			if c.resp.StatusCode != 101 {
				t.Fatalf("status = %d", c.resp.StatusCode)
			}
			if r.Origin != "https://good.example" || r.Info.AuthToken != "1234" {
				t.Errorf("origin %q token %q", r.Origin, r.Info.AuthToken)
			}
			if got := s.rec.lastInfo().PlayerID; got != "player-1" {
				t.Errorf("Connect saw player %q, want the one Admit set", got)
			}
			if releases.Load() != 0 {
				t.Fatal("released while the socket is open")
			}
			c.write(clientFrame(0x88, true, nil, -1))
			c.expectClose(1000)
			waitFor(t, 5*time.Second, func() bool { return releases.Load() == 1 }, "admission released once")
		})
	}
}

func TestAdminEndpoints(t *testing.T) {
	s := startServer(t, nil)
	c := open(t, s.Addr())
	c.sendText("x")
	c.expectMessage(ws.OpText, "x")
	base := "http://" + s.AdminAddr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d", code)
	}
	if code, _ := get("/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ = %d", code)
	}
	waitFor(t, 5*time.Second, func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, "phxgate_gateway_connections 1") && strings.Contains(body, "phxgate_frames_in_total 1")
	}, "metrics to show one connection and one frame")
	_, body := get("/metrics")
	for _, name := range []string{
		"phxgate_gateway_handshakes_total{result=\"ok\"}", "phxgate_frames_out_total", "phxgate_bytes_in_total",
		"phxgate_bytes_out_total", "phxgate_gateway_disconnects_total{reason=\"slow_consumer\"}",
		"phxgate_slow_consumers_total", "phxgate_write_queue_bytes", "go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	s.draining.Store(true)
	defer s.draining.Store(false)
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz while draining = %d, want 503", code)
	}
}

func TestParseSemver(t *testing.T) {
	tests := []struct {
		in           string
		major, minor int
		ok           bool
	}{
		{"2.0.0", 2, 0, true}, {"1.0.12", 1, 0, true}, {"2.0.0-rc.1", 2, 0, true},
		{"1.0", 0, 0, false}, {"x.0.0", 0, 0, false}, {"1..0", 0, 0, false}, {"+1.0.0", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ma, mi, ok := parseSemver(tt.in)
			if !reflect.DeepEqual([]any{ma, mi, ok}, []any{tt.major, tt.minor, tt.ok}) {
				t.Errorf("got %d.%d %v", ma, mi, ok)
			}
		})
	}
}

// TestUpgradeOnKeptAliveHTTPConnection: a client that first fetched a page
// and then upgrades on the same connection gets the same WebSocket.
func TestUpgradeOnKeptAliveHTTPConnection(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/page", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "page") })
	s := startServer(t, nil, WithHTTP(mux))
	conn := dialRaw(t, s.Addr())
	_, _ = io.WriteString(conn, "GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
	c := readUpgrade(t, conn)
	body, _ := io.ReadAll(io.LimitReader(c.resp.Body, 4))
	if c.resp.StatusCode != 200 || string(body) != "page" {
		t.Fatalf("page: %d %q", c.resp.StatusCode, body)
	}
	req := "GET /socket/websocket?vsn=2.0.0&token=k HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: phoenix\r\n\r\n"
	_, _ = conn.Write(append([]byte(req), clientFrame(0x81, true, []byte("pipelined"), -1)...))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Protocol") != "phoenix" {
		t.Fatalf("upgrade: %d %v", resp.StatusCode, resp.Header)
	}
	if got := string(s.rec.lastInfo().Params); got != `{"token":"k"}` {
		t.Errorf("params = %s", got)
	}
	c.expectMessage(ws.OpText, "pipelined")
	c.sendText("again")
	c.expectMessage(ws.OpText, "again")
}
