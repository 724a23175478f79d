package channels

import (
	"encoding/json"
	"testing"
)

// AppendJSONString writes what Jason writes: only '"', '\\' and control
// characters escaped, everything else (HTML characters, '/', U+2028,
// non-ASCII) as it is; the string and byte-slice forms agree and the
// output always parses back to the input (invalid UTF-8 as U+FFFD).
func TestAppendJSONString(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", `""`},
		{"plain", "room:lobby", `"room:lobby"`},
		{"quote and backslash", `a"b\c`, `"a\"b\\c"`},
		{"short escapes", "\n\r\t\b\f", `"\n\r\t\b\f"`},
		{"other controls", "\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"html and slash unescaped", "<&>/", `"<&>/"`},
		{"non-ascii unescaped", "é\u2028😀", "\"é\u2028😀\""},
		{"invalid utf-8", "a\xffb\xc3", "\"a\ufffdb\ufffd\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := string(AppendJSONString([]byte("x"), tc.in))
			if got != "x"+tc.want {
				t.Fatalf("string form = %s, want x%s", got, tc.want)
			}
			if got := string(AppendJSONString(nil, []byte(tc.in))); got != tc.want {
				t.Fatalf("byte form = %s, want %s", got, tc.want)
			}
			var back string
			if err := json.Unmarshal([]byte(tc.want), &back); err != nil {
				t.Fatalf("output is not JSON: %v", err)
			}
		})
	}
}

// Neither form allocates beyond dst's growth: the byte-slice form's
// rune decoding converts at most four bytes.
func TestAppendJSONStringAllocs(t *testing.T) {
	in := "é\xff\"x\n" + "room:lobby"
	buf := make([]byte, 0, 64)
	if a := testing.AllocsPerRun(100, func() { buf = AppendJSONString(buf[:0], in) }); a != 0 {
		t.Fatalf("string form: %v allocations", a)
	}
	inb := []byte(in)
	if a := testing.AllocsPerRun(100, func() { buf = AppendJSONString(buf[:0], inb) }); a != 0 {
		t.Fatalf("byte form: %v allocations", a)
	}
}
