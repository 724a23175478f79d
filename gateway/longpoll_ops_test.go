//go:build linux

package gateway

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels"
)

// /stats shows long-poll sessions and counts them as connections, next
// to the sockets.
func TestLongPollStats(t *testing.T) {
	s := lpServer(t, 5*time.Second, nil)
	rawSocket(t, s, "", "room:a")
	for range 2 {
		lpStart(t, s, "vsn=2.0.0")
	}
	var st struct {
		Connections int               `json:"connections"`
		Sockets     int               `json:"sockets"`
		LongPoll    *longPollStatsDoc `json:"longpoll"`
	}
	resp, err := http.Get("http://" + s.AdminAddr().String() + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Connections != 3 || st.Sockets != 1 || st.LongPoll == nil || st.LongPoll.Sessions != 2 || st.LongPoll.MaxSessions != DefaultLongPollMaxSessions {
		t.Fatalf("stats: %+v longpoll %+v", st, st.LongPoll)
	}
}

// rawLPPost sends a POST's headers and the first part of its body, and
// returns the connection: the server holds a reading slot until the rest
// comes (or the read deadline passes).
func rawLPPost(tb testing.TB, s *Server, tok, body string, sent int) net.Conn {
	tb.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST /socket/longpoll?vsn=2.0.0&token=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n%s", url.QueryEscape(tok), len(body), body[:sent])
	return c
}

// finishRawLPPost sends the rest of a POST begun by rawLPPost and
// requires its 200.
func finishRawLPPost(tb testing.TB, c net.Conn, rest string) {
	tb.Helper()
	if _, err := c.Write([]byte(rest)); err != nil {
		tb.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		tb.Fatalf("POST begun raw = HTTP %d", resp.StatusCode)
	}
}

// lpLargeBody is a POST body over LongPollSmallPostBytes that dispatches
// 100 heartbeats: the 101st line, past the batch cap, is never dispatched.
func lpLargeBody() string {
	return strings.Repeat(`[null,"1","phoenix","heartbeat",{}]`+"\n", LongPollMaxBatch) + strings.Repeat("x", LongPollSmallPostBytes)
}

// A node-wide cap on large POST bodies being read at once: a POST that
// finds no slot within a window is answered 503 before its body is read; a
// slot freed lets the next one through. A small POST needs no slot.
func TestLongPollMaxReadingPosts(t *testing.T) {
	s := lpServer(t, 2*time.Second, func(c *Config) { c.LongPoll.MaxReadingPosts = 1 })
	reg := s.Registry()
	slow, other := lpStart(t, s, "vsn=2.0.0"), lpStart(t, s, "vsn=2.0.0")
	// Polled once, they live 1.5 windows without a poll: past the window
	// the refused POST waits.
	for _, tok := range []string{slow, other} {
		lpPost(t, s, tok, `[null,"1","phoenix","heartbeat",{}]`)
		lpCollect(t, s, tok, 1)
	}
	body := lpLargeBody()
	c := rawLPPost(t, s, slow, body, 10)
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, reg, "phxgate_longpoll_posts_reading", "") == 1
	}, "the slow POST to hold the slot")
	a := lpDo(t, http.MethodPost, lpURL(s, "vsn=2.0.0&token="+url.QueryEscape(other)), []byte(body), "Content-Type: application/x-ndjson")
	if a.code != http.StatusServiceUnavailable || a.header.Get("Retry-After") != "1" {
		t.Fatalf("POST without a slot = HTTP %d %v %s", a.code, a.header, a.raw)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_posts_total", lpPostBusy); v != 1 {
		t.Fatalf("posts{busy} = %v", v)
	}
	if a := lpPost(t, s, other, `[null,"1","phoenix","heartbeat",{}]`); a.raw != `{"status":200}` {
		t.Fatalf("small POST while the slot is held = HTTP %d %s", a.code, a.raw)
	}
	// The slow body completes: its POST is answered, the slot is free.
	finishRawLPPost(t, c, body[10:])
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, reg, "phxgate_longpoll_posts_reading", "") == 0
	}, "the slot released")
	if a := lpDo(t, http.MethodPost, lpURL(s, "vsn=2.0.0&token="+url.QueryEscape(other)), []byte(body), "Content-Type: application/x-ndjson"); a.raw != `{"status":200}` {
		t.Fatalf("POST after the slot freed = HTTP %d %s", a.code, a.raw)
	}
	if len(s.lp.reading) != 0 || len(s.lp.addrPosts) != 0 {
		t.Fatalf("%d slots (%d addresses) held after every POST was answered", len(s.lp.reading), len(s.lp.addrPosts))
	}
}

func TestLongPollMaxReadingPostsConfig(t *testing.T) {
	if c := NewConfig(); c.LongPoll.MaxReadingPosts != DefaultLongPollMaxReadingPosts {
		t.Fatalf("default max_reading_posts = %d", c.LongPoll.MaxReadingPosts)
	}
	if c := NewConfig(); c.LongPoll.IPMaxReadingPosts != DefaultLongPollIPMaxReadingPosts {
		t.Fatalf("default ip_max_reading_posts = %d", c.LongPoll.IPMaxReadingPosts)
	}
	expectConfigKeyErrors(t, []configKeyCase{
		{"longpoll:\n  max_reading_posts: 0\n", "longpoll.max_reading_posts"},
		{"longpoll:\n  max_reading_posts: 100001\n", "longpoll.max_reading_posts"},
		{"longpoll:\n  ip_max_reading_posts: 0\n", "longpoll.ip_max_reading_posts"},
		{"longpoll:\n  ip_max_reading_posts: 100001\n", "longpoll.ip_max_reading_posts"},
	})
	cfg, err := ParseYAML([]byte("longpoll:\n  max_reading_posts: 7\n  ip_max_reading_posts: 3\n"))
	if err != nil || cfg.LongPoll.MaxReadingPosts != 7 || cfg.LongPoll.IPMaxReadingPosts != 3 {
		t.Fatalf("max_reading_posts: 7, ip_max_reading_posts: 3 → %d, %d, %v", cfg.LongPoll.MaxReadingPosts, cfg.LongPoll.IPMaxReadingPosts, err)
	}
}

// FuzzLongPollToken: the session-token parsers take any string without a
// panic; only a token this node signed verifies, and it verifies to its
// id; stripping session tokens from a query never grows it.
func FuzzLongPollToken(f *testing.F) {
	lp := &longPoll{}
	copy(lp.key[:], "fuzz key of thirty-two bytes ...")
	copy(lp.bootID[:], "bootboot")
	good := lp.sign(42)
	for _, seed := range []string{"", good, good[:len(good)-1], good + "A", strings.Repeat("A", lpTokenEncLength),
		strings.Repeat("=", lpTokenEncLength), "a.b.c", "token=" + good + "&vsn=2.0.0", "token=&token=x&vsn=2.0.0",
		"token=%zz&token", "&&&token==" + good, "vsn=2.0.0&token=" + url.QueryEscape(good) + "&token=jwt.jwt.jwt"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if id, ok := lp.verify(s); ok && lp.sign(id) != s {
			t.Fatalf("verify(%q) = %d, but that id signs as %q", s, id, lp.sign(id))
		}
		if _, ok := lp.verify(s); ok && s != good {
			t.Fatalf("a token this node never signed verifies: %q", s)
		}
		_ = looksLikeToken(s)
		q := stripSessionToken(s)
		if len(q) > len(s) {
			t.Fatalf("stripSessionToken(%q) = %q grew", s, q)
		}
		for pair := range strings.SplitSeq(q, "&") {
			if k, v, _ := strings.Cut(pair, "="); k == lpTokenParam {
				if uv, err := url.QueryUnescape(v); err == nil && looksLikeToken(uv) {
					t.Fatalf("stripSessionToken(%q) kept the session token pair %q", s, pair)
				}
			}
		}
		r := &http.Request{Header: http.Header{}, URL: &url.URL{RawQuery: s}}
		if got := sessionToken(r); len(got) > len(s) {
			t.Fatalf("sessionToken from query %q = %q", s, got)
		}
		r.Header.Set(lpTokenHeader, s)
		if s != "" && sessionToken(r) != s {
			t.Fatalf("the header token is not preferred: %q", sessionToken(r))
		}
	})
}

// FuzzLongPollLines: the ndjson splitter and the base64 line decoder take
// any body without a panic, within bounded memory: at most
// LongPollMaxBatch lines, each a slice of the body (never a copy) holding
// no newline, every line accounted for, a decoded line at most 3/4 of its
// length.
func FuzzLongPollLines(f *testing.F) {
	for _, seed := range []string{"", "\n", "\r\n", "a\r", `["1","1","t","e",{}]`, "AAEC\nAAEC\r\n[1]",
		strings.Repeat("\n", 250), strings.Repeat("x\r\n", 150), "====\n!!!!\nAA==\nAA", base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 3, 4})} {
		f.Add([]byte(seed), true)
	}
	f.Add([]byte("a\nb"), false)
	f.Fuzz(func(t *testing.T, body []byte, ndjson bool) {
		lines, over := lpBatch(body, ndjson)
		if len(lines) == 0 || len(lines) > LongPollMaxBatch || cap(lines) > LongPollMaxBatch {
			t.Fatalf("%d lines (cap %d)", len(lines), cap(lines))
		}
		if !ndjson {
			if over != 0 || len(lines) != 1 || !bytes.Equal(lines[0], body) {
				t.Fatalf("non-ndjson body split: %q", lines)
			}
			return
		}
		if want := bytes.Count(body, []byte{'\n'}) + 1; len(lines)+over != want {
			t.Fatalf("%d lines + %d over, want %d in all", len(lines), over, want)
		}
		total := 0
		for _, l := range lines {
			total += len(l)
			if bytes.IndexByte(l, '\n') >= 0 {
				t.Fatalf("line %q holds a newline", l)
			}
			// A sub-slice body[i:j] has cap cap(body)-i.
			if i := cap(body) - cap(l); len(l) > 0 && (i < 0 || i >= len(body) || &body[i] != &l[0]) {
				t.Fatalf("line %q is not a slice of the body", l)
			}
			if len(l) > 0 && l[0] == '[' {
				continue
			}
			bin, err := lpDecodeLine(l)
			if err == nil && (len(bin) > len(l)*3/4 || cap(bin) > len(l)*3/4+3) {
				t.Fatalf("line of %d bytes decoded to %d (cap %d)", len(l), len(bin), cap(bin))
			}
		}
		if total > len(body) {
			t.Fatalf("lines hold %d bytes of a %d-byte body", total, len(body))
		}
	})
}

// A body of nothing but newlines costs LongPollMaxBatch slice headers, not
// one per newline.
func TestLongPollBatchOfNewlinesIsBounded(t *testing.T) {
	body := bytes.Repeat([]byte{'\n'}, 1<<20)
	allocs := testing.AllocsPerRun(10, func() {
		lines, over := lpBatch(body, true)
		if len(lines) != LongPollMaxBatch || over != 1<<20+1-LongPollMaxBatch {
			t.Fatalf("%d lines, %d over", len(lines), over)
		}
	})
	if allocs > 1 {
		t.Fatalf("%v allocations per batch, want 1", allocs)
	}
}

// TestLongPollIdleSessionMemory reports the heap an idle long-poll session
// costs with 2,000 of them on a node with the real protocol layer: first
// sessions between polls (what the session table and the protocol layer
// keep), then each with one poll held over a raw TCP connection (plus the
// HTTP server's connection, goroutine and buffers; goroutine stacks are
// counted with the heap). The client side of the
// held polls (a net.Conn each) is in the same heap and counted too. The
// bounds only catch a gross regression; the figures are in the README.
func TestLongPollIdleSessionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 sessions: not in -short mode")
	}
	const n = 2000
	s := prodServer(t, func(c *Config) {
		c.LongPoll.Window = MaxLongPollWindow // nothing expires while measuring
		c.LongPoll.MaxSessions = n + 1
		c.Limits.IPMaxConns = n + 1
		c.Limits.IPHandshakeBurst = n + 1
		c.Limits.IPHandshakesPerSecond = 1e6
	})
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc + ms.StackInuse // a held poll is a goroutine
	}
	// Warm up the HTTP server and the client transport.
	lpStart(t, s, "vsn=2.0.0")
	http.DefaultClient.CloseIdleConnections()
	base := heap()
	toks := make([]string, n)
	for i := range toks {
		toks[i] = lpStart(t, s, "vsn=2.0.0")
	}
	http.DefaultClient.CloseIdleConnections()
	idle := heap()
	perIdle := float64(int64(idle)-int64(base)) / n
	conns := make([]net.Conn, n)
	for i, tok := range toks {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /socket/longpoll?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nX-Phoenix-Longpoll-Token: %s\r\n\r\n", tok)
	}
	waitFor(t, 30*time.Second, func() bool {
		held := 0
		s.lp.mu.Lock()
		all := make([]*lpSession, 0, len(s.lp.sessions))
		for _, ss := range s.lp.sessions {
			all = append(all, ss)
		}
		s.lp.mu.Unlock()
		for _, ss := range all {
			ss.mu.Lock()
			held += len(ss.polls)
			ss.mu.Unlock()
		}
		return held == n
	}, "every poll held")
	polled := heap()
	perHeld := float64(int64(polled)-int64(base)) / n
	t.Logf("idle long-poll session: %.0f B between polls, %.0f B with a poll held (heap + stacks, %d sessions)", perIdle, perHeld, n)
	if perIdle <= 0 || perIdle > 16<<10 || perHeld > 128<<10 {
		t.Fatalf("bytes per session: %.0f between polls, %.0f with a poll held", perIdle, perHeld)
	}
	runtime.KeepAlive(conns)
}

// lpClient bounds a test request, so that a POST the server would hold
// forever fails the test instead of hanging it.
var lpClient = &http.Client{Timeout: 5 * time.Second}

func lpDoBounded(tb testing.TB, method, u string, body []byte, headers ...string) (lpAnswer, error) {
	tb.Helper()
	return lpDoWith(tb, lpClient, method, u, body, headers...)
}

// One address cannot take the node's POST slots with slow bodies: past
// longpoll.ip_max_reading_posts its large POSTs are refused at once, and a
// small POST (an honest phoenix.js batch) needs no node slot at all.
func TestLongPollSlowPostsFromOneAddress(t *testing.T) {
	s := lpServer(t, 2*time.Second, func(c *Config) { c.LongPoll.MaxReadingPosts = 4 })
	reg := s.Registry()
	const slow = 8
	big := "[" + strings.Repeat(" ", 100<<10) + "]" // over the small-body bound
	for range slow {
		rawLPPost(t, s, lpStart(t, s, "vsn=2.0.0"), big, 1)
	}
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, reg, "phxgate_longpoll_posts_reading", "") == DefaultLongPollIPMaxReadingPosts &&
			counterValue(t, reg, "phxgate_longpoll_posts_total", "address_busy") == slow-DefaultLongPollIPMaxReadingPosts
	}, "the address's slots taken and the rest of its large POSTs refused")
	honest := lpStart(t, s, "vsn=2.0.0")
	a, err := lpDoBounded(t, http.MethodPost, lpURL(s, "vsn=2.0.0&token="+url.QueryEscape(honest)), []byte(`[null,"1","phoenix","heartbeat",{}]`), "Content-Type: application/x-ndjson")
	if err != nil || a.raw != `{"status":200}` {
		t.Fatalf("honest POST while the address holds its slots = HTTP %d %s, %v", a.code, a.raw, err)
	}
	lpCollect(t, s, honest, 1)
}

// A POST body that trickles in is cut at the handshake timeout, not held
// for a window on top of it.
func TestLongPollSlowPostBodyDeadline(t *testing.T) {
	s := lpServer(t, MaxLongPollWindow, func(c *Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	reg := s.Registry()
	tok := lpStart(t, s, "vsn=2.0.0")
	rawLPPost(t, s, tok, `[null,"1","phoenix","heartbeat",{}]`, 3)
	waitFor(t, 10*time.Second, func() bool {
		return counterValue(t, reg, "phxgate_longpoll_posts_total", lpPostBadBody) == 1
	}, "the trickling POST to be cut")
}

// A base64 line whose decoded size is over max_message_size is refused
// before it is decoded, and a body of known length is read into one
// buffer of that length: an 8 MB POST allocates about 8 MB.
func TestLongPollBigBase64LineMemory(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 2 * time.Second })
	reg := ts.Registry()
	max := ts.cfg.MaxMessageSize
	// Exactly max_message_size decoded (with padding): dispatched.
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	exact := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, max))
	if !strings.HasSuffix(exact, "=") {
		t.Fatalf("max_message_size %d gives no padding", max)
	}
	if a := lpPost(t, ts.Server, tok, exact); a.raw != `{"status":200}` {
		t.Fatalf("POST of a %d-byte binary line = %s", max, a.raw)
	}
	// One more byte: the session ends (too big), like a WebSocket 1009.
	over := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, max+1))
	if a := lpPost(t, ts.Server, tok, over); a.raw != `{"status":408}` {
		t.Fatalf("POST of a %d-byte binary line = %s", max+1, a.raw)
	}
	// 8 MB of base64 in one line.
	tok = lpStart(t, ts.Server, "vsn=2.0.0")
	body := bytes.Repeat([]byte("A"), LongPollMaxBodyBytes-4)
	u := lpURL(ts.Server, "vsn=2.0.0&token="+url.QueryEscape(tok))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	a := lpDo(t, http.MethodPost, u, body, "Content-Type: application/x-ndjson")
	runtime.ReadMemStats(&after)
	if a.raw != `{"status":408}` {
		t.Fatalf("POST of an 8 MB line = HTTP %d %s", a.code, a.raw)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_sessions_closed_total", string(channels.ReasonTooBig)); v != 2 {
		t.Fatalf("closed{message_too_big} = %v", v)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("an %d-byte POST allocated %d bytes", len(body), alloc)
	if alloc > uint64(len(body))*3/2 {
		t.Fatalf("an %d-byte POST allocated %d bytes", len(body), alloc)
	}
}

type countRelease struct{ n atomic.Int32 }

func (c *countRelease) Release() { c.n.Add(1) }

// A connect still running when drain ends its session: a refused connect
// releases the admission slot once and leaves the session counters at 0;
// an accepted one is told drained and the GET gets the draining answer.
func TestLongPollConnectRacingDrain(t *testing.T) {
	for _, refuse := range []bool{true, false} {
		t.Run(fmt.Sprintf("refused=%v", refuse), func(t *testing.T) {
			entered, proceed := make(chan struct{}), make(chan struct{})
			rel := &countRelease{}
			rec := &recorder{}
			connect := func(c channels.Conn, info channels.ConnectInfo) (SocketHandler, error) {
				close(entered)
				<-proceed
				if refuse {
					return nil, ErrRefused
				}
				return &echoHandler{c: c, info: info, rec: rec}, nil
			}
			ts := startServer(t, func(c *Config) { c.LongPoll.Window = 5 * time.Second },
				WithConnect(connect), WithAdmit(func(*Request) (int, Releaser) { return 0, rel }))
			answer := make(chan lpAnswer, 1)
			go func() { answer <- lpDo(t, http.MethodGet, lpURL(ts.Server, "vsn=2.0.0"), nil) }()
			<-entered
			ts.lp.drain()
			close(proceed)
			a := <-answer
			if refuse && a.raw != `{"status":403}` {
				t.Fatalf("GET = HTTP %d %s", a.code, a.raw)
			}
			if !refuse && a.code != http.StatusServiceUnavailable {
				t.Fatalf("GET = HTTP %d %s", a.code, a.raw)
			}
			ctx, cancel := contextWithTimeout(5 * time.Second)
			defer cancel()
			if err := ts.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			if n := rel.n.Load(); n != 1 {
				t.Fatalf("admission released %d times", n)
			}
			if v := counterValue(t, ts.Registry(), "phxgate_longpoll_sessions", ""); v != 0 || ts.lp.OpenSessions() != 0 {
				t.Fatalf("sessions gauge %v, open %d", v, ts.lp.OpenSessions())
			}
			if got := rec.terminations(); !refuse && (len(got) != 1 || got[0] != backends.LeaveDrained) {
				t.Fatalf("terminations = %v", got)
			}
		})
	}
}

// A session never polled after its 410 (phoenix.js polls at once; a client
// that dropped the token never does) expires after one window; a polled
// one after 1.5.
func TestLongPollNeverPolledExpiresAfterOneWindow(t *testing.T) {
	s := lpServer(t, 10*time.Second, nil)
	reg := s.Registry()
	never := lpStart(t, s, "vsn=2.0.0")
	polled := lpStart(t, s, "vsn=2.0.0")
	lpPost(t, s, polled, `[null,"1","phoenix","heartbeat",{}]`)
	lpCollect(t, s, polled, 1)
	w := s.lp.cfg.Window
	s.lp.sweep(time.Now().Add(w + w/10).UnixNano())
	if ss := s.lp.lookup(never); ss != nil {
		t.Fatalf("the never-polled session is still there after a window (open %v)", ss.open())
	}
	if ss := s.lp.lookup(polled); ss == nil || !ss.open() {
		t.Fatal("the polled session ended after one window")
	}
	if v := counterValue(t, reg, "phxgate_longpoll_sessions_closed_total", "expired"); v != 1 {
		t.Fatalf("closed{expired} = %v", v)
	}
	s.lp.sweep(time.Now().Add(w*3/2 + w/10).UnixNano())
	if s.lp.lookup(polled) != nil {
		t.Fatal("the polled session is still there after 1.5 windows")
	}
}

// A session ended by the server with messages buffered: the POST that
// ended it without a crash is 200 at once, the next poll gets the
// messages, the one after a new session; nobody polling, the sweep drops
// them (dropped{expired}).
func TestLongPollEndedSessionBuffer(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 5 * time.Second })
	reg := ts.Registry()
	kick := func(tok string) (lpAnswer, error) {
		return lpDoBounded(t, http.MethodPost, lpURL(ts.Server, "vsn=2.0.0&token="+url.QueryEscape(tok)), []byte("kick"), "Content-Type: text/plain")
	}
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	lpPost(t, ts.Server, tok, `["x"]`)
	a, err := kick(tok)
	if err != nil || a.raw != `{"status":200}` {
		t.Fatalf("POST that kicked = HTTP %d %s, %v", a.code, a.raw, err)
	}
	if a := lpGet(t, ts.Server, tok); a.body.Status != 200 || len(a.body.Messages) != 1 || a.body.Messages[0] != `["x"]` || *a.body.Token != tok {
		t.Fatalf("poll after the kick = %s", a.raw)
	}
	if a := lpGet(t, ts.Server, tok); a.body.Status != 410 || *a.body.Token == tok {
		t.Fatalf("second poll after the kick = %s", a.raw)
	}
	// Kicked with a message buffered and never polled: the sweep forgets it.
	tok = lpStart(t, ts.Server, "vsn=2.0.0")
	lpPost(t, ts.Server, tok, `["y"]`)
	kick(tok)
	if ss := ts.lp.lookup(tok); ss == nil || ss.open() {
		t.Fatal("the kicked session should wait for its last poll")
	}
	w := ts.lp.cfg.Window
	ts.lp.sweep(time.Now().Add(w*3/2 + w/10).UnixNano())
	if ts.lp.lookup(tok) != nil {
		t.Fatal("the ended session's buffer is still kept")
	}
	if v := counterValue(t, reg, "phxgate_longpoll_messages_dropped_total", lpDropExpired); v != 1 {
		t.Fatalf("dropped{expired} = %v", v)
	}
}

// Drain with messages buffered and no poll held: the next poll gets them,
// a GET after that (and any new GET) is HTTP 503.
func TestLongPollDrainWithBuffer(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 5 * time.Second })
	reg := ts.Registry()
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	lpPost(t, ts.Server, tok, `["z"]`)
	ts.lp.drain()
	if a := lpGet(t, ts.Server, tok); a.body.Status != 200 || len(a.body.Messages) != 1 || a.body.Messages[0] != `["z"]` {
		t.Fatalf("poll after drain = HTTP %d %s", a.code, a.raw)
	}
	for _, q := range []string{tok, ""} {
		if a := lpGet(t, ts.Server, q); a.code != http.StatusServiceUnavailable || a.raw != "" {
			t.Fatalf("GET %q while draining = HTTP %d %s", q, a.code, a.raw)
		}
	}
	if v := counterValue(t, reg, "phxgate_longpoll_polls_total", lpPollDraining); v != 2 {
		t.Fatalf("polls{draining} = %v", v)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_sessions_closed_total", "drain"); v != 1 {
		t.Fatalf("closed{drain} = %v", v)
	}
}

// A session whose auth token expires is ended by the sweep (token_expired).
func TestLongPollTokenExpiry(t *testing.T) {
	s := lpServer(t, 10*time.Second, nil)
	exp := time.Now().Add(time.Hour)
	bearer := hsToken(t, jwt.MapClaims{"sub": "alice", "exp": exp.Unix()})
	tok := lpStart(t, s, "token="+bearer+"&vsn=2.0.0")
	s.lp.sweep(time.Now().UnixNano())
	if ss := s.lp.lookup(tok); ss == nil || !ss.open() {
		t.Fatal("session ended before its token expired")
	}
	s.lp.sweep(exp.Add(s.cfg.Auth.Leeway + time.Second).UnixNano())
	if v := counterValue(t, s.Registry(), "phxgate_longpoll_sessions_closed_total", string(channels.ReasonTokenExpired)); v != 1 {
		t.Fatalf("closed{token_expired} = %v", v)
	}
	if a := lpGet(t, s, tok); a.body.Status == 200 || a.body.Status == 204 {
		t.Fatalf("poll after token expiry = %s", a.raw)
	}
}

// Lines the transport itself refuses end the session like a crash (408):
// invalid UTF-8 (WebSocket 1007) and a text line over max_message_size
// (1009).
func TestLongPollRefusedLines(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 300 * time.Millisecond })
	reg := ts.Registry()
	for _, tc := range []struct {
		name, line string
		reason     channels.DisconnectReason
	}{
		{"invalid utf-8", "[\"\xff\"]", channels.ReasonInvalidUTF8},
		{"too big", `["` + strings.Repeat("b", ts.cfg.MaxMessageSize) + `"]`, channels.ReasonTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := lpStart(t, ts.Server, "vsn=2.0.0")
			if a := lpPost(t, ts.Server, tok, tc.line); a.raw != `{"status":408}` {
				t.Fatalf("POST = %s", a.raw)
			}
			if v := counterValue(t, reg, "phxgate_longpoll_sessions_closed_total", string(tc.reason)); v != 1 {
				t.Fatalf("closed{%s} = %v", tc.reason, v)
			}
		})
	}
}

// Phoenix takes the body as ndjson only when Content-Type is exactly
// application/x-ndjson; with parameters it is one text frame.
func TestLongPollContentTypeExact(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 5 * time.Second })
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	a := lpDo(t, http.MethodPost, lpURL(ts.Server, "token="+url.QueryEscape(tok)), []byte("[\"a\"]\n[\"b\"]"), "Content-Type: application/x-ndjson; charset=utf-8")
	if a.raw != `{"status":200}` {
		t.Fatalf("POST = HTTP %d %s", a.code, a.raw)
	}
	if got := lpCollect(t, ts.Server, tok, 1); len(got) != 1 || got[0] != "[\"a\"]\n[\"b\"]" {
		t.Fatalf("messages = %q", got)
	}
}
