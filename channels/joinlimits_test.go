package channels

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestJoinTopicAndJoinRefBounded: a channel keeps its topic and join_ref
// for its life, so a join naming a huge topic or join_ref is refused with a
// clear reason instead of pinning up to max_message_size bytes per channel.
func TestJoinTopicAndJoinRefBounded(t *testing.T) {
	longTopic := "room:" + strings.Repeat("x", DefaultMaxTopicBytes-len("room:")+1) // one byte over
	maxTopic := longTopic[:DefaultMaxTopicBytes]
	// A JSON string token counts its quotes: 62 characters is 64 bytes.
	okRef := strings.Repeat("7", DefaultMaxJoinRefBytes-2)
	longRef := okRef + "7"

	steps := []struct {
		send string
		want []string
	}{
		{fmt.Sprintf(`["1","1",%q,"phx_join",{}]`, longTopic),
			[]string{fmt.Sprintf(`["1","1",%q,"phx_reply",{"response":{"reason":"topic too long"},"status":"error"}]`, longTopic)}},
		// Nothing was kept for it.
		{fmt.Sprintf(`["1","2",%q,"ping",{}]`, longTopic),
			[]string{fmt.Sprintf(`[null,"2",%q,"phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`, longTopic)}},
		{fmt.Sprintf(`["3","3",%q,"phx_join",{}]`, maxTopic),
			[]string{fmt.Sprintf(`["3","3",%q,"phx_reply",{"response":{},"status":"ok"}]`, maxTopic)}},
		{fmt.Sprintf(`[%q,"4","room:a","phx_join",{}]`, longRef),
			[]string{fmt.Sprintf(`[%q,"4","room:a","phx_reply",{"response":{"reason":"join_ref too long"},"status":"error"}]`, longRef)}},
		{fmt.Sprintf(`[%q,"5","room:a","phx_join",{}]`, okRef),
			[]string{fmt.Sprintf(`[%q,"5","room:a","phx_reply",{"response":{},"status":"ok"}]`, okRef)}},
		// A duplicate join with a long join_ref is refused; the channel
		// joined with okRef stays.
		{fmt.Sprintf(`[%q,"6","room:a","phx_join",{}]`, longRef),
			[]string{fmt.Sprintf(`[%q,"6","room:a","phx_reply",{"response":{"reason":"join_ref too long"},"status":"error"}]`, longRef)}},
		{fmt.Sprintf(`[%q,"7","room:a","ping",{}]`, okRef),
			[]string{fmt.Sprintf(`[%q,"7","room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]`, okRef)}},
	}
	env := newTestEnv(t, nil)
	s, c := env.connect(t, V2)
	seen := 0
	for _, st := range steps {
		mustHandle(t, s, st.send)
		got := c.waitTexts(t, seen+len(st.want))[seen:]
		if strings.Join(got, "\n") != strings.Join(st.want, "\n") {
			t.Fatalf("after %.80s…\n got: %.200q\nwant: %.200q", st.send, got, st.want)
		}
		seen += len(st.want)
	}
	if n := counterValue(t, env.reg, "phxgate_channels_joins_total", joinTooLong); n != 3 {
		t.Errorf("phxgate_channels_joins_total{result=%q} = %v, want 3", joinTooLong, n)
	}
}

// TestJoinRefBoundV1: a V1 join's channel join_ref is its ref, so the bound
// applies to the ref. With the defaults such a ref is over MaxRefBytes too
// and closes the socket (TestRefBound); a larger MaxRefBytes leaves the
// join_ref bound to answer it.
func TestJoinRefBoundV1(t *testing.T) {
	env := newTestEnv(t, func(c *Config) { c.MaxRefBytes = 2 * DefaultMaxJoinRefBytes })
	s, c := env.connect(t, V1)
	long := strings.Repeat("9", DefaultMaxJoinRefBytes)
	mustHandle(t, s, fmt.Sprintf(`{"topic":"room:a","event":"phx_join","payload":{},"ref":%q}`, long))
	want := fmt.Sprintf(`{"event":"phx_reply","payload":{"response":{"reason":"join_ref too long"},"status":"error"},"ref":%q,"topic":"room:a"}`, long)
	if got := c.waitTexts(t, 1); got[0] != want {
		t.Fatalf("got %s\nwant %s", got[0], want)
	}
}

// TestRefBound: refs are kept in queued tasks and echoed, so a ref (or the
// join_ref of a message other than a join) over MaxRefBytes closes the
// socket with 1011 for every serializer, heartbeats included, while a ref
// of exactly MaxRefBytes (a JSON string counts its quotes) still works.
func TestRefBound(t *testing.T) {
	max := DefaultMaxRefBytes
	okRef := strings.Repeat("7", max-2) // 64 bytes as a JSON string
	longRef := okRef + "7"
	wantClose := func(t *testing.T, err error) {
		t.Helper()
		var ce *CloseError
		if !errors.As(err, &ce) || ce.Code != CloseInternalError || ce.Reason != ReasonMalformed {
			t.Fatalf("got %v, want a 1011 %s CloseError", err, ReasonMalformed)
		}
	}
	// V2 notation; each is also sent as V1 and as a binary push where the
	// serializer can carry it (binary: not heartbeats, whose payload is JSON
	// text anyway, but the ref check is the same).
	bad := []string{
		fmt.Sprintf(`[null,%q,"phoenix","heartbeat",{}]`, longRef),
		fmt.Sprintf(`["1",%q,"room:a","phx_join",{}]`, longRef),
		fmt.Sprintf(`["1",%q,"room:a","ping",{}]`, longRef),
		fmt.Sprintf(`[%q,"2","room:a","ping",{}]`, longRef),
		fmt.Sprintf(`[%q,"2","room:a","phx_leave",{}]`, longRef),
	}
	for _, msg := range bad {
		for _, ser := range []string{"v1", "v2", "binary"} {
			t.Run(ser+" "+msg[:20], func(t *testing.T) {
				env := newTestEnv(t, nil)
				switch ser {
				case "v1":
					s, _ := env.connect(t, V1)
					wantClose(t, s.HandleText([]byte(v2ToV1(t, msg, false))))
				case "v2":
					s, _ := env.connect(t, V2)
					wantClose(t, s.HandleText([]byte(msg)))
				case "binary":
					s, _ := env.connect(t, V2)
					wantClose(t, s.HandleBinary(v2ToBinary(t, msg)))
				}
				if v := counterValue(t, env.reg, "phxgate_messages_in_total", "malformed"); v != 1 {
					t.Fatalf("malformed metric %v", v)
				}
			})
		}
	}

	// At the bound everything works: a heartbeat, a join, an event and a
	// leave, in V2 and V1 (join_ref within MaxJoinRefBytes too) and binary.
	env := newTestEnv(t, nil)
	s, c := env.connect(t, V2)
	mustHandle(t, s, fmt.Sprintf(`[null,%q,"phoenix","heartbeat",{}]`, okRef))
	mustHandle(t, s, fmt.Sprintf(`[%q,%q,"room:a","phx_join",{}]`, okRef, okRef))
	got := c.waitTexts(t, 2)
	want := []string{
		fmt.Sprintf(`[null,%q,"phoenix","phx_reply",{"response":{},"status":"ok"}]`, okRef),
		fmt.Sprintf(`[%q,%q,"room:a","phx_reply",{"response":{},"status":"ok"}]`, okRef, okRef),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("V2 got %v\nwant %v", got, want)
	}
	if err := s.HandleBinary(binaryPush(okRef, okRef, "room:a", "ping", []byte(`{}`))); err != nil {
		t.Fatalf("binary push with a %d-byte ref: %v", max, err)
	}
	c.waitTexts(t, 3)

	s1, c1 := env.connect(t, V1)
	mustHandle(t, s1, fmt.Sprintf(`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":%q}`, okRef))
	mustHandle(t, s1, fmt.Sprintf(`{"topic":"room:b","event":"phx_join","payload":{},"ref":%q}`, okRef))
	got = c1.waitTexts(t, 2)
	want = []string{
		fmt.Sprintf(`{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":%q,"topic":"phoenix"}`, okRef),
		fmt.Sprintf(`{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":%q,"topic":"room:b"}`, okRef),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("V1 got %v\nwant %v", got, want)
	}
}
