//go:build linux

package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phxgate/phxgate/backends"
)

// lpAnswer is one long-poll HTTP answer.
type lpAnswer struct {
	code   int // HTTP status
	header http.Header
	raw    string
	body   struct {
		Status   int      `json:"status"`
		Token    *string  `json:"token"`
		Messages []string `json:"messages"`
	}
}

func lpURL(s *Server, query string) string {
	u := "http://" + s.Addr().String() + "/socket/longpoll"
	if query != "" {
		u += "?" + query
	}
	return u
}

// lpDo sends one request; headers are "Key: value" strings.
func lpDo(tb testing.TB, method, u string, body []byte, headers ...string) lpAnswer {
	tb.Helper()
	a, err := lpDoWith(tb, http.DefaultClient, method, u, body, headers...)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, u, err)
	}
	return a
}

// lpDoWith sends one request with c and returns the answer, its JSON body
// decoded; a request that fails is returned as an error.
func lpDoWith(tb testing.TB, c *http.Client, method, u string, body []byte, headers ...string) (lpAnswer, error) {
	tb.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return lpAnswer{}, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := lpAnswer{code: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if len(raw) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &a.body); err != nil {
			tb.Fatalf("%s %s: body %q: %v", method, u, raw, err)
		}
	}
	return a, nil
}

// lpStart starts a session and returns its token.
func lpStart(tb testing.TB, s *Server, query string, headers ...string) string {
	tb.Helper()
	a := lpDo(tb, http.MethodGet, lpURL(s, query), nil, headers...)
	if a.code != 200 || a.body.Status != 410 || a.body.Token == nil {
		tb.Fatalf("new session: HTTP %d %s", a.code, a.raw)
	}
	return *a.body.Token
}

func lpGet(tb testing.TB, s *Server, tok string) lpAnswer {
	tb.Helper()
	return lpDo(tb, http.MethodGet, lpURL(s, "vsn=2.0.0"), nil, "X-Phoenix-Longpoll-Token: "+tok)
}

func lpPost(tb testing.TB, s *Server, tok string, lines ...string) lpAnswer {
	tb.Helper()
	return lpDo(tb, http.MethodPost, lpURL(s, "vsn=2.0.0&token="+url.QueryEscape(tok)), []byte(strings.Join(lines, "\n")), "Content-Type: application/x-ndjson")
}

// lpCollect polls until n messages arrived (or fails).
func lpCollect(tb testing.TB, s *Server, tok string, n int) []string {
	tb.Helper()
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < n {
		if time.Now().After(deadline) {
			tb.Fatalf("got %d of %d messages: %q", len(got), n, got)
		}
		a := lpGet(tb, s, tok)
		switch a.body.Status {
		case 200:
			got = append(got, a.body.Messages...)
		case 204:
		default:
			tb.Fatalf("poll: %s", a.raw)
		}
	}
	return got
}

// lpWaitHeld waits until tok's session holds one poll.
func lpWaitHeld(tb testing.TB, s *Server, tok string) {
	tb.Helper()
	waitFor(tb, 5*time.Second, func() bool {
		ss := s.lp.lookup(tok)
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return len(ss.polls) == 1
	}, "the poll to be held")
}

// configKeyCase is a YAML config and the key its error must name.
type configKeyCase struct{ yaml, key string }

// expectConfigKeyErrors requires each case's YAML to fail parsing or
// validation with an error naming its key.
func expectConfigKeyErrors(tb testing.TB, cases []configKeyCase) {
	tb.Helper()
	for _, tc := range cases {
		cfg, err := ParseYAML([]byte(tc.yaml))
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			tb.Errorf("%q: err = %v, want one naming %s", tc.yaml, err, tc.key)
		}
	}
}

func lpServer(tb testing.TB, window time.Duration, mod func(*Config)) *Server {
	tb.Helper()
	return prodServer(tb, func(c *Config) {
		c.LongPoll.Window = window
		if mod != nil {
			mod(c)
		}
	})
}

func TestLongPollPhoenixSession(t *testing.T) {
	s := lpServer(t, 300*time.Millisecond, nil)
	// A new session: 410, the token, no messages, keys sorted, Phoenix's
	// headers.
	a := lpDo(t, http.MethodGet, lpURL(s, "vsn=2.0.0&"), nil)
	tok := *a.body.Token
	if want := `{"messages":[],"status":410,"token":"` + tok + `"}`; a.raw != want || a.code != 200 {
		t.Fatalf("new session = HTTP %d %s, want 200 %s", a.code, a.raw, want)
	}
	for k, v := range map[string]string{"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"} {
		if got := a.header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	// Join and two pushes in one POST; the replies come in order on the
	// next poll, as JSON strings of V2 frames, the token unchanged.
	p := lpPost(t, s, tok, `["1","1","room:lobby","phx_join",{}]`, `["1","2","room:lobby","echo",{"a":"<&>/é"}]`, `["1","3","room:lobby","shout",{"b":1}]`)
	if p.raw != `{"status":200}` {
		t.Fatalf("POST = %s", p.raw)
	}
	got := lpCollect(t, s, tok, 4)
	want := []string{
		`["1","1","room:lobby","phx_reply",{"response":{},"status":"ok"}]`,
		`["1","2","room:lobby","phx_reply",{"response":{"a":"<&>/é"},"status":"ok"}]`,
		`[null,null,"room:lobby","shout",{"b":1}]`,
		`["1","3","room:lobby","phx_reply",{"response":{},"status":"ok"}]`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("messages:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The raw body passes '<', '&', '/' and non-ASCII through unescaped.
	lpPost(t, s, tok, `["1","4","room:lobby","echo",{"a":"<&>/é"}]`)
	var raw string
	waitFor(t, 5*time.Second, func() bool {
		raw = lpGet(t, s, tok).raw
		return strings.Contains(raw, "phx_reply")
	}, "the echo reply")
	if !strings.Contains(raw, `{\"a\":\"<&>/é\"}`) {
		t.Fatalf("escaped body: %s", raw)
	}
	// Nothing pending: 204 with the token at the window's end.
	if a := lpGet(t, s, tok); a.raw != `{"messages":[],"status":204,"token":"`+tok+`"}` {
		t.Fatalf("idle poll = %s", a.raw)
	}
	// A second session gets another session's broadcasts.
	tok2 := lpStart(t, s, "vsn=2.0.0")
	lpPost(t, s, tok2, `["5","5","room:lobby","phx_join",{}]`)
	lpCollect(t, s, tok2, 1)
	lpPost(t, s, tok, `["1","6","room:lobby","shout",{"c":2}]`)
	if got := lpCollect(t, s, tok2, 1); got[0] != `[null,null,"room:lobby","shout",{"c":2}]` {
		t.Fatalf("broadcast = %q", got)
	}
	// Leave: reply then phx_close.
	lpPost(t, s, tok2, `["5","7","room:lobby","phx_leave",{}]`)
	if got := lpCollect(t, s, tok2, 2); got[1] != `["5","5","room:lobby","phx_close",{}]` {
		t.Fatalf("leave = %q", got)
	}
	// vsn 1.0.0 (and no vsn): V1 objects.
	tok1 := lpStart(t, s, "")
	lpDo(t, http.MethodPost, lpURL(s, "token="+tok1), []byte(`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"9"}`), "Content-Type: application/json")
	if got := lpCollect(t, s, tok1, 1); got[0] != `{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"9","topic":"phoenix"}` {
		t.Fatalf("V1 heartbeat = %q", got)
	}
}

func TestLongPollProbes(t *testing.T) {
	s := lpServer(t, 500*time.Millisecond, func(c *Config) { c.CheckOrigin = []string{"https://good.example"} })
	other := lpServer(t, 500*time.Millisecond, nil)
	reg := s.Registry()
	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"no token GET starts a session", func(t *testing.T) { lpStart(t, s, "vsn=2.0.0") }},
		{"no token POST is 410", func(t *testing.T) {
			if a := lpDo(t, http.MethodPost, lpURL(s, "vsn=2.0.0"), []byte(`["1","1","phoenix","heartbeat",{}]`), "Content-Type: application/x-ndjson"); a.raw != `{"status":410}` || a.code != 200 {
				t.Fatalf("HTTP %d %s", a.code, a.raw)
			}
		}},
		{"forged token", func(t *testing.T) {
			tok := lpStart(t, s, "vsn=2.0.0")
			raw, _ := base64.RawURLEncoding.DecodeString(tok)
			raw[len(raw)-1] ^= 1
			forged := base64.RawURLEncoding.EncodeToString(raw)
			if a := lpGet(t, s, forged); a.body.Status != 410 || *a.body.Token == forged || *a.body.Token == tok {
				t.Fatalf("GET forged = %s", a.raw)
			}
			if a := lpPost(t, s, forged, `[null,"1","phoenix","heartbeat",{}]`); a.raw != `{"status":410}` {
				t.Fatalf("POST forged = %s", a.raw)
			}
			for _, junk := range []string{"", "garbage", strings.Repeat("A", 32), "%00"} {
				if a := lpGet(t, s, junk); a.body.Status != 410 || a.body.Token == nil {
					t.Fatalf("GET %q = %s", junk, a.raw)
				}
			}
		}},
		{"token of another node", func(t *testing.T) {
			tok := lpStart(t, other, "vsn=2.0.0")
			if a := lpGet(t, s, tok); a.body.Status != 410 || *a.body.Token == tok {
				t.Fatalf("GET = %s", a.raw)
			}
		}},
		{"bad vsn", func(t *testing.T) {
			for _, q := range []string{"vsn=3.0.0", "vsn=abc", "vsn[]=x", "vsn=2.1.0"} {
				if a := lpDo(t, http.MethodGet, lpURL(s, q), nil); a.raw != `{"status":403}` || a.code != 200 {
					t.Fatalf("%s: HTTP %d %s", q, a.code, a.raw)
				}
			}
		}},
		{"bad origin", func(t *testing.T) {
			// As Phoenix, the origin is checked first, whatever the method.
			for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodOptions, http.MethodPut} {
				if a := lpDo(t, m, lpURL(s, "vsn=2.0.0"), nil, "Origin: https://evil.example"); a.code != 200 || a.raw != `{"status":403}` {
					t.Fatalf("%s = HTTP %d %s", m, a.code, a.raw)
				}
			}
			if a := lpDo(t, http.MethodGet, lpURL(s, "vsn=2.0.0"), nil, "Origin: https://good.example"); a.body.Status != 410 || a.body.Token == nil {
				t.Fatalf("GET from the allowed origin = %s", a.raw)
			}
		}},
		{"wrong methods", func(t *testing.T) {
			for _, m := range []string{http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead} {
				a := lpDo(t, m, lpURL(s, "vsn=2.0.0"), nil)
				if a.code != 400 || a.raw != "" || a.header.Get("Cache-Control") != "max-age=0, private, must-revalidate" {
					t.Fatalf("%s: HTTP %d %q %v", m, a.code, a.raw, a.header)
				}
			}
		}},
		{"options preflight", func(t *testing.T) {
			a := lpDo(t, http.MethodOptions, lpURL(s, ""), nil, "Access-Control-Request-Headers: x-phoenix-authtoken")
			if a.code != 200 || a.raw != "" || a.header.Get("Access-Control-Allow-Headers") != "x-phoenix-authtoken" ||
				a.header.Get("Access-Control-Allow-Methods") != "get, post, options" || a.header.Get("Access-Control-Max-Age") != "3600" {
				t.Fatalf("HTTP %d %q %v", a.code, a.raw, a.header)
			}
		}},
		{"malformed line ends the session with 408", func(t *testing.T) {
			tok := lpStart(t, s, "vsn=2.0.0")
			if a := lpPost(t, s, tok, `[1,2]`); a.raw != `{"status":408}` {
				t.Fatalf("POST = %s", a.raw)
			}
			if a := lpGet(t, s, tok); a.body.Status != 410 || *a.body.Token == tok {
				t.Fatalf("GET after crash = %s", a.raw)
			}
			if a := lpPost(t, s, tok, `[null,"1","phoenix","heartbeat",{}]`); a.raw != `{"status":410}` {
				t.Fatalf("POST after crash = %s", a.raw)
			}
		}},
		{"bad base64 is a 500, session survives", func(t *testing.T) {
			tok := lpStart(t, s, "vsn=2.0.0")
			if a := lpPost(t, s, tok, `%%%not base64`); a.code != 500 || a.raw != "" {
				t.Fatalf("POST = HTTP %d %s", a.code, a.raw)
			}
			if a := lpPost(t, s, tok, `[null,"1","phoenix","heartbeat",{}]`); a.raw != `{"status":200}` {
				t.Fatalf("POST after = %s", a.raw)
			}
			lpCollect(t, s, tok, 1)
		}},
		{"oversized body is 413, session survives", func(t *testing.T) {
			// A window long enough for the upload, so the session cannot
			// expire meanwhile.
			s := lpServer(t, 10*time.Second, nil)
			tok := lpStart(t, s, "vsn=2.0.0")
			big := bytes.Repeat([]byte("x"), LongPollMaxBodyBytes+1)
			if a := lpDo(t, http.MethodPost, lpURL(s, "token="+tok), big, "Content-Type: application/x-ndjson"); a.code != 413 {
				t.Fatalf("POST = HTTP %d %s", a.code, a.raw)
			}
			if v := counterValue(t, s.Registry(), "phxgate_longpoll_posts_total", "too_large"); v != 1 {
				t.Fatalf("posts{too_large} = %v", v)
			}
			if a := lpPost(t, s, tok, `[null,"1","phoenix","heartbeat",{}]`); a.raw != `{"status":200}` {
				t.Fatalf("POST after = %s", a.raw)
			}
		}},
		{"at most 100 lines", func(t *testing.T) {
			tok := lpStart(t, s, "vsn=2.0.0")
			before := counterValue(t, reg, "phxgate_longpoll_messages_dropped_total", "lines_over_cap")
			var lines []string
			for i := range 105 {
				lines = append(lines, fmt.Sprintf(`[null,"%d","phoenix","heartbeat",{}]`, i))
			}
			if a := lpPost(t, s, tok, lines...); a.raw != `{"status":200}` {
				t.Fatalf("POST = %s", a.raw)
			}
			got := lpCollect(t, s, tok, 100)
			if a := lpGet(t, s, tok); a.body.Status != 204 || len(got) != 100 || !strings.Contains(got[99], `"99"`) {
				t.Fatalf("got %d replies then %s", len(got), a.raw)
			}
			if d := counterValue(t, reg, "phxgate_longpoll_messages_dropped_total", "lines_over_cap") - before; d != 5 {
				t.Fatalf("dropped lines = %v, want 5", d)
			}
		}},
		{"a closed session", func(t *testing.T) {
			tok := lpStart(t, s, "vsn=2.0.0")
			waitFor(t, 5*time.Second, func() bool {
				return lpPost(t, s, tok, `[null,"1","phoenix","heartbeat",{}]`).raw == `{"status":410}`
			}, "the unpolled session to expire")
			if a := lpGet(t, s, tok); a.body.Status != 410 || *a.body.Token == tok {
				t.Fatalf("GET = %s", a.raw)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, tc.run)
	}
}

// TestLongPollTransport drives sessions with the recording test handler:
// binary output, a kick, token-less auth refusal, drain.
func TestLongPollTransport(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 5 * time.Second })
	reg := ts.Registry()
	tok := lpStart(t, ts.Server, "vsn=2.0.0&x=1")
	if p := string(ts.rec.lastInfo().Params); p != `{"x":"1"}` {
		t.Fatalf("connect params = %s", p)
	}
	// A binary frame cannot be delivered: dropped, counted; the session
	// goes on and the next text frame arrives.
	lpPost(t, ts.Server, tok, base64.StdEncoding.EncodeToString([]byte{0, 1, 2}), `["hello"]`)
	if got := lpCollect(t, ts.Server, tok, 1); got[0] != `["hello"]` {
		t.Fatalf("got %q", got)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_messages_dropped_total", "binary"); v != 1 {
		t.Fatalf("binary dropped = %v", v)
	}
	// A held poll is answered at once when output arrives.
	done := make(chan lpAnswer, 1)
	go func() { done <- lpGet(t, ts.Server, tok) }()
	lpWaitHeld(t, ts.Server, tok)
	lpPost(t, ts.Server, tok, `["late"]`)
	if a := <-done; a.body.Status != 200 || a.body.Messages[0] != `["late"]` {
		t.Fatalf("held poll = %s", a.raw)
	}
	// Drain: a held poll (nothing is buffered: a message wakes it at once)
	// is answered 204 at once, the handler is told. Drain with messages
	// buffered: TestLongPollDrainWithBuffer.
	go func() { done <- lpGet(t, ts.Server, tok) }()
	lpWaitHeld(t, ts.Server, tok)
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-done; a.body.Status != 204 {
		t.Fatalf("held poll at drain = %s", a.raw)
	}
	if got := ts.rec.terminations(); len(got) != 1 || got[0] != backends.LeaveDrained {
		t.Fatalf("terminations = %v", got)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_sessions_closed_total", "drain"); v != 1 {
		t.Fatalf("closed{drain} = %v", v)
	}
}

func TestLongPollAuth(t *testing.T) {
	s := lpServer(t, 300*time.Millisecond, func(c *Config) {
		c.Auth.Required = true
		c.Limits.PlayerMaxConns = 2
	})
	if a := lpDo(t, http.MethodGet, lpURL(s, "vsn=2.0.0"), nil); a.raw != `{"status":403}` {
		t.Fatalf("no token = %s", a.raw)
	}
	jwt := hsToken(t, claims("alice"))
	// The token as a connect param, then as phoenix.js authToken (header).
	tok := lpStart(t, s, "token="+jwt+"&vsn=2.0.0")
	lpStart(t, s, "vsn=2.0.0", "X-Phoenix-AuthToken: "+jwt)
	// player_max_conns counts sessions.
	if a := lpDo(t, http.MethodGet, lpURL(s, "vsn=2.0.0"), nil, "X-Phoenix-AuthToken: "+jwt); a.raw != `{"status":403}` {
		t.Fatalf("third session = %s", a.raw)
	}
	if v := counterValue(t, s.Registry(), "phxgate_gateway_connect_refused_total", "player_conn_limit"); v != 1 {
		t.Fatalf("player_conn_limit = %v", v)
	}
	// phoenix.js ≤1.8.16 sends the session token as ?token= after its own
	// params: the last one is the session's.
	if a := lpDo(t, http.MethodPost, lpURL(s, "token="+jwt+"&vsn=2.0.0&token="+tok), []byte(`[null,"1","phoenix","heartbeat",{}]`), "Content-Type: application/x-ndjson"); a.raw != `{"status":200}` {
		t.Fatalf("POST = %s", a.raw)
	}
	if a := lpDo(t, http.MethodGet, lpURL(s, "token="+jwt+"&vsn=2.0.0&token="+tok), nil); a.body.Status != 200 || *a.body.Token != tok {
		t.Fatalf("GET = %s", a.raw)
	}
	// A bad token is refused like a WebSocket connect.
	if a := lpDo(t, http.MethodGet, lpURL(s, "token=nope&vsn=2.0.0"), nil); a.raw != `{"status":403}` {
		t.Fatalf("bad token = %s", a.raw)
	}
}

func TestLongPollManySessionsFromOneAddress(t *testing.T) {
	s := lpServer(t, 5*time.Second, func(c *Config) { c.Limits.IPMaxConns = 50 })
	reg := s.Registry()
	ok, refused := 0, 0
	for range 2000 {
		a := lpDo(t, http.MethodGet, lpURL(s, "vsn=2.0.0"), nil)
		switch a.raw {
		case `{"status":403}`:
			refused++
		default:
			if a.body.Status != 410 {
				t.Fatalf("session = %s", a.raw)
			}
			ok++
		}
	}
	if ok != 50 || refused != 1950 {
		t.Fatalf("ok %d refused %d, want 50 and 1950", ok, refused)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_sessions_refused_total", "admission"); v != 1950 {
		t.Fatalf("refused{admission} = %v", v)
	}
	if v := counterValue(t, reg, "phxgate_gateway_connect_refused_total", "ip_conn_limit"); v != 1950 {
		t.Fatalf("connect_refused{ip_conn_limit} = %v", v)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_sessions", ""); v != 50 {
		t.Fatalf("sessions = %v", v)
	}
}

func TestLongPollNeverPolledExpires(t *testing.T) {
	s := lpServer(t, time.Second, func(c *Config) { c.Limits.IPMaxConns = 5 })
	reg := s.Registry()
	for range 5 {
		lpStart(t, s, "vsn=2.0.0")
	}
	if a := lpDo(t, http.MethodGet, lpURL(s, "vsn=2.0.0"), nil); a.raw != `{"status":403}` {
		t.Fatalf("6th = %s", a.raw)
	}
	// Never polled, they expire after 1.5 windows and give their
	// admission slots back.
	waitFor(t, 10*time.Second, func() bool {
		return counterValue(t, reg, "phxgate_longpoll_sessions", "") == 0
	}, "the sessions to expire")
	if v := counterValue(t, reg, "phxgate_longpoll_sessions_closed_total", "expired"); v != 5 {
		t.Fatalf("closed{expired} = %v", v)
	}
	lpStart(t, s, "vsn=2.0.0")
}

func TestLongPollMaxSessions(t *testing.T) {
	s := lpServer(t, time.Second, func(c *Config) { c.LongPoll.MaxSessions = 3 })
	for range 3 {
		lpStart(t, s, "vsn=2.0.0")
	}
	if a := lpDo(t, http.MethodGet, lpURL(s, "vsn=2.0.0"), nil); a.raw != `{"status":403}` {
		t.Fatalf("4th = %s", a.raw)
	}
	if v := counterValue(t, s.Registry(), "phxgate_longpoll_sessions_refused_total", "max_sessions"); v != 1 {
		t.Fatalf("refused{max_sessions} = %v", v)
	}
}

func TestLongPollPollFlood(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 3 * time.Second })
	reg := ts.Registry()
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	const n = 20
	var wg sync.WaitGroup
	answers := make(chan lpAnswer, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers <- lpGet(t, ts.Server, tok)
		}()
	}
	// Past the held cap the oldest polls are answered at once.
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, reg, "phxgate_longpoll_polls_total", "superseded") == n-longPollMaxHeldPolls
	}, "the superseded polls")
	ss := ts.lp.lookup(tok)
	ss.mu.Lock()
	held := len(ss.polls)
	ss.mu.Unlock()
	if held != longPollMaxHeldPolls {
		t.Fatalf("held polls = %d", held)
	}
	lpPost(t, ts.Server, tok, `["x"]`)
	wg.Wait()
	close(answers)
	withMsg := 0
	for a := range answers {
		if a.body.Status == 200 {
			withMsg++
		}
	}
	if withMsg != 1 {
		t.Fatalf("%d polls got the message, want 1", withMsg)
	}
}

func TestLongPollBacklogBound(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.LongPoll.Window = 5 * time.Second
		c.LongPoll.MaxBufferBytes = 4096
	})
	reg := ts.Registry()
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	line := `["` + strings.Repeat("y", 500) + `"]`
	var lines []string
	for range 20 {
		lines = append(lines, line)
	}
	// The session ends without a crash: the POST is answered 200 at once.
	if a, err := lpDoBounded(t, http.MethodPost, lpURL(ts.Server, "token="+url.QueryEscape(tok)), []byte(strings.Join(lines, "\n")), "Content-Type: application/x-ndjson"); err != nil || a.raw != `{"status":200}` {
		t.Fatalf("POST past the buffer = HTTP %d %s, %v", a.code, a.raw, err)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_sessions_closed_total", "slow_consumer"); v != 1 {
		t.Fatalf("closed{slow_consumer} = %v", v)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_messages_dropped_total", "buffer_overflow"); v < 7 {
		t.Fatalf("dropped{buffer_overflow} = %v", v)
	}
	if a := lpGet(t, ts.Server, tok); a.body.Status != 410 || *a.body.Token == tok {
		t.Fatalf("poll after overflow = %s", a.raw)
	}
	waitFor(t, 5*time.Second, func() bool { return len(ts.rec.terminations()) == 1 }, "Terminate")
}

func TestLongPollKickAndPanic(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = time.Second })
	// As Phoenix: a handler that stops the session (kick) acks the POST
	// (200); only a crash leaves it unacked (408 at the window's end).
	for _, tc := range []struct{ cmd, answer string }{{"kick", `{"status":200}`}, {"panic", `{"status":408}`}, {"malformed", `{"status":408}`}} {
		cmd := tc.cmd
		tok := lpStart(t, ts.Server, "vsn=2.0.0")
		if a := lpDo(t, http.MethodPost, lpURL(ts.Server, "token="+tok), []byte(cmd), "Content-Type: text/plain"); a.raw != tc.answer {
			t.Fatalf("%s: POST = %s, want %s", cmd, a.raw, tc.answer)
		}
		if a := lpGet(t, ts.Server, tok); a.body.Status != 410 || *a.body.Token == tok {
			t.Fatalf("%s: poll = %s", cmd, a.raw)
		}
	}
	// Each session was told once, with its reason (the sessions the polls
	// started expire later).
	waitFor(t, 5*time.Second, func() bool {
		kicked, disc := 0, 0
		for _, r := range ts.rec.terminations() {
			switch r {
			case backends.LeaveKicked:
				kicked++
			case backends.LeaveDisconnected:
				disc++
			}
		}
		return kicked == 1 && disc == 2
	}, "the three Terminates")
}

func TestLongPollConfig(t *testing.T) {
	expectConfigKeyErrors(t, []configKeyCase{
		{"longpoll:\n  window: 0s\n", "longpoll.window"},
		{"longpoll:\n  window: 30s\n", "longpoll.window"},
		{"longpoll:\n  max_buffer_bytes: 0\n", "longpoll.max_buffer_bytes"},
		{"longpoll:\n  max_sessions: -1\n", "longpoll.max_sessions"},
	})
	cfg, err := ParseYAML([]byte("longpoll:\n  enabled: false\n  window: 2s\n"))
	if err != nil || cfg.LongPoll.Enabled || cfg.LongPoll.Window != 2*time.Second {
		t.Fatalf("cfg = %+v, %v", cfg.LongPoll, err)
	}
	// Disabled: the path is not served.
	s := lpServer(t, time.Second, func(c *Config) { c.LongPoll.Enabled = false })
	if a := lpDo(t, http.MethodGet, lpURL(s, ""), nil); a.code != 404 {
		t.Fatalf("disabled = HTTP %d", a.code)
	}
	// Nor are its metrics.
	mfs, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "phxgate_longpoll_") {
			t.Fatalf("disabled long-poll serves %s", mf.GetName())
		}
	}
}
