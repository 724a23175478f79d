package channels

import (
	"encoding/json"
	"unicode/utf8"
)

// The envelope scanner below assumes its input already passed json.Valid, so
// it only has to find token boundaries; it still checks every index so that a
// bug here can never become a panic on untrusted input.

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipWS(b []byte, i int) int {
	for i < len(b) && isWS(b[i]) {
		i++
	}
	return i
}

// scanString expects b[i] == '"' and returns the index just past the closing
// quote and whether the string holds escapes.
func scanString(b []byte, i int) (end int, esc bool, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, false, false
	}
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			esc = true
			j++
		case '"':
			return j + 1, esc, true
		}
	}
	return 0, false, false
}

// skipValue returns the index just past the JSON value starting at b[i].
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		end, _, ok := scanString(b, i)
		return end, ok
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, _, ok := scanString(b, j)
				if !ok {
					return 0, false
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	default:
		j := i
		for j < len(b) {
			c := b[j]
			if c == ',' || c == '}' || c == ']' || isWS(c) {
				break
			}
			j++
		}
		if j == i {
			return 0, false
		}
		return j, true
	}
}

// stringValue returns the contents of the JSON string token raw (quotes
// included). Without escapes it aliases raw; with escapes it decodes into a
// new slice (rare on the wire: topics and events are plain ASCII).
func stringValue(raw []byte, esc bool) ([]byte, bool) {
	if len(raw) < 2 {
		return nil, false
	}
	if !esc {
		return raw[1 : len(raw)-1], true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, false
	}
	return []byte(s), true
}

// refToken classifies a raw ref token: strings, numbers, booleans and null
// are echoed as received; objects and arrays are malformed.
func refTokenOK(raw []byte) bool {
	return len(raw) > 0 && raw[0] != '{' && raw[0] != '['
}

// payloadOK accepts a JSON object or null as a client payload.
func payloadOK(raw []byte) bool {
	return len(raw) > 0 && (raw[0] == '{' || string(raw) == "null")
}

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a JSON string the way Phoenix's Jason does
// by default: only '"', '\\' and control characters are escaped; '/', '<',
// '>', '&', U+2028/2029 and other non-ASCII pass through. Invalid UTF-8
// (which Phoenix never produces) becomes U+FFFD, written as UTF-8 like any
// other character, so the output is always valid JSON. It serves every
// frame and body the gateway writes, WebSocket and long-poll alike.
func AppendJSONString[S string | []byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := decodeRune(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, "\ufffd"...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// decodeRune is utf8.DecodeRuneInString for either a string or a byte
// slice; at most utf8.UTFMax bytes are converted, which does not allocate.
func decodeRune[S string | []byte](s S) (rune, int) {
	return utf8.DecodeRuneInString(string(s[:min(len(s), utf8.UTFMax)]))
}

// refString turns a raw ref token into the plain string used in backend
// calls, idempotency keys and binary frames: a JSON string's contents, ""
// for null, and the token text for numbers and booleans.
func refString(raw string) string {
	if raw == "" || raw == "null" {
		return ""
	}
	if raw[0] != '"' {
		return raw
	}
	for i := 1; i < len(raw)-1; i++ {
		if raw[i] == '\\' {
			var s string
			if json.Unmarshal([]byte(raw), &s) != nil {
				return ""
			}
			return s
		}
	}
	return raw[1 : len(raw)-1]
}

// refTokenFromString makes a raw JSON token from a binary frame's ref bytes;
// an empty ref is how the binary format writes nil.
func refTokenFromString(b []byte) string {
	if len(b) == 0 {
		return "null"
	}
	var buf [64]byte
	return string(AppendJSONString(buf[:0], string(b)))
}

// objectMembers calls fn for each top-level member of the JSON object obj
// (which must be valid JSON) with the member's key (unescaped) and the byte
// range [start,end) covering the whole member, key through value, so that a
// caller can cut it out. It stops when fn returns false.
func objectMembers(obj []byte, fn func(key []byte, val []byte, start, end int) bool) bool {
	i := skipWS(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return false
	}
	i = skipWS(obj, i+1)
	if i < len(obj) && obj[i] == '}' {
		return true
	}
	for i < len(obj) {
		start := i
		kend, esc, ok := scanString(obj, i)
		if !ok {
			return false
		}
		key, ok := stringValue(obj[i:kend], esc)
		if !ok {
			return false
		}
		i = skipWS(obj, kend)
		if i >= len(obj) || obj[i] != ':' {
			return false
		}
		i = skipWS(obj, i+1)
		vstart := i
		vend, ok := skipValue(obj, i)
		if !ok {
			return false
		}
		i = skipWS(obj, vend)
		if !fn(key, obj[vstart:vend], start, vend) {
			return true
		}
		if i < len(obj) && obj[i] == ',' {
			i = skipWS(obj, i+1)
			continue
		}
		if i < len(obj) && obj[i] == '}' {
			return true
		}
		return false
	}
	return false
}
