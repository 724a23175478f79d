package backends

import (
	"context"
	"errors"
	"testing"
)

func call(event, payload string) *Call {
	return &Call{Topic: "room:1", Event: event, JoinRef: "1", Ref: "2", Payload: Payload{Data: []byte(payload)}}
}

func mustReply(tb testing.TB, r *Reply, err error) *Reply {
	tb.Helper()
	if err != nil {
		tb.Fatalf("unexpected error: %v", err)
	}
	if r == nil {
		tb.Fatal("nil reply")
	}
	return r
}

func TestEchoJoin(t *testing.T) {
	tests := []struct {
		name, payload, status, response string
	}{
		{"empty object", `{}`, "ok", ""},
		{"null", `null`, "ok", ""},
		{"deny false", `{"deny":false}`, "ok", ""},
		{"deny true", `{"deny":true}`, "error", `{"reason":"denied"}`},
		{"deny string is not a denial", `{"deny":"yes"}`, "ok", ""},
		{"array", `[1]`, "ok", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Echo{}.Join(context.Background(), call("phx_join", tc.payload))
			r = mustReply(t, r, err)
			if r.Status != tc.status || string(r.Response.Data) != tc.response {
				t.Fatalf("got %q %s, want %q %s", r.Status, r.Response.Data, tc.status, tc.response)
			}
		})
	}
}

func TestEchoHandleIn(t *testing.T) {
	tests := []struct {
		name       string
		call       *Call
		status     string
		response   string
		binary     bool
		broadcasts []Message
		stop       Stop
	}{
		{name: "echo", call: call("echo", `{"a":1}`), status: "ok", response: `{"a":1}`},
		{name: "echo binary", call: &Call{Topic: "room:1", Event: "echo", Payload: Payload{Data: []byte{0, 1, 2}, Binary: true}},
			status: "ok", response: "\x00\x01\x02", binary: true},
		{name: "shout", call: call("shout", `{"m":"hi"}`), status: "ok",
			broadcasts: []Message{{Topic: "room:1", Event: "shout", Payload: Payload{Data: []byte(`{"m":"hi"}`)}}}},
		{name: "noreply", call: call("noreply", `{}`)},
		{name: "crash", call: call("crash", `{}`), stop: StopCrash},
		{name: "unknown", call: call("dance", `{}`), status: "error", response: `{"reason":"unknown event"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Echo{}.HandleIn(context.Background(), tc.call)
			r = mustReply(t, r, err)
			if r.Status != tc.status || string(r.Response.Data) != tc.response || r.Response.Binary != tc.binary {
				t.Fatalf("got %q %q binary=%v, want %q %q binary=%v",
					r.Status, r.Response.Data, r.Response.Binary, tc.status, tc.response, tc.binary)
			}
			if r.Stop != tc.stop {
				t.Fatalf("Stop = %v, want %v", r.Stop, tc.stop)
			}
			assertMessages(t, r.Broadcasts, tc.broadcasts)
			if len(r.Pushes) != 0 {
				t.Fatalf("unexpected pushes %+v", r.Pushes)
			}
		})
	}
	if err := (Echo{}).Leave(context.Background(), call("phx_leave", `{}`), LeaveLeft); err != nil {
		t.Fatalf("Leave: %v", err)
	}
}

func assertMessages(tb testing.TB, got, want []Message) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("got %d messages %+v, want %d", len(got), got, len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Topic != w.Topic || g.Event != w.Event || string(g.Payload.Data) != string(w.Payload.Data) || g.Payload.Binary != w.Payload.Binary {
			tb.Fatalf("message %d = %s %s %s, want %s %s %s", i, g.Topic, g.Event, g.Payload.Data, w.Topic, w.Event, w.Payload.Data)
		}
	}
}

func TestBenchJoin(t *testing.T) {
	for _, p := range []string{`{}`, `null`, ``, `{"x":1}`, `[]`} {
		t.Run(p, func(t *testing.T) {
			r, err := Bench{}.Join(context.Background(), call("phx_join", p))
			r = mustReply(t, r, err)
			if r.Status != "ok" || len(r.Response.Data) != 0 {
				t.Fatalf("got %q %s, want ok {}", r.Status, r.Response.Data)
			}
		})
	}
}

func TestBenchHandleIn(t *testing.T) {
	tests := []struct {
		name, event, payload, status, response string
		broadcast                              string
	}{
		{name: "echo string", event: "echo", payload: `{"body":"hi"}`, status: "ok", response: `{"type":"echo","body":"hi"}`},
		{name: "echo verbatim body", event: "echo", payload: `{"body": {"b":1.50, "a":[1,2]} }`, status: "ok",
			response: `{"type":"echo","body":{"b":1.50, "a":[1,2]}}`},
		{name: "echo missing body", event: "echo", payload: `{}`, status: "ok", response: `{"type":"echo","body":null}`},
		{name: "broadcast", event: "broadcast", payload: `{"body":{"t":123}}`, status: "ok",
			response: `{"type":"broadcastResult","body":{"t":123}}`, broadcast: `{"type":"broadcast","body":{"t":123}}`},
		{name: "not an object", event: "echo", payload: `[1]`, status: "error", response: `{"reason":"invalid payload"}`},
		{name: "null", event: "echo", payload: `null`, status: "error", response: `{"reason":"invalid payload"}`},
		{name: "unknown event", event: "dance", payload: `{}`, status: "error", response: `{"reason":"unknown event"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Bench{}.HandleIn(context.Background(), call(tc.event, tc.payload))
			r = mustReply(t, r, err)
			if r.Status != tc.status || string(r.Response.Data) != tc.response {
				t.Fatalf("got %q %s, want %q %s", r.Status, r.Response.Data, tc.status, tc.response)
			}
			var want []Message
			if tc.broadcast != "" {
				want = []Message{{Topic: "room:1", Event: "broadcast", Payload: Payload{Data: []byte(tc.broadcast)}}}
			}
			assertMessages(t, r.Broadcasts, want)
		})
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		spec string
		want Backend
	}{
		{"echo", Echo{}},
		{"bench", Bench{}},
		{"", nil},
		{"ECHO", nil},
		{"ftp://127.0.0.1:1", nil},
		{"grpc:127.0.0.1:1", nil},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			b, err := New(tc.spec)
			if tc.want == nil {
				if !errors.Is(err, ErrUnknownBackend) || b != nil {
					t.Fatalf("New(%q) = %v, %v; want ErrUnknownBackend", tc.spec, b, err)
				}
				return
			}
			if err != nil || b != tc.want {
				t.Fatalf("New(%q) = %v, %v; want %T", tc.spec, b, err, tc.want)
			}
		})
	}
}

func BenchmarkBenchEcho(b *testing.B) {
	c := call("echo", `{"body":{"action":"echo","payload":{"sendTime":"1700000000000"}}}`)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Bench{}.HandleIn(context.Background(), c)
	}
}
