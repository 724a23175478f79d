package main

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/gobwas/ws"
)

func TestPayloadRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		seq, ts  int64
		size     int
		wantSize int
	}{
		{"default size", 0, 1_700_000_000_123_456_789, DefaultPayloadBytes, DefaultPayloadBytes},
		{"min size", 12345, 1_700_000_000_000_000_000, MinPayloadBytes, MinPayloadBytes},
		{"large", 999_999, 1, 10_000, 10_000},
		{"numbers longer than size", 1 << 40, 1_700_000_000_000_000_000, 10, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := appendPayload([]byte("junk"), tc.seq, tc.ts, tc.size)[len("junk"):]
			if tc.wantSize > 0 && len(p) != tc.wantSize {
				t.Fatalf("len %d, want %d: %s", len(p), tc.wantSize, p)
			}
			var obj struct {
				Seq int64  `json:"seq"`
				TS  int64  `json:"ts"`
				Pad string `json:"pad"`
			}
			if err := json.Unmarshal(p, &obj); err != nil || obj.Seq != tc.seq || obj.TS != tc.ts {
				t.Fatalf("not the JSON object we meant: %s (%v)", p, err)
			}
			seq, ts, ok := decodePayload(p)
			if !ok || seq != tc.seq || ts != tc.ts {
				t.Fatalf("decode = %d %d %v", seq, ts, ok)
			}
		})
	}
}

func TestDecodePayload(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		seq, ts int64
		ok      bool
	}{
		{"sorted keys", `{"pad":"xx","seq":7,"ts":99}`, 7, 99, true},
		{"spaces", `{"seq": 7, "ts": 99}`, 7, 99, true},
		{"negative ts", `{"seq":1,"ts":-5}`, 1, -5, true},
		{"no seq", `{"ts":99}`, 0, 0, false},
		{"no ts", `{"seq":1}`, 0, 0, false},
		{"not a number", `{"seq":"1","ts":2}`, 0, 0, false},
		{"overflow", `{"seq":1,"ts":99999999999999999999}`, 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seq, ts, ok := decodePayload([]byte(tc.in))
			if ok != tc.ok || (ok && (seq != tc.seq || ts != tc.ts)) {
				t.Fatalf("= %d %d %v; want %d %d %v", seq, ts, ok, tc.seq, tc.ts, tc.ok)
			}
		})
	}
	if n := testing.AllocsPerRun(100, func() { decodePayload([]byte(`{"seq":7,"ts":99,"pad":"x"}`)) }); n != 0 {
		t.Fatalf("decodePayload allocates %v times", n)
	}
}

func TestBcastMatcher(t *testing.T) {
	m := newBcastMatcher("room:bench", "shout")
	tests := []struct {
		name string
		in   string
		want string // payload; empty: no match
	}{
		{"compact", `[null,null,"room:bench","shout",{"seq":1}]`, `{"seq":1}`},
		{"spaced", `[null, null, "room:bench", "shout", {"seq":1}]`, `{"seq":1}`},
		{"with join_ref", `["1",null,"room:bench","shout",{"seq":1}]`, `{"seq":1}`},
		{"other topic", `[null,null,"room:other","shout",{"seq":1}]`, ``},
		{"reply", `["1","5","room:bench","phx_reply",{"status":"ok","response":{}}]`, ``},
		{"heartbeat reply", `[null,"3","phoenix","phx_reply",{"status":"ok","response":{}}]`, ``},
		{"short", `[null,"shout"]`, ``},
		{"junk", `shout`, ``},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, ok := m.payload([]byte(tc.in))
			if ok != (tc.want != "") || string(p) != tc.want {
				t.Fatalf("= %q %v, want %q", p, ok, tc.want)
			}
		})
	}
}

func TestFrames(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 100_000} {
		p := bytes.Repeat([]byte{'a'}, n)
		// Server frames parse back whole, and byte by byte report "not yet".
		f := appendServerFrame(nil, opText, p)
		for cut := range min(len(f), 12) {
			if h, ok, err := parseFrameHeader(f[:cut]); err != nil || (ok && cut < h.size) {
				t.Fatalf("n=%d cut=%d: ok %v err %v", n, cut, ok, err)
			}
		}
		h, ok, err := parseFrameHeader(f)
		if err != nil || !ok || !h.fin || h.op != opText || h.masked || h.length != n || h.size+n != len(f) {
			t.Fatalf("n=%d: %+v ok %v err %v", n, h, ok, err)
		}
		// Client frames read back with gobwas.
		key := [4]byte{1, 2, 3, 4}
		cf := appendClientFrame([]byte("x"), opText, p, key)[1:]
		fr, err := ws.ReadFrame(bytes.NewReader(cf))
		if err != nil || !fr.Header.Masked || fr.Header.Mask != key {
			t.Fatalf("n=%d: %v %+v", n, err, fr.Header)
		}
		ws.Cipher(fr.Payload, fr.Header.Mask, 0)
		if !bytes.Equal(fr.Payload, p) {
			t.Fatalf("n=%d: payload differs", n)
		}
	}
	if _, _, err := parseFrameHeader([]byte{0xC1, 0}); err == nil {
		t.Fatal("reserved bit accepted")
	}
	if _, _, err := parseFrameHeader([]byte{0x81, 127, 0, 0, 0, 0, 1, 0, 0, 0}); err == nil {
		t.Fatal("oversized frame accepted")
	}
}

func TestParseProcStat(t *testing.T) {
	line := "1234 (my) (odd name) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 8 0 12345 1000000 200 18446744073709551615\n"
	got, err := parseProcStat([]byte(line))
	if err != nil || got != 3.0 {
		t.Fatalf("= %v %v, want 3 s", got, err)
	}
	if _, err := parseProcStat([]byte("1 (x) S 1 2")); err == nil {
		t.Fatal("short stat accepted")
	}
}
