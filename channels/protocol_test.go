package channels

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/phxgate/phxgate/backends"
)

type protoStep struct {
	send string   // client message, V2 notation
	want []string // frames this step produces, V2 notation, in order
}

// The reaction table of PROTOCOL.md §3.1, in V2 notation. Every scenario
// runs for V2 text, V1 (translated: V1 frames drop join_ref) and V2 binary
// (client pushes as binary kind 0; refs become strings).
var protocolTable = []struct {
	name     string
	maxChans int
	noBinary bool // non-string refs or JSON payload expectations binary frames cannot meet
	steps    []protoStep
}{
	{name: "heartbeat with no channels", steps: []protoStep{
		{`[null,"1","phoenix","heartbeat",{}]`, []string{`[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]`}},
	}},
	{name: "join ok", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
	}},
	{name: "join reply precedes the channel's pushes", steps: []protoStep{
		{`["1","1","room:pushy","phx_join",{}]`, []string{
			`["1","1","room:pushy","phx_reply",{"response":{"hello":1},"status":"ok"}]`,
			`["1",null,"room:pushy","welcome",{"w":1}]`,
		}},
	}},
	{name: "join refused keeps no channel", steps: []protoStep{
		{`["1","1","room:deny","phx_join",{}]`, []string{`["1","1","room:deny","phx_reply",{"response":{"reason":"denied"},"status":"error"}]`}},
		{`["1","2","room:deny","ping",{}]`, []string{`[null,"2","room:deny","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`}},
	}},
	{name: "join crashed", steps: []protoStep{
		{`["1","1","room:crash","phx_join",{}]`, []string{`["1","1","room:crash","phx_reply",{"response":{"reason":"join crashed"},"status":"error"}]`}},
	}},
	{name: "join backend unavailable", steps: []protoStep{
		{`["1","1","room:unavail","phx_join",{}]`, []string{`["1","1","room:unavail","phx_reply",{"response":{"reason":"backend_unavailable"},"status":"error"}]`}},
	}},
	{name: "join without a route", steps: []protoStep{
		{`["1","1","nope","phx_join",{}]`, []string{`[null,"1","nope","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`}},
	}},
	{name: "too many channels", maxChans: 2, steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["2","2","room:b","phx_join",{}]`, []string{`["2","2","room:b","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["3","3","room:c","phx_join",{}]`, []string{`["3","3","room:c","phx_reply",{"response":{"reason":"too many channels joined"},"status":"error"}]`}},
	}},
	{name: "duplicate join closes the old join after the new reply", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["3","3","room:a","phx_join",{}]`, []string{
			`["3","3","room:a","phx_reply",{"response":{},"status":"ok"}]`,
			`["1","1","room:a","phx_close",{}]`,
		}},
		{`["1","4","room:a","ping",{}]`, nil},
		{`["3","5","room:a","ping",{}]`, []string{`["3","5","room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]`}},
	}},
	{name: "leave", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["1","2","room:a","phx_leave",{}]`, []string{
			`["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`,
			`["1","1","room:a","phx_close",{}]`,
		}},
		{`["1","3","room:a","ping",{}]`, []string{`[null,"3","room:a","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`}},
	}},
	{name: "leave with null join_ref", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`[null,"2","room:a","phx_leave",{}]`, []string{
			`["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`,
			`["1","1","room:a","phx_close",{}]`,
		}},
	}},
	{name: "leave with stale join_ref is ignored", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["9","2","room:a","phx_leave",{}]`, nil},
		{`["1","3","room:a","ping",{}]`, []string{`["1","3","room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]`}},
	}},
	{name: "leave when not joined", steps: []protoStep{
		{`["5","2","room:z","phx_leave",{}]`, []string{`["5","2","room:z","phx_reply",{"response":{},"status":"ok"}]`}},
	}},
	{name: "event", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["1","2","room:a","ping",{}]`, []string{`["1","2","room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]`}},
	}},
	{name: "event with null join_ref", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`[null,"2","room:a","ping",{}]`, []string{`["1","2","room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]`}},
	}},
	{name: "event with stale join_ref is dropped", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["7","2","room:a","ping",{}]`, nil},
		{`["1","3","room:a","ping",{}]`, []string{`["1","3","room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]`}},
	}},
	{name: "event when not joined", steps: []protoStep{
		{`["1","2","room:z","ping",{}]`, []string{`[null,"2","room:z","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`}},
	}},
	{name: "noreply", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["1","2","room:a","noreply",{}]`, nil},
		{`["1","3","room:a","ping",{}]`, []string{`["1","3","room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]`}},
	}},
	{name: "crash", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["1","2","room:a","crash",{}]`, []string{`["1","1","room:a","phx_error",{"reason":"channel_crash"}]`}},
		{`["1","3","room:a","ping",{}]`, []string{`[null,"3","room:a","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`}},
	}},
	{name: "stop crash", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["1","2","room:a","stopcrash",{}]`, []string{`["1","1","room:a","phx_error",{"reason":"channel_crash"}]`}},
	}},
	{name: "stop normal", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["1","2","room:a","stop",{}]`, []string{
			`["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`,
			`["1","1","room:a","phx_close",{}]`,
		}},
	}},
	{name: "push after reply", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["1","2","room:a","push",{}]`, []string{
			`["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`,
			`["1",null,"room:a","pushed",{"n":1}]`,
		}},
	}},
	{name: "event backend unavailable", steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["1","2","room:a","unavail",{}]`, []string{`["1","2","room:a","phx_reply",{"response":{"reason":"backend_unavailable"},"status":"error"}]`}},
	}},
	{name: "refs echoed with their JSON type", noBinary: true, steps: []protoStep{
		{`[null,7,"phoenix","heartbeat",{}]`, []string{`[null,7,"phoenix","phx_reply",{"response":{},"status":"ok"}]`}},
		{`[1,2,"room:a","phx_join",{}]`, []string{`[1,2,"room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`[1,"x","room:a","ping",{}]`, []string{`[1,"x","room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]`}},
		{`["1",3,"room:a","ping",{}]`, nil},
		{`[1,null,"room:a","ping",{}]`, []string{`[1,null,"room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]`}},
	}},
	{name: "shout reaches the sender before its reply", noBinary: true, steps: []protoStep{
		{`["1","1","room:a","phx_join",{}]`, []string{`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`}},
		{`["1","2","room:a","shout",{"m":"hi"}]`, []string{
			`[null,null,"room:a","shout",{"m":"hi"}]`,
			`["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`,
		}},
	}},
}

func TestProtocolTable(t *testing.T) {
	for _, mode := range []string{"v2", "v1", "binary"} {
		for _, tc := range protocolTable {
			if mode == "binary" && tc.noBinary {
				continue
			}
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				env := newTestEnv(t, func(c *Config) {
					if tc.maxChans > 0 {
						c.MaxChannels = tc.maxChans
					}
				})
				ser := V2
				if mode == "v1" {
					ser = V1
				}
				sock, conn := env.connect(t, ser)
				var want []string
				for _, st := range tc.steps {
					var err error
					switch mode {
					case "v1":
						err = sock.HandleText([]byte(v2ToV1(t, st.send, false)))
					case "binary":
						err = sock.HandleBinary(v2ToBinary(t, st.send))
					default:
						err = sock.HandleText([]byte(st.send))
					}
					if err != nil {
						t.Fatalf("send %s: %v", st.send, err)
					}
					for _, w := range st.want {
						if mode == "v1" {
							w = v2ToV1(t, w, true)
						}
						want = append(want, w)
					}
					got := conn.waitTexts(t, len(want))
					if !slices.Equal(got, want) {
						t.Fatalf("after %s\n got %s\nwant %s", st.send, strings.Join(got, "\n     "), strings.Join(want, "\n     "))
					}
				}
				sock.Terminate(backends.LeaveDisconnected)
			})
		}
	}
}

func TestV1WebsocketBenchJoin(t *testing.T) {
	env := newTestEnv(t, nil)
	sock, conn := env.connect(t, V1)
	mustHandle(t, sock, `{"topic":"room:bench","event":"phx_join","payload":null,"ref":""}`)
	got := conn.waitTexts(t, 1)
	want := `{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"","topic":"room:bench"}`
	if got[0] != want {
		t.Fatalf("got %s\nwant %s", got[0], want)
	}
	if pl := env.backend.joinPl[0]; string(pl) != "null" {
		t.Fatalf("backend join payload %q, want null", pl)
	}
}

// A V1 client sends no join_ref: the channel's join_ref is its ref, and
// phx_close / phx_error carry a null ref.
func TestV1CloseRefWithoutJoinRef(t *testing.T) {
	for _, tc := range []struct {
		event string
		want  string
	}{
		{"crash", `{"event":"phx_error","payload":{"reason":"channel_crash"},"ref":null,"topic":"room:a"}`},
		{"phx_leave", `{"event":"phx_close","payload":{},"ref":null,"topic":"room:a"}`},
	} {
		t.Run(tc.event, func(t *testing.T) {
			env := newTestEnv(t, nil)
			sock, conn := env.connect(t, V1)
			mustHandle(t, sock, `{"topic":"room:a","event":"phx_join","payload":{},"ref":"1"}`)
			conn.waitTexts(t, 1)
			mustHandle(t, sock, `{"topic":"room:a","event":"`+tc.event+`","payload":{},"ref":"2"}`)
			got := conn.waitTexts(t, 2)
			if got[len(got)-1] != tc.want {
				t.Fatalf("got %v\nwant last %s", got, tc.want)
			}
			waitFor(t, waitLong, "leave", func() bool {
				l := env.backend.logged()
				return len(l) > 0 && strings.HasPrefix(l[len(l)-1], "leave room:a 1 ")
			})
			if l := env.backend.logged(); l[0] != "join room:a 1" {
				t.Fatalf("join_ref passed to backend: %v", l)
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ser    Serializer
		binary bool
		msg    string
	}{
		{"v2 bad json", V2, false, `["1","1","room:a","phx_join",{}`},
		{"v2 not an array", V2, false, `{"topic":"a"}`},
		{"v2 four elements", V2, false, `["1","1","room:a","phx_join"]`},
		{"v2 numeric topic", V2, false, `["1","1",5,"phx_join",{}]`},
		{"v2 null event", V2, false, `["1","1","room:a",null,{}]`},
		{"v2 array payload", V2, false, `["1","1","room:a","x",[]]`},
		{"v2 string payload", V2, false, `["1","1","room:a","x","p"]`},
		{"v2 object ref", V2, false, `["1",{},"room:a","x",{}]`},
		{"v2 array join_ref", V2, false, `[[],"1","room:a","x",{}]`},
		{"v1 bad json", V1, false, `{"topic":`},
		{"v1 array", V1, false, `["1","1","room:a","phx_join",{}]`},
		{"v1 missing ref", V1, false, `{"topic":"a","event":"b","payload":{}}`},
		{"v1 missing payload", V1, false, `{"topic":"a","event":"b","ref":"1"}`},
		{"v1 missing topic", V1, false, `{"event":"b","payload":{},"ref":"1"}`},
		{"v1 non-string topic", V1, false, `{"topic":1,"event":"b","payload":{},"ref":"1"}`},
		{"v1 number payload", V1, false, `{"topic":"a","event":"b","payload":1,"ref":"1"}`},
		{"v1 binary frame", V1, true, "\x00\x00\x00\x01\x01ab"},
		{"binary unknown kind", V2, true, "\x03\x00\x00\x01\x01ab"},
		{"binary reply kind from client", V2, true, "\x01\x00\x00\x01\x01ab"},
		{"binary truncated header", V2, true, "\x00\x01"},
		{"binary truncated fields", V2, true, "\x00\x05\x05\x05\x05abc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newTestEnv(t, nil)
			sock, _ := env.connect(t, tc.ser)
			var err error
			if tc.binary {
				err = sock.HandleBinary([]byte(tc.msg))
			} else {
				err = sock.HandleText([]byte(tc.msg))
			}
			var ce *CloseError
			if !errorsAs(err, &ce) || ce.Code != CloseInternalError || ce.Reason != ReasonMalformed {
				t.Fatalf("got %v, want CloseError 1011 malformed", err)
			}
			if !errorsIs(err, ErrMalformed) {
				t.Fatalf("%v does not wrap ErrMalformed", err)
			}
		})
	}
}

func TestV2ExtraElementsIgnored(t *testing.T) {
	env := newTestEnv(t, nil)
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `[null,"1","phoenix","heartbeat",{},"extra",[1,2]]`)
	if got := conn.waitTexts(t, 1); got[0] != `[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]` {
		t.Fatal(got)
	}
}

func TestBinaryReplyAndPush(t *testing.T) {
	env := newTestEnv(t, nil)
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	conn.waitTexts(t, 1)
	if err := sock.HandleBinary(binaryPush("1", "2", "room:a", "echo", []byte{0, 1, 2})); err != nil {
		t.Fatal(err)
	}
	got := conn.waitTexts(t, 2)
	if want := "bin:1|1|2|room:a|ok|\x00\x01\x02"; got[1] != want {
		t.Fatalf("got %q want %q", got[1], want)
	}
	// A binary shout is a kind 2 broadcast.
	if err := sock.HandleBinary(binaryPush("1", "3", "room:a", "shout", []byte("raw"))); err != nil {
		t.Fatal(err)
	}
	got = conn.waitTexts(t, 4)
	if want := "bin:2|room:a|shout|raw"; got[2] != want {
		t.Fatalf("got %q want %q", got[2], want)
	}
}

// Idempotency keys are unique per call whatever the client's refs (null,
// or holding ':'), unique across servers that share a node id and
// connection ids, and a push's own "idempotency_key" from an identified
// player gives the same key on every socket of that player.
func TestIdempotencyKey(t *testing.T) {
	keysOf := func(env *testEnv) []string {
		env.backend.mu.Lock()
		defer env.backend.mu.Unlock()
		return slices.Clone(env.backend.keys)
	}
	connect := func(env *testEnv, player string) (*Socket, *fakeConn) {
		c := newFakeConn(t)
		return env.srv.Connect(c, ConnectInfo{Serializer: V2, Params: []byte(`{}`), PlayerID: player}), c
	}
	envA, envB := newTestEnv(t, nil), newTestEnv(t, nil) // same node id "n1"
	var all []string
	for _, env := range []*testEnv{envA, envB} {
		sock, conn := connect(env, "")
		mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
		mustHandle(t, sock, `["1",null,"room:a","ping",{}]`)
		mustHandle(t, sock, `["1",null,"room:a","ping",{}]`)
		mustHandle(t, sock, `["1","a:b","room:a","ping",{}]`)
		mustHandle(t, sock, `["1","2","room:a","ping",{"idempotency_key":"anon-ignored"}]`)
		conn.waitTexts(t, 5)
		keys := keysOf(env)
		if len(keys) != 5 {
			t.Fatalf("keys %v, want 5", keys)
		}
		prefix := env.srv.InstanceID() + ":" + strconv.FormatUint(conn.ID(), 10) + ":1:"
		for _, k := range keys {
			if !strings.HasPrefix(k, prefix) {
				t.Fatalf("key %q, want prefix %q (instance:conn:gen:seq)", k, prefix)
			}
		}
		all = append(all, keys...)
	}
	if envA.srv.InstanceID() == envB.srv.InstanceID() {
		t.Fatal("two servers share an instance id")
	}
	seen := map[string]bool{}
	for _, k := range all {
		if seen[k] {
			t.Fatalf("key %q given twice in %v", k, all)
		}
		seen[k] = true
	}

	// A player's own key: the same on two sockets (a reconnect elsewhere),
	// unambiguous when the player id holds ':'; too long or not a string:
	// ignored.
	env := newTestEnv(t, nil)
	for i, player := range []string{"alice", "alice", "a:b%"} {
		sock, conn := connect(env, player)
		mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
		mustHandle(t, sock, fmt.Sprintf(`["1","%d","room:a","bet",{"amount":5,"idempotency_key":"bet-1"}]`, 7+i))
		conn.waitTexts(t, 2)
	}
	// 30 × é escaped is 180 bytes of source but 60 bytes of key: valid.
	sock, conn := connect(env, "bob")
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	mustHandle(t, sock, `["1","2","room:a","bet",{"idempotency_key":"`+strings.Repeat(`\u00e9`, 30)+`"}]`)
	conn.waitTexts(t, 2)
	keys := keysOf(env)
	if keys[1] != "player:alice:bet-1" || keys[3] != "player:alice:bet-1" || keys[5] != "player:a%3Ab%25:bet-1" ||
		keys[7] != "player:bob:"+strings.Repeat("é", 30) {
		t.Fatalf("player keys %v", keys)
	}
	// A key the client relies on but that cannot be used is refused, not
	// replaced: too long, not a string, a lone surrogate (which decoding
	// would merge with others), given twice.
	before := len(keysOf(env))
	bad := []string{
		`{"idempotency_key":"` + strings.Repeat("k", MaxClientKeyBytes+1) + `"}`,
		`{"idempotency_key":12}`,
		`{"idempotency_key":"\ud800"}`,
		`{"idempotency_key":"a","idempotency_key":"b"}`,
		`{"idempotency_key":""}`,
	}
	for i, p := range bad {
		mustHandle(t, sock, fmt.Sprintf(`["1","%d","room:a","bet",%s]`, 10+i, p))
	}
	got := conn.waitTexts(t, 2+len(bad))
	for i := range bad {
		if want := fmt.Sprintf(`["1","%d","room:a","phx_reply",{"response":{"reason":"bad_idempotency_key"},"status":"error"}]`, 10+i); got[2+i] != want {
			t.Fatalf("bad key %s: got %s", bad[i], got[2+i])
		}
	}
	if n := len(keysOf(env)); n != before {
		t.Fatalf("a push with a bad key reached the backend (%d calls, was %d)", n, before)
	}
}
