package admission

import (
	"errors"
	"strconv"
	"strings"
)

// origin is a parsed, normalised origin: lowercase scheme and host, explicit
// port.
type origin struct {
	scheme string
	host   string // for a wildcard: the suffix with its leading dot
	port   string
	wild   bool
}

var errOrigin = errors.New("must be scheme://host[:port] (host may start with \"*.\")")

func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}

// parseOrigin parses an Origin header value strictly. Browsers send exactly
// scheme://host[:port] (RFC 6454), so anything else — "null", a path, a
// userinfo, percent-escapes, a trailing dot — is refused rather than
// normalised: normalising is where suffix checks get fooled.
func parseOrigin(s string, allowWildcard bool) (origin, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || !validScheme(scheme) || rest == "" || strings.ContainsAny(rest, "/?#@%\\ \t") {
		return origin{}, errOrigin
	}
	o := origin{scheme: strings.ToLower(scheme)}
	host, port := rest, ""
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return origin{}, errOrigin
		}
		host = rest[:end+1]
		switch after := rest[end+1:]; {
		case after == "":
		case after[0] == ':':
			port = after[1:]
		default:
			return origin{}, errOrigin
		}
		if !validIPv6Literal(host) {
			return origin{}, errOrigin
		}
	} else {
		if i := strings.LastIndexByte(rest, ':'); i >= 0 {
			host, port = rest[:i], rest[i+1:]
		}
		host = strings.ToLower(host)
		if allowWildcard {
			if h, ok := strings.CutPrefix(host, "*."); ok {
				o.wild = true
				host = h
			}
		}
		if !validHostname(host) {
			return origin{}, errOrigin
		}
		if o.wild {
			host = "." + host
		}
	}
	if port != "" || strings.HasSuffix(rest, ":") {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] == '+' {
			return origin{}, errOrigin
		}
		port = strconv.Itoa(n)
	} else {
		port = defaultPort(o.scheme)
	}
	o.host, o.port = strings.ToLower(host), port
	return o, nil
}

func validScheme(s string) bool {
	if s == "" || !isAlpha(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isAlpha(c) && !isDigit(c) && c != '+' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// validHostname accepts LDH labels separated by single dots: no empty label,
// no trailing dot, no "*" anywhere.
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !isAlpha(c) && !isDigit(c) && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

func validIPv6Literal(h string) bool {
	inner := h[1 : len(h)-1]
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		if !isDigit(c) && !isAlpha(c) && c != ':' && c != '.' {
			return false
		}
	}
	return inner != ""
}

func isAlpha(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func parseAllowedOrigin(s string) (origin, error) {
	return parseOrigin(s, true)
}

func (a origin) matches(o origin) bool {
	if a.scheme != o.scheme || a.port != o.port {
		return false
	}
	if a.wild {
		// ".example.com" matches "x.example.com" and "x.y.example.com",
		// not "example.com" and not "x.example.com.evil.com".
		return len(o.host) > len(a.host) && strings.HasSuffix(o.host, a.host)
	}
	return a.host == o.host
}
