package phx

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func sp(s string) *string { return &s }

func TestEncode(t *testing.T) {
	tests := []struct {
		name    string
		ser     serializer
		joinRef *string
		ref     *string
		topic   string
		event   string
		payload string
		want    string
	}{
		{"v2 heartbeat", v2Serializer{}, nil, sp("7"), "phoenix", "heartbeat", "{}", `[null,"7","phoenix","heartbeat",{}]`},
		{"v2 push", v2Serializer{}, sp("1"), sp("2"), "room:a", "echo", `{"x":1}`, `["1","2","room:a","echo",{"x":1}]`},
		{"v2 escaping", v2Serializer{}, sp("1"), sp("2"), `ro"om`, "e", `{}`, `["1","2","ro\"om","e",{}]`},
		{"v1 join", v1Serializer{}, sp("3"), sp("3"), "room:a", "phx_join", `{}`, `{"topic":"room:a","event":"phx_join","payload":{},"ref":"3","join_ref":"3"}`},
		{"v1 heartbeat", v1Serializer{}, nil, sp("4"), "phoenix", "heartbeat", `{}`, `{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"4"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := string(tc.ser.encode(tc.joinRef, tc.ref, tc.topic, tc.event, []byte(tc.payload)))
			if got != tc.want {
				t.Fatalf("encode = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		ser     serializer
		in      string
		joinRef string
		ref     *string
		topic   string
		event   string
		payload string
		err     bool
	}{
		{name: "v2 reply", ser: v2Serializer{}, in: `["1","2","room:a","phx_reply",{"status":"ok","response":{}}]`,
			joinRef: "1", ref: sp("2"), topic: "room:a", event: "phx_reply", payload: `{"status":"ok","response":{}}`},
		{name: "v2 broadcast", ser: v2Serializer{}, in: `[null,null,"room:a","shout",{"m":1}]`, topic: "room:a", event: "shout", payload: `{"m":1}`},
		{name: "v2 position ref", ser: v2Serializer{}, in: `[null,"p:ABCDEFGH:3","room:a","ev",{}]`, ref: sp("p:ABCDEFGH:3"), topic: "room:a", event: "ev", payload: `{}`},
		{name: "v2 extra elements ignored", ser: v2Serializer{}, in: `[null,null,"t","e",{},1]`, topic: "t", event: "e", payload: `{}`},
		{name: "v2 short", ser: v2Serializer{}, in: `[null,null,"t","e"]`, err: true},
		{name: "v2 not json", ser: v2Serializer{}, in: `[`, err: true},
		{name: "v1 reply", ser: v1Serializer{}, in: `{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"room:lobby"}`,
			ref: sp("1"), topic: "room:lobby", event: "phx_reply", payload: `{"response":{},"status":"ok"}`},
		{name: "v1 missing topic", ser: v1Serializer{}, in: `{"event":"e","payload":{},"ref":null}`, err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tc.ser.decode([]byte(tc.in))
			if tc.err {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.JoinRef != tc.joinRef || m.Topic != tc.topic || m.Event != tc.event || string(m.Payload) != tc.payload {
				t.Fatalf("got %+v", m)
			}
			if (m.Ref == nil) != (tc.ref == nil) || (m.Ref != nil && *m.Ref != *tc.ref) {
				t.Fatalf("ref = %v, want %v", m.Ref, tc.ref)
			}
		})
	}
}

func TestBinaryPushEncoding(t *testing.T) {
	got, err := encodeBinaryPush("1", "23", "room:a", "echo", []byte{0xff, 0x00})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte{0, 1, 2, 6, 4}, "123room:aecho\xff\x00"...)
	if !bytes.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if _, err := encodeBinaryPush("1", "2", strings.Repeat("t", 256), "e", nil); !errors.Is(err, ErrFieldTooLong) {
		t.Fatalf("256-byte topic: err = %v, want ErrFieldTooLong", err)
	}
}

func TestDecodeBinary(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		msg     Message
		status  string
		wantErr bool
	}{
		{name: "push kind 0", in: append([]byte{0, 1, 6, 2}, "5room:aevPAY"...),
			msg: Message{JoinRef: "5", Topic: "room:a", Event: "ev", Binary: []byte("PAY")}},
		{name: "reply kind 1", in: append([]byte{1, 1, 2, 6, 2}, "512room:aok\x01\x02"...),
			msg: Message{JoinRef: "5", Ref: sp("12"), Topic: "room:a", Event: "phx_reply", Binary: []byte{1, 2}}, status: "ok"},
		{name: "broadcast kind 2", in: append([]byte{2, 6, 5}, "room:ashout"...),
			msg: Message{Topic: "room:a", Event: "shout", Binary: []byte{}}},
		{name: "unknown kind", in: []byte{3, 0, 0}, wantErr: true},
		{name: "empty", in: nil, wantErr: true},
		{name: "short header", in: []byte{1, 0}, wantErr: true},
		{name: "length overrun", in: []byte{2, 200, 1, 'a'}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, status, err := decodeBinary(tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.JoinRef != tc.msg.JoinRef || m.Topic != tc.msg.Topic || m.Event != tc.msg.Event ||
				!bytes.Equal(m.Binary, tc.msg.Binary) || status != tc.status {
				t.Fatalf("got %+v status %q, want %+v status %q", m, status, tc.msg, tc.status)
			}
			if (m.Ref == nil) != (tc.msg.Ref == nil) || (m.Ref != nil && *m.Ref != *tc.msg.Ref) {
				t.Fatalf("ref = %v, want %v", m.Ref, tc.msg.Ref)
			}
		})
	}
}

func FuzzDecodeBinary(f *testing.F) {
	f.Add([]byte{1, 1, 2, 6, 2, '5', '1', '2'})
	f.Add([]byte{2, 0, 0})
	f.Add([]byte{0, 255, 255, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = decodeBinary(b) // must not panic
	})
}

func FuzzDecodeV2(f *testing.F) {
	f.Add([]byte(`[null,null,"t","e",{}]`))
	f.Add([]byte(`[1,2,3,4,5]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = v2Serializer{}.decode(b)
		_, _ = v1Serializer{}.decode(b)
	})
}

func TestMarshalPayload(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
		err  bool
	}{
		{"nil", nil, "{}", false},
		{"map", map[string]int{"a": 1}, `{"a":1}`, false},
		{"raw", []byte(`"x"`), `"Ingi"`, false}, // []byte marshals as base64, as encoding/json does
		{"raw message", jsonRaw(`{"b":2}`), `{"b":2}`, false},
		{"bad raw", jsonRaw(`{`), "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := marshalPayload(tc.in)
			if (err != nil) != tc.err || (!tc.err && string(got) != tc.want) {
				t.Fatalf("marshalPayload = %s, %v; want %s err=%v", got, err, tc.want, tc.err)
			}
		})
	}
}

func jsonRaw(s string) any { return json.RawMessage(s) }
