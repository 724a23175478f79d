// Package params decodes Phoenix connect params from a WebSocket URL query
// string into a JSON object, exactly as phoenix.js serializes them:
// encodeURIComponent(k)=encodeURIComponent(v), nested objects and arrays as
// parent[key] with the key percent-encoded (user%5Bid%5D=1), arrays as
// a[0]=x (a[]=x is accepted too).
//
// The input is untrusted: every dimension is bounded by Limits and any
// violation is an error wrapping ErrBadParams, never a panic. Decode is a
// pure function and safe for concurrent use.
package params

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// ErrBadParams is wrapped by every decoding error. The gateway answers it
// with an HTTP 400 before the upgrade.
var ErrBadParams = errors.New("params: bad connect params")

// Default bounds. A query string arrives inside the handshake head, which is
// already capped by the gateway, so these bound the work and the JSON size
// per request rather than the raw input.
const (
	// DefaultMaxParams bounds the number of key=value pairs.
	DefaultMaxParams = 64
	// DefaultMaxDepth bounds bracket nesting (user[a][b] has depth 3).
	DefaultMaxDepth = 8
	// DefaultMaxKeyBytes bounds one decoded key, brackets included.
	DefaultMaxKeyBytes = 256
	// DefaultMaxValueBytes bounds one decoded value; a JWT fits easily.
	DefaultMaxValueBytes = 8192
)

// Limits bounds Decode. A zero field means its Default constant.
type Limits struct {
	MaxParams     int // pairs per query
	MaxDepth      int // bracket nesting levels
	MaxKeyBytes   int // bytes per decoded key
	MaxValueBytes int // bytes per decoded value
}

func (l Limits) norm() Limits {
	if l.MaxParams <= 0 {
		l.MaxParams = DefaultMaxParams
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxKeyBytes <= 0 {
		l.MaxKeyBytes = DefaultMaxKeyBytes
	}
	if l.MaxValueBytes <= 0 {
		l.MaxValueBytes = DefaultMaxValueBytes
	}
	return l
}

// VsnKey is the reserved top-level key carrying the serializer version.
const VsnKey = "vsn"

// Result is a decoded query.
type Result struct {
	// JSON is the params object without vsn, e.g. {"token":"abc"}; "{}" when
	// there are none. Read-only: the empty object is shared.
	JSON []byte
	// Vsn is the vsn value when HasVsn is set and it was a plain string.
	Vsn string
	// HasVsn reports whether a vsn key was present in any form.
	HasVsn bool
	// VsnNotString reports vsn given with brackets (vsn[]=x), which Phoenix
	// refuses like any other bad version.
	VsnNotString bool
}

type node struct {
	leaf  bool
	val   string
	keys  []string
	kids  []*node
	empty int // next index for a[]=x appends
}

func (n *node) child(k string) *node {
	for i, kk := range n.keys {
		if kk == k {
			return n.kids[i]
		}
	}
	return nil
}

func (n *node) add(k string, c *node) {
	n.keys = append(n.keys, k)
	n.kids = append(n.kids, c)
}

// emptyObject is the JSON of no params, shared by every Result that has
// none: callers must treat Result.JSON as read-only.
var emptyObject = []byte("{}")

// Decode parses a raw query string (without the leading '?').
func Decode(query string, lim Limits) (Result, error) {
	lim = lim.norm()
	root := &node{}
	var res Result
	pairs := 0
	for query != "" {
		var pair string
		pair, query, _ = strings.Cut(query, "&")
		if pair == "" {
			continue
		}
		pairs++
		if pairs > lim.MaxParams {
			return Result{}, fmt.Errorf("%w: more than %d params", ErrBadParams, lim.MaxParams)
		}
		rawK, rawV, _ := strings.Cut(pair, "=")
		if len(rawK) > 3*lim.MaxKeyBytes || len(rawV) > 3*lim.MaxValueBytes {
			return Result{}, fmt.Errorf("%w: param too long", ErrBadParams)
		}
		k, err := url.QueryUnescape(rawK)
		if err != nil {
			return Result{}, fmt.Errorf("%w: key: %v", ErrBadParams, err)
		}
		v, err := url.QueryUnescape(rawV)
		if err != nil {
			return Result{}, fmt.Errorf("%w: value: %v", ErrBadParams, err)
		}
		if len(k) > lim.MaxKeyBytes {
			return Result{}, fmt.Errorf("%w: key over %d bytes", ErrBadParams, lim.MaxKeyBytes)
		}
		if len(v) > lim.MaxValueBytes {
			return Result{}, fmt.Errorf("%w: value over %d bytes", ErrBadParams, lim.MaxValueBytes)
		}
		path, err := splitKey(k, lim.MaxDepth)
		if err != nil {
			return Result{}, err
		}
		if path[0] == VsnKey {
			res.HasVsn = true
			if len(path) == 1 {
				res.Vsn = v
				res.VsnNotString = false
			} else {
				res.VsnNotString = true
			}
			continue
		}
		if err := insert(root, path, v); err != nil {
			return Result{}, err
		}
	}
	if len(root.keys) == 0 {
		// Most sockets send no params; they share one "{}" instead of each
		// holding a buffer for the life of the connection.
		res.JSON = emptyObject
		return res, nil
	}
	res.JSON = appendNode(nil, root, false)
	return res, nil
}

// splitKey turns user[a][] into ["user","a",""]. A key that does not follow
// the bracket grammar is kept whole as a flat key, as Plug does.
func splitKey(k string, maxDepth int) ([]string, error) {
	if k == "" {
		return nil, fmt.Errorf("%w: empty key", ErrBadParams)
	}
	i := strings.IndexByte(k, '[')
	if i <= 0 || !strings.HasSuffix(k, "]") {
		return []string{k}, nil
	}
	path := []string{k[:i]}
	rest := k[i:]
	for rest != "" {
		if rest[0] != '[' {
			return []string{k}, nil
		}
		j := strings.IndexByte(rest, ']')
		if j < 0 {
			return []string{k}, nil
		}
		path = append(path, rest[1:j])
		rest = rest[j+1:]
		if len(path) > maxDepth {
			return nil, fmt.Errorf("%w: nesting deeper than %d", ErrBadParams, maxDepth)
		}
	}
	return path, nil
}

func insert(n *node, path []string, v string) error {
	for depth, seg := range path {
		last := depth == len(path)-1
		if n.leaf {
			return fmt.Errorf("%w: %q is both a value and a container", ErrBadParams, path[0])
		}
		if seg == "" {
			if depth == 0 {
				return fmt.Errorf("%w: empty key", ErrBadParams)
			}
			// a[]=x appends: give it the next free index so that it renders
			// as an array element.
			for n.child(strconv.Itoa(n.empty)) != nil {
				n.empty++
			}
			seg = strconv.Itoa(n.empty)
			n.empty++
		}
		c := n.child(seg)
		if last {
			if c == nil {
				n.add(seg, &node{leaf: true, val: v})
				return nil
			}
			if !c.leaf {
				return fmt.Errorf("%w: %q is both a value and a container", ErrBadParams, path[0])
			}
			c.val = v // a repeated key: the last one wins, as in Plug
			return nil
		}
		if c == nil {
			c = &node{}
			n.add(seg, c)
		}
		n = c
	}
	return nil
}

// isArray reports whether the keys are exactly 0..n-1 in order, which is
// what phoenix.js produces for a JavaScript array.
func isArray(n *node) bool {
	if len(n.keys) == 0 {
		return false
	}
	for i, k := range n.keys {
		if k != strconv.Itoa(i) {
			return false
		}
	}
	return true
}

func appendNode(b []byte, n *node, allowArray bool) []byte {
	if n.leaf {
		return appendString(b, n.val)
	}
	if allowArray && isArray(n) {
		b = append(b, '[')
		for i, c := range n.kids {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendNode(b, c, true)
		}
		return append(b, ']')
	}
	b = append(b, '{')
	for i, k := range n.keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendNode(b, n.kids[i], true)
	}
	return append(b, '}')
}

// appendString writes s as a JSON string. The handshake is a cold path, so
// the standard encoder serves; it turns invalid UTF-8 (possible after
// percent-decoding) into U+FFFD, so the output is always valid JSON.
func appendString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}
