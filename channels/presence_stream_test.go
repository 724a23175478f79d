package channels

import (
	"context"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/phxgate/phxgate/pubsub"
)

// applyPieces applies pieces as phoenix.js's syncDiff applies joins: a
// key that joins again keeps the metas it had (in front).
func applyPieces(t *testing.T, pieces [][]byte) map[string][]json.RawMessage {
	t.Helper()
	list := map[string][]json.RawMessage{}
	for _, p := range pieces {
		var m map[string]struct {
			Metas []json.RawMessage `json:"metas"`
		}
		if err := json.Unmarshal(p, &m); err != nil {
			t.Fatalf("piece %s: %v", p, err)
		}
		for k, v := range m {
			list[k] = append(list[k], v.Metas...)
		}
	}
	return list
}

func stateOf(t *testing.T, state []byte) map[string][]json.RawMessage {
	t.Helper()
	return applyPieces(t, [][]byte{state})
}

func TestSplitState(t *testing.T) {
	meta := func(i, size int) string {
		return `{"pad":"` + strings.Repeat("x", size) + `","phx_ref":"r` + strconv.Itoa(i) + `"}`
	}
	big := func(keys, metasPerKey, size int) []byte {
		b := []byte("{")
		n := 0
		for k := range keys {
			if k > 0 {
				b = append(b, ',')
			}
			b = append(b, `"k`+strconv.Itoa(k)+`":{"metas":[`...)
			for m := range metasPerKey {
				if m > 0 {
					b = append(b, ',')
				}
				b = append(b, meta(n, size)...)
				n++
			}
			b = append(b, "]}"...)
		}
		return append(b, '}')
	}
	for _, tc := range []struct {
		name   string
		state  []byte
		max    int
		pieces int // 0: more than one
	}{
		{"small", []byte(`{"a":{"metas":[{"phx_ref":"1"}]}}`), 1024, 1},
		{"empty", []byte(`{}`), 1024, 1},
		{"not a presence shape", []byte(`{"v":1}`), 2, 1},
		{"many keys", big(100, 1, 100), 1024, 0},
		{"a key over a piece", big(3, 40, 100), 1024, 0},
		{"a meta over a piece", big(3, 2, 2000), 1024, 6},
		{"escaped keys", []byte(`{"a\"b":{"metas":[{"phx_ref":"1","x":"` + strings.Repeat("y", 50) + `"}]},"\u00e9":{"metas":[{"phx_ref":"2","x":"` + strings.Repeat("y", 50) + `"}]}}`), 80, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pieces := splitState(tc.state, tc.max)
			if tc.pieces != 0 && len(pieces) != tc.pieces || tc.pieces == 0 && len(pieces) < 2 {
				t.Fatalf("%d pieces", len(pieces))
			}
			if len(pieces) == 1 {
				if string(pieces[0]) != string(tc.state) {
					t.Fatalf("one piece %s, want the state itself", pieces[0])
				}
				return
			}
			for i, p := range pieces {
				var v map[string]any
				if err := json.Unmarshal(p, &v); err != nil {
					t.Fatalf("piece %d is not an object: %v", i, err)
				}
				if len(p) > tc.max && len(v) != 1 {
					t.Fatalf("piece %d: %d bytes over %d with %d keys", i, len(p), tc.max, len(v))
				}
			}
			if got, want := applyPieces(t, pieces), stateOf(t, tc.state); !reflect.DeepEqual(got, want) {
				t.Fatalf("pieces applied in order give another list")
			}
		})
	}
}

func TestWithOwnMeta(t *testing.T) {
	own := []byte(`{"seat":1,"phx_ref":"own"}`)
	for _, tc := range []struct{ name, state, key, want string }{
		{"empty", `{}`, "me", `{"me":{"metas":[{"seat":1,"phx_ref":"own"}]}}`},
		{"new key", `{"a":{"metas":[{"phx_ref":"1"}]}}`, "me", `{"a":{"metas":[{"phx_ref":"1"}]},"me":{"metas":[{"seat":1,"phx_ref":"own"}]}}`},
		{"known key", `{"me":{"metas":[{"phx_ref":"1"}]},"b":{"metas":[]}}`, "me", `{"me":{"metas":[{"phx_ref":"1"},{"seat":1,"phx_ref":"own"}]},"b":{"metas":[]}}`},
		{"known key, no metas", `{"me":{"metas":[ ]}}`, "me", `{"me":{"metas":[ {"seat":1,"phx_ref":"own"}]}}`},
		{"escaped key", `{}`, `a"b`, `{"a\"b":{"metas":[{"seat":1,"phx_ref":"own"}]}}`},
		{"not an object", `[1]`, "me", `[1]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := string(withOwnMeta([]byte(tc.state), tc.key, own))
			if got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// The budget: a taker waits for bytes given back, gives up when its
// context ends, and one larger than the whole budget fails at once; the
// gauge follows.
func TestStreamBudget(t *testing.T) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	b := newStreamBudget(100, g)
	ctx := context.Background()
	if !b.acquire(ctx, 60) || b.acquire(ctx, 101) {
		t.Fatal("acquire within the budget failed, or over it succeeded")
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if b.acquire(short, 50) {
		t.Fatal("acquired past the budget")
	}
	got := make(chan bool)
	go func() { got <- b.acquire(ctx, 50) }()
	b.release(60)
	if !<-got {
		t.Fatal("a waiter did not get the bytes given back")
	}
	snap := newSnapshot([][]byte{[]byte("{}"), []byte(`{"a":1}`)}, b, 0)
	snap.refs.Add(2)
	for range 3 {
		snap.done()
	}
	b.release(50)
	if b.inUse() != 0 {
		t.Fatalf("%d bytes still in use", b.inUse())
	}
	if v := gaugeValue(g); v != 0 {
		t.Fatalf("gauge %v, want 0", v)
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	_ = g.Write(&m)
	return m.GetGauge().GetValue()
}

// gatedBigState is a tracker whose state is 20 keys of about 130 bytes
// plus a key naming the read ("read<N>"); once shut, State waits until
// released (a slow store).
type gatedBigState struct {
	gatedState
}

func (g *gatedBigState) State(ctx context.Context, topic string) ([]byte, error) {
	n := g.reads.Load() + 1
	if _, err := g.gatedState.State(ctx, topic); err != nil {
		return nil, err
	}
	big, _ := (&bigState{}).State(ctx, topic)
	return append(big[:len(big)-1], `,"read`+strconv.FormatInt(n, 10)+`":{"metas":[{"phx_ref":"x"}]}}`...), nil
}

// A diff delivered while a join reads a state that goes in pieces went
// to the client before the state (phoenix.js holds it, then applies it
// after the first piece, where a later piece could undo it): it follows
// the last piece again, and the state is read once.
func TestPresencePiecesFollowedByTheDiffsOfTheRead(t *testing.T) {
	gs := &gatedBigState{gatedState{entered: make(chan struct{}, 1), release: make(chan struct{})}}
	gs.shut.Store(true)
	env := newTestEnv(t, func(c *Config) { c.Presence = gs; c.PresencePieceBytes = 1024 })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	<-gs.entered // the join reads the state
	if _, err := env.broker.Publish(context.Background(), "here:a", pubsub.Message{Event: "presence_diff", Payload: []byte(`{"joins":{},"leaves":{"gone":{"metas":[{"phx_ref":"g"}]}}}`), Ephemeral: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "the diff delivered", func() bool { return conn.count() >= 2 })
	gs.shut.Store(false)
	close(gs.release)
	waitFor(t, waitLong, "the pieces and the diff again", func() bool {
		got := conn.texts()
		return len(got) > 3 && strings.Contains(got[len(got)-1], `"gone"`) && strings.Contains(strings.Join(got, ""), `"read1"`)
	})
	got := conn.texts()
	if !strings.Contains(got[1], `"presence_diff"`) || !strings.Contains(got[2], `"presence_state"`) {
		t.Fatalf("frames: %.80s", got)
	}
	for _, f := range got[3 : len(got)-1] {
		if !strings.Contains(f, `"presence_diff",{"joins":{"p`) && !strings.Contains(f, `"read1"`) {
			t.Fatalf("between the first piece and the diff again: %.120s, want pieces only", f)
		}
	}
	if n := gs.reads.Load(); n != 1 {
		t.Fatalf("%d state reads, want 1", n)
	}
	if n := counterValue(t, env.reg, "phxgate_presence_state_streams_total", ""); n != 0 {
		t.Fatalf("streams = %v on a transport without streams, want 0", n)
	}
	waitFor(t, waitLong, "the budget back to zero", func() bool { return env.srv.stateBudget.inUse() == 0 })
}
