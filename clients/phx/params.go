package phx

import (
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// EncodeParams returns the query string phoenix.js serialize() builds for
// params (without the leading "?"): encodeURIComponent(key)=
// encodeURIComponent(value) joined with "&"; nested maps and slices become
// parent[key]; a nil value inside a map or slice yields an empty element
// (JS recurses into null and finds no keys), so the pair is dropped but
// its separator remains, exactly as in JS.
//
// JS iterates keys in insertion order (integer-like keys first); Go maps
// have no order, so keys are sorted: integer-like keys numerically first,
// then the others bytewise. Values that are neither maps, slices, strings,
// numbers nor booleans are formatted with fmt's %v.
func EncodeParams(params map[string]any) string {
	return serialize(reflect.ValueOf(params), "")
}

func serialize(v reflect.Value, parent string) string {
	var parts []string
	switch v.Kind() {
	case reflect.Map:
		keys := make([]string, 0, v.Len())
		vals := make(map[string]reflect.Value, v.Len())
		for it := v.MapRange(); it.Next(); {
			k := fmt.Sprint(it.Key().Interface())
			keys = append(keys, k)
			vals[k] = it.Value()
		}
		sort.Slice(keys, func(i, j int) bool { return jsKeyLess(keys[i], keys[j]) })
		for _, k := range keys {
			parts = append(parts, serializePair(vals[k], childKey(parent, k)))
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			parts = append(parts, serializePair(v.Index(i), childKey(parent, strconv.Itoa(i))))
		}
	}
	return strings.Join(parts, "&")
}

func childKey(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "[" + key + "]"
}

func serializePair(v reflect.Value, key string) string {
	for v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "" // typeof null === "object": recursion finds no keys
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Invalid:
		return ""
	case reflect.Map, reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Uint8 {
			break // []byte is a string here, not an array of numbers
		}
		if (v.Kind() == reflect.Map || v.Kind() == reflect.Slice) && v.IsNil() {
			return ""
		}
		return serialize(v, key)
	}
	return EncodeURIComponent(key) + "=" + EncodeURIComponent(jsString(v))
}

// jsString formats a scalar as JS String(value) would.
func jsString(v reflect.Value) string {
	switch v.Kind() {
	case reflect.String:
		return v.String()
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return strconv.FormatUint(v.Uint(), 10)
	case reflect.Float32, reflect.Float64:
		return jsNumber(v.Float())
	case reflect.Slice: // []byte
		return string(v.Bytes())
	}
	return fmt.Sprint(v.Interface())
}

// jsNumber follows Number.prototype.toString for the common cases: plain
// decimal between 1e-7 and 1e21, exponent form ("1e+21") outside.
func jsNumber(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		return "0"
	}
	if a := math.Abs(f); a >= 1e-7 && a < 1e21 {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // 1e+21, 1.5e-08
	mant, exp, _ := strings.Cut(s, "e")
	sign := exp[0]
	exp = strings.TrimLeft(exp[1:], "0")
	return mant + "e" + string(sign) + exp
}

// jsKeyLess orders keys as JS property enumeration does for integer-like
// keys (ascending, before all others); the rest are sorted bytewise since Go
// maps carry no insertion order.
func jsKeyLess(a, b string) bool {
	ai, aok := arrayIndex(a)
	bi, bok := arrayIndex(b)
	switch {
	case aok && bok:
		return ai < bi
	case aok != bok:
		return aok
	}
	return a < b
}

func arrayIndex(s string) (uint64, bool) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return n, err == nil && n < math.MaxUint32
}

// EncodeURIComponent escapes s as JS encodeURIComponent does: everything
// but A-Z a-z 0-9 - _ . ! ~ * ' ( ) is percent-encoded as UTF-8 bytes with
// uppercase hex.
func EncodeURIComponent(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if uriUnreserved(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

func uriUnreserved(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-_.!~*'()", c) >= 0
}

// EndpointURL builds the URL phoenix.js dials: the endpoint, then the
// params (if there are any keys), then vsn, each appended with "?" or "&"
// as Ajax.appendParams does.
func EndpointURL(endpoint string, params map[string]any, vsn string) string {
	u := appendParams(endpoint, params)
	return appendParams(u, map[string]any{"vsn": vsn})
}

func appendParams(u string, params map[string]any) string {
	if len(params) == 0 {
		return u
	}
	prefix := "?"
	if strings.Contains(u, "?") {
		prefix = "&"
	}
	return u + prefix + EncodeParams(params)
}
