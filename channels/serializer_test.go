package channels

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/pubsub"
)

func TestFrameHeaderSizes(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 0xFFFF, 0x10000, 70000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			b := newFrameBuf(n)
			b = append(b, bytes.Repeat([]byte{'x'}, n)...)
			f := finishFrame(b, opText)
			wantHdr := 2
			if n >= 126 {
				wantHdr = 4
			}
			if n > 0xFFFF {
				wantHdr = 10
			}
			if len(f) != n+wantHdr {
				t.Fatalf("frame %d bytes, want %d", len(f), n+wantHdr)
			}
			got := parseServerFrame(t, f)
			if got.op != opText || len(got.payload) != n {
				t.Fatalf("op %d len %d", got.op, len(got.payload))
			}
		})
	}
}

func TestEncodeOneAllocation(t *testing.T) {
	ev := &pubsub.Event{Topic: "room:lobby", Event: "new_msg", Payload: []byte(`{"body":"hello world","user":"u1"}`), Pos: posE7}
	for v := range numVariants - 1 {
		allocs := testing.AllocsPerRun(100, func() { _, _ = encodeBroadcast(v, ev) })
		if allocs != 1 {
			t.Errorf("variant %d: %v allocs per frame, want 1", v, allocs)
		}
	}
}

func TestEncoders(t *testing.T) {
	p := backends.Payload{Data: []byte(`{"a":1}`)}
	for _, tc := range []struct {
		name string
		got  func() ([]byte, error)
		want string
	}{
		{"v1 push", func() ([]byte, error) { return encodeMessage(V1, `"1"`, "null", "t", "e", p) }, `{"event":"e","payload":{"a":1},"ref":null,"topic":"t"}`},
		{"v2 push", func() ([]byte, error) { return encodeMessage(V2, `"1"`, "null", "t", "e", p) }, `["1",null,"t","e",{"a":1}]`},
		{"v2 push empty payload", func() ([]byte, error) { return encodeMessage(V2, `"1"`, "null", "t", "e", backends.Payload{}) }, `["1",null,"t","e",{}]`},
		{"v2 reply", func() ([]byte, error) { return encodeReply(V2, `"1"`, `"2"`, "t", "ok", p) }, `["1","2","t","phx_reply",{"response":{"a":1},"status":"ok"}]`},
		{"v1 reply", func() ([]byte, error) { return encodeReply(V1, `"1"`, `"2"`, "t", "ok", p) }, `{"event":"phx_reply","payload":{"response":{"a":1},"status":"ok"},"ref":"2","topic":"t"}`},
		{"v1 binary reply becomes {}", func() ([]byte, error) {
			return encodeReply(V1, `"1"`, `"2"`, "t", "ok", backends.Payload{Data: []byte{1}, Binary: true})
		}, `{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"2","topic":"t"}`},
		{"escaped topic", func() ([]byte, error) { return encodeMessage(V2, "null", "null", "a\"b\\c\n\x01/é", "e", p) }, `[null,null,"a\"b\\c\n\u0001/é","e",{"a":1}]`},
		{"binary push", func() ([]byte, error) {
			return encodeMessage(V2, `"12"`, "null", "t", "e", backends.Payload{Data: []byte("xy"), Binary: true})
		}, "bin:0|12|t|e|xy"},
		{"binary reply", func() ([]byte, error) {
			return encodeReply(V2, `"1"`, `"2"`, "t", "ok", backends.Payload{Data: []byte("xy"), Binary: true})
		}, "bin:1|1|2|t|ok|xy"},
		{"binary reply null refs", func() ([]byte, error) {
			return encodeReply(V2, "null", "null", "t", "ok", backends.Payload{Data: []byte("xy"), Binary: true})
		}, "bin:1|||t|ok|xy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := tc.got()
			if err != nil {
				t.Fatal(err)
			}
			fr := parseServerFrame(t, f)
			got := string(fr.payload)
			if fr.op == opBinary {
				got = renderBinary(fr.payload)
			} else if !json.Valid(fr.payload) {
				t.Fatalf("invalid JSON %s", fr.payload)
			}
			if got != tc.want {
				t.Fatalf("got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestBinaryStringTooLong(t *testing.T) {
	long := strings.Repeat("x", maxBinaryString+1)
	ok := strings.Repeat("x", maxBinaryString)
	if _, err := encodeBinaryPush("", ok, ok, nil); err != nil {
		t.Fatalf("255 bytes: %v", err)
	}
	for name, f := range map[string]func() ([]byte, error){
		"push topic":      func() ([]byte, error) { return encodeBinaryPush("", long, "e", nil) },
		"reply status":    func() ([]byte, error) { return encodeBinaryReply("", "", "t", long, nil) },
		"broadcast event": func() ([]byte, error) { return encodeBinaryBroadcast("t", long, nil) },
	} {
		if _, err := f(); !errors.Is(err, ErrStringTooLong) {
			t.Errorf("%s: %v, want ErrStringTooLong", name, err)
		}
	}
}

func TestDecodeV2Tokens(t *testing.T) {
	var m message
	in := `[ "1" , 2 , "ro\u006fm:a" , "ev" , {"x":[1,"]"]} ]`
	if err := decodeV2([]byte(in), &m); err != nil {
		t.Fatal(err)
	}
	if string(m.joinRef) != `"1"` || string(m.ref) != `2` || string(m.topic) != "room:a" || string(m.event) != "ev" || string(m.payload) != `{"x":[1,"]"]}` {
		t.Fatalf("%+v", m)
	}
}

func TestRouter(t *testing.T) {
	be := newTestBackend()
	r, err := NewRouter([]Route{{Pattern: "room:lobby", Backend: be}, {Pattern: "room:*", Backend: be, History: 5}, {Pattern: "*", Backend: be}})
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]string{"room:lobby": "room:lobby", "room:1": "room:*", "room:": "room:*", "x": "*", "": "*"} {
		if got := r.Match(topic); got == nil || got.Pattern != want {
			t.Errorf("Match(%q) = %v, want %s", topic, got, want)
		}
	}
	if r.HistorySize("room:1") != 5 || r.HistorySize("room:lobby") != 0 {
		t.Error("HistorySize")
	}
	r2, _ := NewRouter([]Route{{Pattern: "a", Backend: be}})
	if r2.Match("ab") != nil {
		t.Error("exact pattern matched a longer topic")
	}
	for _, bad := range [][]Route{{{Pattern: ""}}, {{Pattern: "a*b", Backend: be}}, {{Pattern: "a"}}, {{Pattern: "a", Backend: be, History: -1}}} {
		if _, err := NewRouter(bad); !errors.Is(err, ErrBadRoute) {
			t.Errorf("NewRouter(%v) = %v", bad, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := NewConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(*Config){
		"node":          func(c *Config) { c.NodeID = "" },
		"max channels":  func(c *Config) { c.MaxChannels = 0 },
		"workers":       func(c *Config) { c.Workers = 0 },
		"queue":         func(c *Config) { c.QueueSize = 0 },
		"channel queue": func(c *Config) { c.ChannelQueue = 0 },
		"hard bound":    func(c *Config) { c.ChannelQueueHard = c.ChannelQueue - 1 },
		"timeout":       func(c *Config) { c.CallTimeout = 0 },
		"resume buffer": func(c *Config) { c.ResumeBuffer = 0 },
	} {
		c := NewConfig()
		f(&c)
		if err := c.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if NewConfig().MaxChannels != 100 {
		t.Fatal("MaxChannels default must be Phoenix's 100")
	}
}
