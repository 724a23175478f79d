//go:build linux

package gateway

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lpPostAsync sends a POST in the background; its answer comes on the
// channel (code -1 if the request failed).
func lpPostAsync(tb testing.TB, s *Server, tok, body, contentType string) <-chan lpAnswer {
	tb.Helper()
	ch := make(chan lpAnswer, 1)
	u := lpURL(s, "vsn=2.0.0&token="+url.QueryEscape(tok))
	go func() {
		a, err := lpDoWith(tb, lpClient, http.MethodPost, u, []byte(body), "Content-Type: "+contentType)
		if err != nil {
			a.code = -1
			a.raw = err.Error()
		}
		ch <- a
	}()
	return ch
}

// lpHoldTurn takes the dispatch turn of tok's session as a POST would, so
// that the POSTs sent meanwhile queue behind it; the returned func gives
// it back (at most once; also at cleanup).
func lpHoldTurn(tb testing.TB, s *Server, tok string) (*lpSession, func()) {
	tb.Helper()
	ss := s.lp.lookup(tok)
	if ss == nil || !ss.posts.lock(nil, nil, nil) {
		tb.Fatal("no session, or its turn not taken")
	}
	var once sync.Once
	unlock := func() { once.Do(ss.posts.unlock) }
	tb.Cleanup(unlock)
	return ss, unlock
}

func waitWaiters(tb testing.TB, ss *lpSession, n int) {
	tb.Helper()
	waitFor(tb, 5*time.Second, func() bool { return ss.posts.waiters() == n }, fmt.Sprintf("%d POSTs waiting for the turn", n))
}

// Old phoenix.js (before 1.7.0) sends one POST per push without waiting
// for the previous answer, with Content-Type application/json (the body is
// one message). Concurrent POSTs of one session are all read, then
// dispatched one at a time in the order their bodies were read: every one
// is answered 200 and the replies come in that order.
func TestLongPollConcurrentPostsDispatchInOrder(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 5 * time.Second })
	reg := ts.Registry()
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	ss, unlock := lpHoldTurn(t, ts.Server, tok)
	var answers []<-chan lpAnswer
	for i := range longPollMaxSessionPosts {
		answers = append(answers, lpPostAsync(t, ts.Server, tok, `["m",`+strconv.Itoa(i)+`]`, "application/json"))
		waitWaiters(t, ss, i+1)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_posts_waiting", ""); v != longPollMaxSessionPosts {
		t.Fatalf("posts_waiting = %v", v)
	}
	unlock()
	for i, ch := range answers {
		if a := <-ch; a.code != 200 || a.raw != `{"status":200}` {
			t.Fatalf("POST %d = HTTP %d %s", i, a.code, a.raw)
		}
	}
	got := lpCollect(t, ts.Server, tok, longPollMaxSessionPosts)
	for i, m := range got {
		if want := `["m",` + strconv.Itoa(i) + `]`; m != want {
			t.Fatalf("message %d = %s, want %s (all: %q)", i, m, want, got)
		}
	}
	if v := counterValue(t, reg, "phxgate_longpoll_posts_waiting", ""); v != 0 {
		t.Fatalf("posts_waiting after = %v", v)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_posts_total", lpPostConflict); v != 0 {
		t.Fatalf("posts{conflict} = %v", v)
	}
}

// Many concurrent POSTs of one session, none held back by the test: the
// real race phoenix.js 1.6 makes when it joins channels in one tick.
func TestLongPollConcurrentPostsAllAnswered(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 5 * time.Second })
	for round := range 20 {
		tok := lpStart(t, ts.Server, "vsn=2.0.0")
		var answers []<-chan lpAnswer
		for i := range 4 {
			answers = append(answers, lpPostAsync(t, ts.Server, tok, fmt.Sprintf(`["r%d",%d]`, round, i), "application/json"))
		}
		for i, ch := range answers {
			if a := <-ch; a.raw != `{"status":200}` {
				t.Fatalf("round %d POST %d = HTTP %d %s", round, i, a.code, a.raw)
			}
		}
		if got := lpCollect(t, ts.Server, tok, 4); len(got) != 4 {
			t.Fatalf("round %d: %q", round, got)
		}
	}
	if v := counterValue(t, ts.Registry(), "phxgate_longpoll_posts_total", lpPostConflict); v != 0 {
		t.Fatalf("posts{conflict} = %v", v)
	}
}

// Past longPollMaxSessionPosts POSTs in flight on a session the next is
// refused at once with 409 (connection closed, body unread); the session
// lives and the queued ones go through.
func TestLongPollSessionPostCap(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = 5 * time.Second })
	reg := ts.Registry()
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	ss, unlock := lpHoldTurn(t, ts.Server, tok)
	var answers []<-chan lpAnswer
	for i := range longPollMaxSessionPosts {
		answers = append(answers, lpPostAsync(t, ts.Server, tok, `"q`+strconv.Itoa(i)+`"`, "application/json"))
		waitWaiters(t, ss, i+1)
	}
	a, err := lpDoBounded(t, http.MethodPost, lpURL(ts.Server, "vsn=2.0.0&token="+url.QueryEscape(tok)), []byte(`"over"`), "Content-Type: application/json")
	if err != nil || a.code != http.StatusConflict || a.raw != "" {
		t.Fatalf("POST past the cap = HTTP %d %q %v, %v", a.code, a.raw, a.header, err)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_posts_total", lpPostConflict); v != 1 {
		t.Fatalf("posts{conflict} = %v", v)
	}
	unlock()
	for i, ch := range answers {
		if a := <-ch; a.raw != `{"status":200}` {
			t.Fatalf("queued POST %d = HTTP %d %s", i, a.code, a.raw)
		}
	}
	if got := lpCollect(t, ts.Server, tok, longPollMaxSessionPosts); len(got) != longPollMaxSessionPosts {
		t.Fatalf("messages = %q", got)
	}
	waitFor(t, 5*time.Second, func() bool {
		ss.posts.mu.Lock()
		defer ss.posts.mu.Unlock()
		return ss.posts.inFlight == 0 && !ss.posts.busy
	}, "the queue to be empty")
}

// A POST that gets no turn within a window is answered 408 (as Phoenix
// when the session does not ack in time); its lines are not dispatched and
// the session lives. A waiting POST is not cut by the body's read
// deadline (handshake_timeout, shorter than the window here): once the
// body is read the deadline is lifted.
func TestLongPollPostWaitTimeout(t *testing.T) {
	const window = 1500 * time.Millisecond
	ts := startServer(t, func(c *Config) {
		c.LongPoll.Window = window
		c.HandshakeTimeout = 100 * time.Millisecond
	})
	reg := ts.Registry()
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	// A poll held meanwhile keeps the session from expiring while the
	// POST waits.
	polled := make(chan lpAnswer, 1)
	go func() {
		a, _ := lpDoWith(t, lpClient, http.MethodGet, lpURL(ts.Server, "vsn=2.0.0"), nil, "X-Phoenix-Longpoll-Token: "+tok)
		polled <- a
	}()
	lpWaitHeld(t, ts.Server, tok)
	ss, unlock := lpHoldTurn(t, ts.Server, tok)
	start := time.Now()
	ch := lpPostAsync(t, ts.Server, tok, `"late"`, "application/json")
	waitWaiters(t, ss, 1)
	a := <-ch
	if a.raw != `{"status":408}` {
		t.Fatalf("POST without a turn = HTTP %d %s", a.code, a.raw)
	}
	// Not cut by the read deadline: it waited the window (a cut POST
	// would be answered just past handshake_timeout).
	if waited := time.Since(start); waited < window {
		t.Fatalf("answered after %v, before the window %v", waited, window)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_posts_total", lpPostWaitTimeout); v != 1 {
		t.Fatalf("posts{wait_timeout} = %v", v)
	}
	if a := <-polled; a.body.Status != 204 {
		t.Fatalf("held poll = %s", a.raw)
	}
	unlock()
	if a := lpDo(t, http.MethodPost, lpURL(ts.Server, "token="+url.QueryEscape(tok)), []byte(`"next"`), "Content-Type: application/json"); a.raw != `{"status":200}` {
		t.Fatalf("POST after = HTTP %d %s", a.code, a.raw)
	}
	if got := lpCollect(t, ts.Server, tok, 1); got[0] != `"next"` {
		t.Fatalf("messages = %q: the timed-out POST must not be dispatched", got)
	}
}

// A client that leaves while its POST waits for the turn frees its place
// (net/http notices once the body is read), long before the window.
func TestLongPollWaitingPostClientGone(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LongPoll.Window = MaxLongPollWindow })
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	ss, unlock := lpHoldTurn(t, ts.Server, tok)
	body := `"gone"`
	c := rawLPPost(t, ts.Server, tok, body, len(body))
	waitWaiters(t, ss, 1)
	c.Close()
	waitWaiters(t, ss, 0)
	waitFor(t, 5*time.Second, func() bool {
		ss.posts.mu.Lock()
		defer ss.posts.mu.Unlock()
		return ss.posts.inFlight == 0
	}, "the departed POST to leave")
	unlock()
	if a := lpDo(t, http.MethodPost, lpURL(ts.Server, "token="+url.QueryEscape(tok)), []byte(`"after"`), "Content-Type: application/json"); a.raw != `{"status":200}` {
		t.Fatalf("POST after = %s", a.raw)
	}
}

// A POST's buffer grows with its body instead of being sized by its
// Content-Length: POSTs that sent only their headers (Content-Length
// 64 KiB, no slot needed) hold about lpBodyStartBytes each, not 64 KiB.
func TestLongPollHeaderOnlyPostsHoldLittle(t *testing.T) {
	const sessions, perSession = 12, longPollMaxSessionPosts
	const posts = sessions * perSession
	ts := startServer(t, func(c *Config) {
		c.LongPoll.Window = MaxLongPollWindow
		c.HandshakeTimeout = time.Minute // nothing is cut while measuring
		c.MaxMessageSize = LongPollSmallPostBytes
		c.LongPoll.MaxBufferBytes = 4 * perSession * LongPollSmallPostBytes
	})
	s := ts.Server
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	toks := make([]string, sessions)
	for i := range toks {
		toks[i] = lpStart(t, s, "vsn=2.0.0")
	}
	http.DefaultClient.CloseIdleConnections()
	// The connections first, so that the measure is the requests alone.
	conns := make([]net.Conn, posts)
	for i := range conns {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	base := heap()
	for i, c := range conns {
		fmt.Fprintf(c, "POST /socket/longpoll?vsn=2.0.0&token=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
			url.QueryEscape(toks[i%sessions]), LongPollSmallPostBytes)
	}
	var all []*lpSession
	for _, tok := range toks {
		all = append(all, s.lp.lookup(tok))
	}
	waitFor(t, 10*time.Second, func() bool {
		n := 0
		for _, ss := range all {
			ss.posts.mu.Lock()
			n += ss.posts.inFlight
			ss.posts.mu.Unlock()
		}
		return n == posts
	}, "every header-only POST in its handler")
	held := heap()
	per := float64(int64(held)-int64(base)) / posts
	t.Logf("a header-only POST with Content-Length %d holds %.0f B (heap, %d POSTs)", LongPollSmallPostBytes, per, posts)
	// What a request costs besides its body buffer (the Request, its
	// headers, the response writer) is about 12 KB.
	if per > lpBodyStartBytes+24<<10 {
		t.Fatalf("a header-only POST holds %.0f B", per)
	}
	// The bodies come: each is read in full (buffers grown to their
	// length) and answered.
	body := `"` + strings.Repeat("x", LongPollSmallPostBytes-2) + `"`
	for _, c := range conns {
		if _, err := c.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %d = HTTP %d", i, resp.StatusCode)
		}
	}
	runtime.KeepAlive(conns)
}
