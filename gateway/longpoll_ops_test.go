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
	"testing"
	"time"
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

// A node-wide cap on POST bodies being read at once: a POST that finds no
// slot within a window is answered 503 before its body is read; a slot
// freed lets the next one through.
func TestLongPollMaxReadingPosts(t *testing.T) {
	s := lpServer(t, 300*time.Millisecond, func(c *Config) { c.LongPoll.MaxReadingPosts = 1 })
	reg := s.Registry()
	slow, other := lpStart(t, s, "vsn=2.0.0"), lpStart(t, s, "vsn=2.0.0")
	body := `["1","1","room:lobby","phx_join",{}]`
	c := rawLPPost(t, s, slow, body, 10)
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, reg, "phxgate_longpoll_posts_reading", "") == 1
	}, "the slow POST to hold the slot")
	a := lpPost(t, s, other, `[null,"1","phoenix","heartbeat",{}]`)
	if a.code != http.StatusServiceUnavailable || a.header.Get("Retry-After") != "1" {
		t.Fatalf("POST without a slot = HTTP %d %v %s", a.code, a.header, a.raw)
	}
	if v := counterValue(t, reg, "phxgate_longpoll_posts_total", lpPostBusy); v != 1 {
		t.Fatalf("posts{busy} = %v", v)
	}
	// The slow body completes: its POST is answered, the slot is free.
	if _, err := c.Write([]byte(body[10:])); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("slow POST = HTTP %d", resp.StatusCode)
	}
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, reg, "phxgate_longpoll_posts_reading", "") == 0
	}, "the slot released")
	if a := lpPost(t, s, other, `[null,"1","phoenix","heartbeat",{}]`); a.raw != `{"status":200}` {
		t.Fatalf("POST after the slot freed = HTTP %d %s", a.code, a.raw)
	}
	if len(s.lp.reading) != 0 {
		t.Fatalf("%d slots held after every POST was answered", len(s.lp.reading))
	}
}

func TestLongPollMaxReadingPostsConfig(t *testing.T) {
	if c := NewConfig(); c.LongPoll.MaxReadingPosts != DefaultLongPollMaxReadingPosts {
		t.Fatalf("default max_reading_posts = %d", c.LongPoll.MaxReadingPosts)
	}
	for _, y := range []string{"longpoll:\n  max_reading_posts: 0\n", "longpoll:\n  max_reading_posts: 100001\n"} {
		cfg, err := ParseYAML([]byte(y))
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), "longpoll.max_reading_posts") {
			t.Errorf("%q: err = %v, want one naming longpoll.max_reading_posts", y, err)
		}
	}
	cfg, err := ParseYAML([]byte("longpoll:\n  max_reading_posts: 7\n"))
	if err != nil || cfg.LongPoll.MaxReadingPosts != 7 {
		t.Fatalf("max_reading_posts: 7 → %d, %v", cfg.LongPoll.MaxReadingPosts, err)
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
