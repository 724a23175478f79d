package channels

import (
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
	if n := counterValue(t, env.reg, "phxgate_joins_total", joinTooLong); n != 3 {
		t.Errorf("phxgate_joins_total{result=%q} = %v, want 3", joinTooLong, n)
	}
}

// TestJoinRefBoundV1: a V1 join's channel join_ref is its ref, so the bound
// applies to the ref.
func TestJoinRefBoundV1(t *testing.T) {
	env := newTestEnv(t, nil)
	s, c := env.connect(t, V1)
	long := strings.Repeat("9", DefaultMaxJoinRefBytes)
	mustHandle(t, s, fmt.Sprintf(`{"topic":"room:a","event":"phx_join","payload":{},"ref":%q}`, long))
	want := fmt.Sprintf(`{"event":"phx_reply","payload":{"response":{"reason":"join_ref too long"},"status":"error"},"ref":%q,"topic":"room:a"}`, long)
	if got := c.waitTexts(t, 1); got[0] != want {
		t.Fatalf("got %s\nwant %s", got[0], want)
	}
}
