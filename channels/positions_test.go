package channels

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/phxgate/phxgate/pubsub"
)

func publishN(tb testing.TB, b *testBroker, topic string, from, to int) {
	tb.Helper()
	for i := from; i <= to; i++ {
		if _, err := b.Publish(context.Background(), topic, pubsub.Message{Event: "ev", Payload: []byte(fmt.Sprintf(`{"i":%d}`, i))}); err != nil {
			tb.Fatal(err)
		}
	}
}

func evFrame(topic, ref string, i int) string {
	return fmt.Sprintf(`[null,%s,"%s","ev",{"i":%d}]`, ref, topic, i)
}

func TestPositions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		topic     string
		published int    // events before the join
		offset    string // join payload "offset" value
		want      []string
	}{
		{"plain channel: null refs", "room:a", 2, "", []string{
			`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`,
			evFrame("room:a", "null", 3),
		}},
		{"opt in from now (null)", "room:a", 2, `null`, []string{
			`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:2"},"status":"ok"}]`,
			evFrame("room:a", `"p:E1:3"`, 3),
		}},
		{"opt in from now (empty string)", "room:a", 0, `""`, []string{
			`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:0"},"status":"ok"}]`,
			evFrame("room:a", `"p:E1:1"`, 1),
		}},
		{"resume replays the missed events", "room:a", 4, `"p:E1:2"`, []string{
			`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:4","recovered":true},"status":"ok"}]`,
			evFrame("room:a", `"p:E1:3"`, 3),
			evFrame("room:a", `"p:E1:4"`, 4),
			evFrame("room:a", `"p:E1:5"`, 5),
		}},
		{"resume at top replays nothing", "room:a", 2, `"p:E1:2"`, []string{
			`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:2","recovered":true},"status":"ok"}]`,
			evFrame("room:a", `"p:E1:3"`, 3),
		}},
		{"resume from another epoch", "room:a", 2, `"p:OLD:1"`, []string{
			`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:2","recovered":false},"status":"ok"}]`,
			evFrame("room:a", `"p:E1:3"`, 3),
		}},
		{"malformed position", "room:a", 2, `"junk"`, []string{
			`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:2","recovered":false},"status":"ok"}]`,
			evFrame("room:a", `"p:E1:3"`, 3),
		}},
		{"non-string position", "room:a", 2, `12`, []string{
			`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:2","recovered":false},"status":"ok"}]`,
			evFrame("room:a", `"p:E1:3"`, 3),
		}},
		{"backend object gets the keys", "room:pushy", 0, `null`, []string{
			`["1","1","room:pushy","phx_reply",{"response":{"position":"p:E1:0","hello":1},"status":"ok"}]`,
			`["1",null,"room:pushy","welcome",{"w":1}]`,
			evFrame("room:pushy", `"p:E1:1"`, 1),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newTestEnv(t, nil)
			publishN(t, env.broker, tc.topic, 1, tc.published)
			sock, conn := env.connect(t, V2)
			payload := `{"k":"v"}`
			if tc.offset != "" {
				payload = `{"offset":` + tc.offset + `,"k":"v"}`
			}
			mustHandle(t, sock, `["1","1","`+tc.topic+`","phx_join",`+payload+`]`)
			conn.waitTexts(t, len(tc.want)-1)
			publishN(t, env.broker, tc.topic, tc.published+1, tc.published+1)
			got := conn.waitTexts(t, len(tc.want))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(tc.want, "\n     "))
			}
			if pl := string(env.backend.joinPl[0]); pl != `{"k":"v"}` {
				t.Fatalf("backend saw join payload %s", pl)
			}
		})
	}
}

func TestPositionsV1(t *testing.T) {
	env := newTestEnv(t, nil)
	publishN(t, env.broker, "room:a", 1, 3)
	sock, conn := env.connect(t, V1)
	mustHandle(t, sock, `{"topic":"room:a","event":"phx_join","payload":{"offset":"p:E1:2"},"ref":"1"}`)
	got := conn.waitTexts(t, 2)
	want := []string{
		`{"event":"phx_reply","payload":{"response":{"position":"p:E1:3","recovered":true},"status":"ok"},"ref":"1","topic":"room:a"}`,
		`{"event":"ev","payload":{"i":3},"ref":"p:E1:3","topic":"room:a"}`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

// Events published while a resuming join reads history are neither lost nor
// duplicated, and none of them overtakes the reply or the replay.
func TestResumeRaceNoGapsNoDuplicates(t *testing.T) {
	env := newTestEnv(t, nil)
	publishN(t, env.broker, "room:a", 1, 3)
	// During the join: 4 and 5 are published before history is read (so
	// they are both replayed and buffered live), 6 after it (live only).
	env.broker.beforeHistory = func(topic string) { publishN(t, env.broker, topic, 4, 5) }
	env.broker.afterHistory = func(topic string) { publishN(t, env.broker, topic, 6, 6) }
	sock, conn := env.connect(t, V2)
	plain, plainConn := env.connect(t, V2)
	mustHandle(t, plain, `["1","1","room:a","phx_join",{}]`)
	plainConn.waitTexts(t, 1)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{"offset":"p:E1:1"}]`)
	want := []string{`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:5","recovered":true},"status":"ok"}]`}
	for i := 2; i <= 7; i++ {
		want = append(want, evFrame("room:a", fmt.Sprintf(`"p:E1:%d"`, i), i))
	}
	// Before 7 is published: the reply, the replay (2..5) and the live 6,
	// each once.
	got := conn.waitTexts(t, 6)
	if !slices.Equal(got, want[:6]) {
		t.Fatalf("after the join got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want[:6], "\n     "))
	}
	env.broker.beforeHistory, env.broker.afterHistory = nil, nil
	publishN(t, env.broker, "room:a", 7, 7)
	got = conn.waitTexts(t, 7)
	if !slices.Equal(got, want) {
		t.Fatalf("got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	// The plain subscriber on the same topic got null refs throughout.
	pg := plainConn.waitTexts(t, 5)
	for _, f := range pg[1:] {
		if !strings.HasPrefix(f, `[null,null,`) {
			t.Fatalf("plain subscriber got %s", f)
		}
	}
	if v := counterValue(t, env.reg, "phxgate_replayed_events_total", ""); v != 4 {
		t.Fatalf("replayed metric %v, want 4", v)
	}
}

func TestResumeBufferOverflowEndsChannel(t *testing.T) {
	env := newTestEnv(t, func(c *Config) { c.ResumeBuffer = 1 })
	env.broker.afterHistory = func(topic string) { publishN(t, env.broker, topic, 1, 3) }
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{"offset":null}]`)
	got := conn.waitTexts(t, 3)
	want := []string{
		`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:0"},"status":"ok"}]`,
		evFrame("room:a", `"p:E1:1"`, 1),
		`["1","1","room:a","phx_error",{"reason":"channel_crash"}]`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

func TestWithPosition(t *testing.T) {
	for _, tc := range []struct {
		resp string
		want string
	}{
		{``, `{"position":"p:E:7","recovered":true}`},
		{`{}`, `{"position":"p:E:7","recovered":true}`},
		{` { } `, `{"position":"p:E:7","recovered":true}`},
		{`null`, `{"position":"p:E:7","recovered":true}`},
		{`"str"`, `{"position":"p:E:7","recovered":true}`},
		{`{"a":1}`, `{"position":"p:E:7","recovered":true,"a":1}`},
	} {
		got := withPosition([]byte(tc.resp), posE7, true, true)
		if string(got) != tc.want {
			t.Errorf("withPosition(%q) = %s, want %s", tc.resp, got, tc.want)
		}
	}
}

// A join whose backend answers with a snapshot up to a position gets the
// events after that position replayed, whatever offset the client sent
// (too old, another epoch, none), so it ends up exactly in sync.
func TestSnapshotPositionReplaysOnlyAfterIt(t *testing.T) {
	for _, offset := range []string{`"p:OLD:1"`, `"p:E1:0"`, `null`} {
		t.Run(offset, func(t *testing.T) {
			env := newTestEnv(t, nil)
			publishN(t, env.broker, "room:snap", 1, 4)
			sock, conn := env.connect(t, V2)
			mustHandle(t, sock, `["1","1","room:snap","phx_join",{"offset":`+offset+`}]`)
			want := []string{
				`["1","1","room:snap","phx_reply",{"response":{"position":"p:E1:4","recovered":true,"snapshot":2},"status":"ok"}]`,
				evFrame("room:snap", `"p:E1:3"`, 3),
				evFrame("room:snap", `"p:E1:4"`, 4),
			}
			got := conn.waitTexts(t, 3)
			if !slices.Equal(got, want) {
				t.Fatalf("got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
			}
			publishN(t, env.broker, "room:snap", 5, 5)
			if got := conn.waitTexts(t, 4); got[3] != evFrame("room:snap", `"p:E1:5"`, 5) || conn.count() != 4 {
				t.Fatalf("live after the replay: %v", got)
			}
		})
	}
}

// A resume that would replay more than MaxReplay events, or more than
// ReplayBytes payload bytes, answers recovered=false and replays nothing:
// the client rebuilds from the join reply instead of overflowing its write
// queue on every reconnect.
func TestResumeBounds(t *testing.T) {
	for _, tc := range []struct {
		name      string
		tweak     func(*Config)
		offset    string
		recovered bool
		result    string
	}{
		{"within both bounds", func(c *Config) { c.MaxReplay = 5; c.ReplayBytes = 1000 }, "p:E1:5", true, resumeRecovered},
		{"more events than max_replay", func(c *Config) { c.MaxReplay = 4 }, "p:E1:5", false, resumeTooMany},
		{"more bytes than replay_bytes", func(c *Config) { c.ReplayBytes = 30 }, "p:E1:5", false, resumeTooLarge},
		{"older than history", nil, "p:OTHER:5", false, resumeStale},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newTestEnv(t, tc.tweak)
			publishN(t, env.broker, "room:a", 1, 10) // {"i":N}: 7-8 bytes each, 36 for 6..10
			sock, conn := env.connect(t, V2)
			mustHandle(t, sock, `["1","1","room:a","phx_join",{"offset":"`+tc.offset+`"}]`)
			want := []string{fmt.Sprintf(`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:10","recovered":%v},"status":"ok"}]`, tc.recovered)}
			if tc.recovered {
				for i := 6; i <= 10; i++ {
					want = append(want, evFrame("room:a", fmt.Sprintf(`"p:E1:%d"`, i), i))
				}
			}
			conn.waitTexts(t, len(want))
			publishN(t, env.broker, "room:a", 11, 11)
			want = append(want, evFrame("room:a", `"p:E1:11"`, 11))
			if got := conn.waitTexts(t, len(want)); !slices.Equal(got, want) {
				t.Fatalf("got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
			}
			if n := counterValue(t, env.reg, "phxgate_resumes_total", tc.result); n != 1 {
				t.Fatalf("phxgate_resumes_total{result=%q} = %v, want 1", tc.result, n)
			}
		})
	}
}

// The broker loses a topic's history (a new epoch): channels holding
// positions get phx_error and no event of the new epoch (which would hide
// the gap); a plain channel carries on and gets it. Rejoining with the last
// position answers recovered=false.
func TestContinuityLossEndsPositionedChannels(t *testing.T) {
	env := newTestEnv(t, nil)
	publishN(t, env.broker, "room:a", 1, 2)
	pos, posConn := env.connect(t, V2)
	plain, plainConn := env.connect(t, V2)
	mustHandle(t, pos, `["1","1","room:a","phx_join",{"offset":null}]`)
	mustHandle(t, plain, `["1","1","room:a","phx_join",{}]`)
	posConn.waitTexts(t, 1)
	plainConn.waitTexts(t, 1)
	publishN(t, env.broker, "room:a", 3, 3)
	posConn.waitTexts(t, 2)
	plainConn.waitTexts(t, 2)

	env.broker.loseHistory("E2")
	publishN(t, env.broker, "room:a", 4, 4) // offset 1 of the new epoch
	got := posConn.waitTexts(t, 3)
	if want := `["1","1","room:a","phx_error",{"reason":"channel_crash"}]`; got[2] != want {
		t.Fatalf("after the loss the positioned channel got %s, want %s", got[2], want)
	}
	if got := plainConn.waitTexts(t, 3); got[2] != evFrame("room:a", "null", 4) {
		t.Fatalf("plain channel got %s", got[2])
	}
	mustHandle(t, pos, `["2","2","room:a","phx_join",{"offset":"p:E1:3"}]`)
	got = posConn.waitTexts(t, 4)
	if want := `["2","2","room:a","phx_reply",{"response":{"position":"p:E2:1","recovered":false},"status":"ok"}]`; got[3] != want {
		t.Fatalf("rejoin: %s, want %s", got[3], want)
	}
	if n := counterValue(t, env.reg, "phxgate_pubsub_continuity_losses_total", ""); n != 1 {
		t.Fatalf("continuity losses counted %v, want 1", n)
	}
	waitFor(t, waitLong, "the ended channel's Leave", func() bool { return slices.Contains(env.backend.logged(), "leave room:a 1 crashed") })
}

// Ephemeral events (presence diffs) reach opted-in channels with a null
// ref, and neither replay nor the resume skip state is thrown off by them.
func TestEphemeralEventsOnPositionedChannels(t *testing.T) {
	env := newTestEnv(t, nil)
	publishN(t, env.broker, "room:a", 1, 3)
	// During the join: an ephemeral event and event 4 are published
	// before history is read (buffered, and 4 replayed too), and another
	// ephemeral one after it.
	eph := func(n int) {
		if _, err := env.broker.Publish(context.Background(), "room:a", pubsub.Message{Event: "presence_diff", Payload: fmt.Appendf(nil, `{"n":%d}`, n), Ephemeral: true}); err != nil {
			t.Fatal(err)
		}
	}
	env.broker.beforeHistory = func(string) { eph(1); publishN(t, env.broker, "room:a", 4, 4) }
	env.broker.afterHistory = func(string) { eph(2) }
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{"offset":"p:E1:2"}]`)
	conn.waitTexts(t, 5)
	// Event 4 was replayed and also buffered: it must not come twice.
	publishN(t, env.broker, "room:a", 5, 5)
	eph(3)
	want := []string{
		`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:4","recovered":true},"status":"ok"}]`,
		evFrame("room:a", `"p:E1:3"`, 3),
		evFrame("room:a", `"p:E1:4"`, 4),
		`[null,null,"room:a","presence_diff",{"n":1}]`,
		`[null,null,"room:a","presence_diff",{"n":2}]`,
		evFrame("room:a", `"p:E1:5"`, 5),
		`[null,null,"room:a","presence_diff",{"n":3}]`,
	}
	if got := conn.waitTexts(t, len(want)); !slices.Equal(got, want) {
		t.Fatalf("got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

// A resume that misses more than one history page (1,000 events) is read
// page by page, every event replayed once and in order.
func TestResumeReadsEveryPage(t *testing.T) {
	env := newTestEnv(t, func(c *Config) { c.MaxReplay = 2500; c.ReplayBytes = 1 << 20 })
	publishN(t, env.broker, "room:a", 1, 2300)
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{"offset":"p:E1:100"}]`)
	got := conn.waitTexts(t, 2201)
	if want := `["1","1","room:a","phx_reply",{"response":{"position":"p:E1:2300","recovered":true},"status":"ok"}]`; got[0] != want {
		t.Fatalf("reply %s", got[0])
	}
	for i := 101; i <= 2300; i++ {
		if want := evFrame("room:a", fmt.Sprintf(`"p:E1:%d"`, i), i); got[i-100] != want {
			t.Fatalf("frame %d: %s, want %s", i-100, got[i-100], want)
		}
	}
}

// The position Subscribe reports is where the topic's delivery starts: an
// event published after it whose delivery is late (a gap at the very
// start) is filled from history before the next one, not skipped.
func TestGapRightAfterSubscribeIsFilled(t *testing.T) {
	env := newTestEnv(t, nil)
	publishN(t, env.broker, "room:a", 1, 2)
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`) // subscribed at p:E1:2
	conn.waitTexts(t, 1)
	late := publishLate(t, env.broker, "room:a", 3) // stored, delivery held
	publishN(t, env.broker, "room:a", 4, 4)
	got := conn.waitTexts(t, 3)
	if want := []string{evFrame("room:a", "null", 3), evFrame("room:a", "null", 4)}; !slices.Equal(got[1:], want) {
		t.Fatalf("got %v, want %v", got[1:], want)
	}
	late() // its live copy, now a duplicate
	publishN(t, env.broker, "room:a", 5, 5)
	if got := conn.waitTexts(t, 4); got[3] != evFrame("room:a", "null", 5) || conn.count() != 4 {
		t.Fatalf("after the late copy: %v", got)
	}
}
