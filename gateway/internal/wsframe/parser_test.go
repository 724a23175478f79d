package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
)

// buildFrame writes a client frame. rawLen, when non-nil, forces the
// declared length (to lie about it); masked=false writes an unmasked frame.
func buildFrame(tb testing.TB, b0 byte, masked bool, payload []byte, rawLen *uint64) []byte {
	tb.Helper()
	var f []byte
	f = append(f, b0)
	n := uint64(len(payload))
	if rawLen != nil {
		n = *rawLen
	}
	var mbit byte
	if masked {
		mbit = 0x80
	}
	switch {
	case rawLen != nil && n > 0xffff, n > 0xffff:
		f = append(f, mbit|127)
		f = binary.BigEndian.AppendUint64(f, n)
	case n >= 126:
		f = append(f, mbit|126)
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f = append(f, mbit|byte(n))
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	if masked {
		f = append(f, mask[:]...)
	}
	start := len(f)
	f = append(f, payload...)
	if masked {
		for i := range payload {
			f[start+i] ^= mask[i%4]
		}
	}
	return f
}

const (
	fin  = 0x80
	text = fin | byte(OpText)
)

type event struct {
	op      Op
	payload string
}

type recorder struct{ events []event }

func (r *recorder) OnMessage(op Op, p []byte) error {
	r.events = append(r.events, event{op, string(p)})
	return nil
}

func (r *recorder) OnControl(op Op, p []byte) error {
	r.events = append(r.events, event{op, string(p)})
	return nil
}

func cat(fs ...[]byte) []byte { return bytes.Join(fs, nil) }

func TestParser(t *testing.T) {
	const limit = 1024
	huge := uint64(1) << 63
	justOver := uint64(limit + 1)
	tests := []struct {
		name    string
		stream  func(tb testing.TB) []byte
		want    []event
		wantErr error
	}{
		{
			name:   "text",
			stream: func(tb testing.TB) []byte { return buildFrame(tb, text, true, []byte("hello"), nil) },
			want:   []event{{OpText, "hello"}},
		},
		{
			name:   "empty binary",
			stream: func(tb testing.TB) []byte { return buildFrame(tb, fin|byte(OpBinary), true, nil, nil) },
			want:   []event{{OpBinary, ""}},
		},
		{
			name: "fragments with ping between",
			stream: func(tb testing.TB) []byte {
				return cat(
					buildFrame(tb, byte(OpText), true, []byte("he"), nil),
					buildFrame(tb, fin|byte(OpPing), true, []byte("p"), nil),
					buildFrame(tb, byte(OpContinuation), true, []byte("ll"), nil),
					buildFrame(tb, fin|byte(OpContinuation), true, []byte("o"), nil),
				)
			},
			want: []event{{OpPing, "p"}, {OpText, "hello"}},
		},
		{
			name:   "extended 16-bit length",
			stream: func(tb testing.TB) []byte { return buildFrame(tb, text, true, bytes.Repeat([]byte("a"), 300), nil) },
			want:   []event{{OpText, string(bytes.Repeat([]byte("a"), 300))}},
		},
		{
			name:   "exactly at limit",
			stream: func(tb testing.TB) []byte { return buildFrame(tb, fin|byte(OpBinary), true, make([]byte, limit), nil) },
			want:   []event{{OpBinary, string(make([]byte, limit))}},
		},
		{
			name:    "unmasked",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, text, false, []byte("x"), nil) },
			wantErr: ErrUnmasked,
		},
		{
			name:    "rsv1",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, text|0x40, true, []byte("x"), nil) },
			wantErr: ErrReservedBits,
		},
		{
			name:    "opcode 3",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, fin|0x3, true, nil, nil) },
			wantErr: ErrUnknownOpcode,
		},
		{
			name:    "opcode 0xb",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, fin|0xb, true, nil, nil) },
			wantErr: ErrUnknownOpcode,
		},
		{
			name:    "ping 126 bytes",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, fin|byte(OpPing), true, make([]byte, 126), nil) },
			wantErr: ErrControlTooBig,
		},
		{
			name:    "fragmented ping",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, byte(OpPing), true, nil, nil) },
			wantErr: ErrControlFragmented,
		},
		{
			name:    "continuation first",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, fin, true, []byte("x"), nil) },
			wantErr: ErrUnexpectedContinuation,
		},
		{
			name: "text inside fragmented message",
			stream: func(tb testing.TB) []byte {
				return cat(buildFrame(tb, byte(OpText), true, []byte("a"), nil), buildFrame(tb, text, true, []byte("b"), nil))
			},
			wantErr: ErrInterleavedMessage,
		},
		{
			name:    "declared 2^63",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, fin|byte(OpBinary), true, nil, &huge) },
			wantErr: ErrLengthMSB,
		},
		{
			name:    "declared over limit",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, fin|byte(OpBinary), true, nil, &justOver) },
			wantErr: ErrTooBig,
		},
		{
			name: "fragments sum over limit",
			stream: func(tb testing.TB) []byte {
				var s []byte
				s = append(s, buildFrame(tb, byte(OpBinary), true, make([]byte, 100), nil)...)
				for range limit / 100 {
					s = append(s, buildFrame(tb, byte(OpContinuation), true, make([]byte, 100), nil)...)
				}
				return s
			},
			wantErr: ErrTooBig,
		},
		{
			name:    "invalid utf8",
			stream:  func(tb testing.TB) []byte { return buildFrame(tb, text, true, []byte{0xff, 0xfe}, nil) },
			wantErr: ErrInvalidUTF8,
		},
		{
			name: "invalid utf8 across fragments",
			stream: func(tb testing.TB) []byte {
				return cat(buildFrame(tb, byte(OpText), true, []byte{0xe2, 0x82}, nil), buildFrame(tb, fin, true, []byte{0x41}, nil))
			},
			wantErr: ErrInvalidUTF8,
		},
		{
			name: "utf8 rune split across fragments",
			stream: func(tb testing.TB) []byte {
				return cat(buildFrame(tb, byte(OpText), true, []byte{0xe2, 0x82}, nil), buildFrame(tb, fin, true, []byte{0xac}, nil))
			},
			want: []event{{OpText, "€"}},
		},
	}
	for _, tt := range tests {
		for _, chunk := range []int{0, 1, 3, 7} {
			name := tt.name + "/whole"
			if chunk > 0 {
				name = tt.name + "/chunks_of_" + string(rune('0'+chunk))
			}
			t.Run(name, func(t *testing.T) {
				stream := tt.stream(t)
				var p Parser
				r := &recorder{}
				var err error
				if chunk == 0 {
					err = p.Feed(stream, limit, r)
				} else {
					for i := 0; i < len(stream) && err == nil; i += chunk {
						c := append([]byte(nil), stream[i:min(i+chunk, len(stream))]...)
						err = p.Feed(c, limit, r)
					}
				}
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr != nil {
					return
				}
				if len(r.events) != len(tt.want) {
					t.Fatalf("events = %v, want %v", r.events, tt.want)
				}
				for i := range r.events {
					if r.events[i] != tt.want[i] {
						t.Errorf("event %d = %v, want %v", i, r.events[i], tt.want[i])
					}
				}
				if !p.Idle() {
					t.Errorf("parser not idle after complete frames: %d bytes held", p.Buffered())
				}
			})
		}
	}
}

// TestHugeDeclaredLengthDoesNotAllocate pins that a header declaring 2^63
// (or just under) bytes is refused before anything is allocated.
func TestHugeDeclaredLengthDoesNotAllocate(t *testing.T) {
	for _, n := range []uint64{1 << 63, 1<<63 - 1, 1 << 40} {
		hdr := buildFrame(t, fin|byte(OpBinary), true, nil, &n)
		allocs := testing.AllocsPerRun(100, func() {
			var p Parser
			buf := append([]byte(nil), hdr...) // not counted against the parser below
			_ = buf
			if err := p.Feed(hdr[:len(hdr):len(hdr)], 64<<10, &recorder{}); err == nil {
				t.Fatal("no error")
			}
		})
		// The only allocations allowed are the test's own copy and recorder.
		if allocs > 2 {
			t.Errorf("declared %d: %v allocs per run", n, allocs)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var p Parser
		_ = p.Feed(hdr, 64<<10, &recorder{})
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > 4096 {
			t.Errorf("declared %d: allocated %d bytes", n, d)
		}
	}
}

// TestDeclaredButUnsentPayloadIsNotPreallocated pins that buffering grows
// with bytes received, not with the declared length.
func TestDeclaredButUnsentPayloadIsNotPreallocated(t *testing.T) {
	n := uint64(60 << 10)
	f := buildFrame(t, fin|byte(OpBinary), true, nil, &n)
	f = append(f, 1, 2, 3)
	var p Parser
	if err := p.Feed(f, 64<<10, &recorder{}); err != nil {
		t.Fatal(err)
	}
	if c := cap(p.partial); c > 1024 {
		t.Errorf("partial cap = %d after %d bytes", c, len(f))
	}
}

func TestFrameParseAllocs(t *testing.T) {
	stream := bytes.Repeat(buildFrame(t, text, true, []byte(`[null,"1","phoenix","heartbeat",{}]`), nil), 100)
	buf := make([]byte, len(stream))
	var p Parser
	h := nopHandler{}
	allocs := testing.AllocsPerRun(100, func() {
		copy(buf, stream)
		if err := p.Feed(buf, 64<<10, h); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("allocs per 100 frames = %v, want 0", allocs)
	}
}

type nopHandler struct{}

func (nopHandler) OnMessage(Op, []byte) error { return nil }
func (nopHandler) OnControl(Op, []byte) error { return nil }

func BenchmarkFrameParse(b *testing.B) {
	frame := buildFrame(b, text, true, []byte(`["3","4","room:lobby","echo",{"body":"hello world"}]`), nil)
	stream := bytes.Repeat(frame, 64)
	buf := make([]byte, len(stream))
	var p Parser
	b.ReportAllocs()
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		copy(buf, stream)
		if err := p.Feed(buf, 64<<10, nopHandler{}); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzFrameParser(f *testing.F) {
	f.Add(buildFrame(f, text, true, []byte("hello"), nil), uint8(3))
	f.Add(cat(buildFrame(f, byte(OpText), true, []byte("he"), nil), buildFrame(f, fin, true, []byte("llo"), nil)), uint8(1))
	huge := uint64(1) << 63
	f.Add(buildFrame(f, fin|byte(OpBinary), true, nil, &huge), uint8(0))
	f.Add(buildFrame(f, fin|byte(OpPing), true, make([]byte, 125), nil), uint8(5))
	f.Add(buildFrame(f, fin|byte(OpClose), true, []byte{3, 232}, nil), uint8(2))
	f.Add([]byte{0x81}, uint8(1))
	const limit = 4096
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		var p Parser
		r := &recorder{}
		cut := 0
		if len(data) > 0 {
			cut = int(split) % (len(data) + 1)
		}
		err := p.Feed(append([]byte(nil), data[:cut]...), limit, r)
		if err == nil {
			err = p.Feed(append([]byte(nil), data[cut:]...), limit, r)
		}
		var fe *Error
		if err != nil && !errors.As(err, &fe) {
			t.Fatalf("error %v is not *Error", err)
		}
		if p.Buffered() > limit+MaxHeaderLen {
			t.Fatalf("buffered %d bytes, over limit", p.Buffered())
		}
		for _, e := range r.events {
			if !e.op.IsControl() && len(e.payload) > limit {
				t.Fatalf("message of %d bytes delivered", len(e.payload))
			}
		}
	})
}
