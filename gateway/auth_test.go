//go:build linux

package gateway

import (
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
)

const (
	testAudience = "phxgate-test"
	testIssuer   = "https://id.example"
)

func tokenTarget(token string) string {
	return "/socket/websocket?vsn=2.0.0&token=" + url.QueryEscape(token)
}

func authTokenHeader(token string) string {
	return "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx." + base64.RawStdEncoding.EncodeToString([]byte(token))
}

// requireRefused checks a refusal: the status, an empty body, and no
// upgrade.
func requireRefused(tb testing.TB, c *client, want ...int) {
	tb.Helper()
	got := c.status()
	ok := false
	for _, w := range want {
		ok = ok || got == w
	}
	if !ok {
		tb.Fatalf("status = %d, want one of %v", got, want)
	}
	if c.resp != nil {
		if c.resp.ContentLength != 0 {
			tb.Fatalf("refusal has a body (Content-Length %d)", c.resp.ContentLength)
		}
		if c.resp.Header.Get("Upgrade") != "" {
			tb.Fatal("refusal carries an Upgrade header")
		}
	}
}

func TestConnectTokenSources(t *testing.T) {
	s := authServer(t, func(c *Config) { c.Auth.Required = true })
	tok := hsToken(t, claims("alice"))
	tests := []struct {
		name   string
		target string
		extra  []string
	}{
		{name: "param", target: tokenTarget(tok) + "&room=7"},
		{name: "authToken subprotocol", target: "/socket/websocket?vsn=2.0.0&room=7", extra: []string{authTokenHeader(tok)}},
		{name: "both, the same token", target: tokenTarget(tok) + "&room=7", extra: []string{authTokenHeader(tok)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := attempt(t, nil, s.Addr(), tt.target, tt.extra...)
			if c.status() != http.StatusSwitchingProtocols {
				t.Fatalf("status = %d, want 101", c.status())
			}
			info := s.rec.lastInfo()
			if info.PlayerID != "alice" || info.RateKey != "alice" || info.Identity == nil || len(info.Claims) == 0 {
				t.Fatalf("info = %+v", info)
			}
			// The backend never sees the token.
			if string(info.Params) != `{"room":"7"}` {
				t.Fatalf("params = %s, want the token stripped", info.Params)
			}
		})
	}
	t.Run("param and authToken differ", func(t *testing.T) {
		other := hsToken(t, claims("mallory"))
		requireRefused(t, attempt(t, nil, s.Addr(), tokenTarget(tok), authTokenHeader(other)), http.StatusForbidden)
	})
}

// TestConnectRefusedTokens: every bad token is an HTTP refusal before the
// upgrade, with an empty body: 401 when missing (auth.required), 403 when
// present but invalid.
func TestConnectRefusedTokens(t *testing.T) {
	rsaKey := testRSA(t)
	jwksKey := newECKey(t)
	jwks := newJWKSServer(t, map[string]*ecdsa.PublicKey{"k1": &jwksKey.PublicKey})
	s := authServer(t, func(c *Config) {
		c.Auth.Required = true
		c.Auth.PublicKeyFiles = []string{writePEM(t, &rsaKey.PublicKey)}
		c.Auth.JWKSURL = jwks.url()
		c.Auth.Audience = testAudience
		c.Auth.Issuer = testIssuer
		c.Auth.Leeway = 30 * time.Second
	})
	valid := func() jwt.MapClaims {
		c := claims("alice")
		c["aud"], c["iss"] = testAudience, testIssuer
		return c
	}
	with := func(k string, v any) jwt.MapClaims {
		c := valid()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	now := time.Now()
	hs := func(c jwt.MapClaims) string { return hsToken(t, c) }
	other := newECKey(t)

	refused := []struct {
		name   string
		token  string
		status []int
	}{
		{name: "missing token", token: "", status: []int{http.StatusUnauthorized}},
		{name: "alg none", token: unsignedToken(t, valid())},
		{name: "HS256 signed with the RSA public key", token: signToken(t, jwt.SigningMethodHS256, publicPEM(t, &rsaKey.PublicKey), valid(), "")},
		{name: "unknown kid", token: signToken(t, jwt.SigningMethodES256, other, valid(), "k-unknown")},
		{name: "kid path traversal", token: signToken(t, jwt.SigningMethodES256, other, valid(), "../../etc/passwd")},
		{name: "missing exp", token: hs(with("exp", nil))},
		{name: "expired beyond leeway", token: hs(with("exp", now.Add(-time.Minute).Unix()))},
		{name: "nbf in the future", token: hs(with("nbf", now.Add(2*time.Minute).Unix()))},
		{name: "wrong aud", token: hs(with("aud", "someone-else"))},
		{name: "wrong iss", token: hs(with("iss", "https://evil.example"))},
		{name: "no sub", token: hs(with("sub", nil))},
		{name: "only dots", token: ".."},
		{name: "bad signature", token: corruptSignature(hs(valid()))},
		// The request head is bounded (16 KiB): a megabyte query is refused
		// by the head reader, never parsed or upgraded.
		{name: "1 MB token", token: strings.Repeat("a", 1<<20), status: []int{http.StatusRequestHeaderFieldsTooLarge, http.StatusForbidden, http.StatusBadRequest, 0}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.status
			if want == nil {
				want = []int{http.StatusForbidden}
			}
			target := "/socket/websocket?vsn=2.0.0"
			if tt.token != "" {
				target = tokenTarget(tt.token)
			}
			requireRefused(t, attempt(t, nil, s.Addr(), target), want...)
		})
	}
	t.Run("invalid authToken subprotocol", func(t *testing.T) {
		requireRefused(t, attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0", authTokenHeader(unsignedToken(t, valid()))), http.StatusForbidden)
	})
	t.Run("token over auth.max_token_bytes", func(t *testing.T) {
		c := valid()
		c["pad"] = strings.Repeat("x", 9<<10)
		// The params decoder bounds values too (400); either way no parse.
		requireRefused(t, attempt(t, nil, s.Addr(), tokenTarget(hs(c))), http.StatusForbidden, http.StatusBadRequest)
		requireRefused(t, attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0", authTokenHeader(hs(c))), http.StatusForbidden, http.StatusRequestHeaderFieldsTooLarge)
	})

	accepted := []struct {
		name  string
		token string
	}{
		{name: "HS256", token: hs(valid())},
		{name: "RS256 from a PEM file", token: signToken(t, jwt.SigningMethodRS256, rsaKey, valid(), "")},
		{name: "ES256 from the JWKS", token: signToken(t, jwt.SigningMethodES256, jwksKey, valid(), "k1")},
		{name: "expired within leeway", token: hs(with("exp", now.Add(-10*time.Second).Unix()))},
	}
	for _, tt := range accepted {
		t.Run(tt.name, func(t *testing.T) {
			c := attempt(t, nil, s.Addr(), tokenTarget(tt.token))
			if c.status() != http.StatusSwitchingProtocols {
				t.Fatalf("status = %d, want 101", c.status())
			}
		})
	}
	if n := counterValue(t, s.Registry(), "phxgate_auth_verifications_total", "missing"); n != 1 {
		t.Errorf("missing-token refusals counted %v, want 1", n)
	}
	for reason, want := range map[string]float64{"token_missing": 1, "token_expired": 2, "token_unknown_kid": 2, "token_audience": 1, "token_issuer": 1} {
		if n := counterValue(t, s.Registry(), "phxgate_gateway_connect_refused_total", reason); n != want {
			t.Errorf("phxgate_gateway_connect_refused_total{reason=%q} = %v, want %v", reason, n, want)
		}
	}
}

// TestInvalidTokenRefusedWhenNotRequired: anonymous sockets are allowed,
// but a token that is present must be valid.
func TestInvalidTokenRefusedWhenNotRequired(t *testing.T) {
	s := authServer(t, nil)
	requireRefused(t, attempt(t, nil, s.Addr(), tokenTarget("not.a.jwt")), http.StatusForbidden)
	c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0")
	if c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("anonymous: status = %d, want 101", c.status())
	}
	if info := s.rec.lastInfo(); info.PlayerID != "" || info.RateKey != "ip:127.0.0.1/32" {
		t.Fatalf("anonymous info = %+v, want no player and the IP as rate key", info)
	}
}

// TestTokensIgnoredWhenAuthOff: with no key configured there is nothing
// to verify a token against; it is stripped and the socket is anonymous.
func TestTokensIgnoredWhenAuthOff(t *testing.T) {
	s := startServer(t, nil, WithAdmit(nil))
	c := attempt(t, nil, s.Addr(), tokenTarget("abc")+"&x=1", authTokenHeader("abc"))
	if c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d, want 101", c.status())
	}
	if info := s.rec.lastInfo(); info.PlayerID != "" || info.Identity != nil || string(info.Params) != `{"x":"1"}` {
		t.Fatalf("info = %+v (params %s), want anonymous with the token stripped", info, info.Params)
	}
}

// TestTokenExpiryClosesSocket: a socket whose token expires while it is
// open is closed with 1008 within leeway + 1 s, and nothing follows the
// close frame.
func TestTokenExpiryClosesSocket(t *testing.T) {
	const leeway = time.Second
	s := authServer(t, func(c *Config) { c.Auth.Required = true; c.Auth.Leeway = leeway })
	exp := time.Unix(time.Now().Add(2*time.Second).Unix()+1, 0)
	c := attempt(t, nil, s.Addr(), tokenTarget(hsToken(t, jwt.MapClaims{"sub": "alice", "exp": exp.Unix()})))
	if c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d, want 101", c.status())
	}
	_ = c.conn.SetDeadline(exp.Add(leeway + 5*time.Second))
	c.sendText("before expiry")
	c.expectMessage(ws.OpText, "before expiry")

	h, p, err := c.readFrame()
	closedAt := time.Now()
	if err != nil {
		t.Fatalf("waiting for the close: %v", err)
	}
	if h.OpCode != ws.OpClose || len(p) != 2 || binary.BigEndian.Uint16(p) != 1008 {
		t.Fatalf("got op %v %x, want close 1008", h.OpCode, p)
	}
	// The sweep runs once a second. Never before exp + leeway (bar clock
	// rounding); the late side gets room for a loaded CI machine running
	// -race, which still fails a close that waits for anything but the sweep
	// (the idle timeout is 60 s).
	const slack, lateSlack = 300 * time.Millisecond, 2 * time.Second
	if late := closedAt.Sub(exp); late > leeway+time.Second+lateSlack || late < leeway-slack {
		t.Fatalf("closed %v after exp, want within (leeway, leeway + 1 s] = (%v, %v]", late, leeway, leeway+time.Second)
	}
	t.Logf("closed %v after exp", closedAt.Sub(exp))
	// Anything sent now is dropped, and no frame follows the close.
	c.sendText("after expiry")
	_, _ = c.conn.Write(clientFrame(0x88, true, binary.BigEndian.AppendUint16(nil, 1008), -1))
	if h, p, err := c.readFrame(); err == nil {
		t.Fatalf("frame after the close: op %v %q", h.OpCode, p)
	} else if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the server did not end the connection after the close")
		}
	}
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, s.Registry(), "phxgate_gateway_disconnects_total", "token_expired") == 1
	}, "the token_expired disconnect counted")
}

// TestConnectionCapsPerIP: 1,000 attempts from one address over its caps
// get 429 before any upgrade; another address is unaffected.
func TestConnectionCapsPerIP(t *testing.T) {
	const (
		maxConns = 5
		burst    = 20
		attempts = 1000
	)
	s := authServer(t, func(c *Config) {
		c.Limits.IPMaxConns = maxConns
		c.Limits.IPHandshakeBurst = burst
		c.Limits.IPHandshakesPerSecond = 1
	})
	upgraded, refused, retryAfter := 0, 0, 0
	for range attempts {
		c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0")
		switch c.status() {
		case http.StatusSwitchingProtocols:
			upgraded++ // kept open until the test ends
		case http.StatusTooManyRequests:
			requireRefused(t, c, http.StatusTooManyRequests)
			refused++
			if ra := c.resp.Header.Get("Retry-After"); ra != "" {
				if n, err := strconv.Atoi(ra); err != nil || n < 1 {
					t.Fatalf("Retry-After = %q", ra)
				}
				retryAfter++
			}
			c.conn.Close()
		default:
			t.Fatalf("status = %d, want 101 or 429", c.status())
		}
	}
	if upgraded != maxConns || refused != attempts-maxConns {
		t.Fatalf("upgraded %d, refused %d; want %d and %d", upgraded, refused, maxConns, attempts-maxConns)
	}
	if retryAfter != attempts-burst {
		t.Errorf("%d refusals carried Retry-After, want the %d handshake-rate ones", retryAfter, attempts-burst)
	}
	reg := s.Registry()
	if got := counterValue(t, reg, "phxgate_gateway_connect_refused_total", "ip_conn_limit") +
		counterValue(t, reg, "phxgate_gateway_connect_refused_total", "ip_handshake_rate"); got != attempts-maxConns {
		t.Errorf("refusals counted %v, want %d", got, attempts-maxConns)
	}

	// Another client address still gets in.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	if c := attempt(t, d, s.Addr(), "/socket/websocket?vsn=2.0.0"); c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("from 127.0.0.2: status = %d, want 101", c.status())
	}
	if info := s.rec.lastInfo(); info.RateKey != "ip:127.0.0.2/32" {
		t.Fatalf("rate key = %q", info.RateKey)
	}
}

func TestConnectionCapsPerPlayerAndNode(t *testing.T) {
	t.Run("per player", func(t *testing.T) {
		s := authServer(t, func(c *Config) { c.Limits.PlayerMaxConns = 2 })
		alice := tokenTarget(hsToken(t, claims("alice")))
		for range 2 {
			if c := attempt(t, nil, s.Addr(), alice); c.status() != http.StatusSwitchingProtocols {
				t.Fatalf("status = %d, want 101", c.status())
			}
		}
		requireRefused(t, attempt(t, nil, s.Addr(), alice), http.StatusTooManyRequests)
		if c := attempt(t, nil, s.Addr(), tokenTarget(hsToken(t, claims("bob")))); c.status() != http.StatusSwitchingProtocols {
			t.Fatalf("another player: status = %d, want 101", c.status())
		}
		if n := counterValue(t, s.Registry(), "phxgate_gateway_connect_refused_total", "player_conn_limit"); n != 1 {
			t.Fatalf("player_conn_limit refusals = %v, want 1", n)
		}
	})
	t.Run("node", func(t *testing.T) {
		s := authServer(t, func(c *Config) { c.Limits.MaxConns = 2 })
		first := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0")
		for range 1 {
			if c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0"); c.status() != http.StatusSwitchingProtocols {
				t.Fatalf("status = %d, want 101", c.status())
			}
		}
		requireRefused(t, attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0"), http.StatusServiceUnavailable)
		// A closed socket gives its slot back.
		first.conn.Close()
		waitFor(t, 5*time.Second, func() bool {
			return counterValue(t, s.Registry(), "phxgate_admission_connections", "") == 1
		}, "the first socket's slot given back")
		if c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0"); c.status() != http.StatusSwitchingProtocols {
			t.Fatalf("after a close: status = %d, want 101", c.status())
		}
	})
}

func TestOriginCheck(t *testing.T) {
	s := authServer(t, func(c *Config) {
		c.CheckOrigin = []string{"https://app.example.com", "https://*.games.example.com"}
	})
	tests := []struct {
		origin string
		want   int
	}{
		{"https://evil.com", http.StatusForbidden},
		{"null", http.StatusForbidden},
		{"https://app.example.com.evil.com", http.StatusForbidden},
		{"http://app.example.com", http.StatusForbidden},
		{"https://app.example.com:8443", http.StatusForbidden},
		{"https://games.example.com", http.StatusForbidden},
		{"https://app.example.com", http.StatusSwitchingProtocols},
		{"https://app.example.com:443", http.StatusSwitchingProtocols},
		{"https://eu.games.example.com", http.StatusSwitchingProtocols},
		{"", http.StatusSwitchingProtocols}, // non-browser client: no Origin
	}
	for _, tt := range tests {
		t.Run(cmpOr(tt.origin, "none"), func(t *testing.T) {
			var extra []string
			if tt.origin != "" {
				extra = append(extra, "Origin: "+tt.origin)
			}
			c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0", extra...)
			if tt.want == http.StatusForbidden {
				requireRefused(t, c, http.StatusForbidden)
				return
			}
			if c.status() != tt.want {
				t.Fatalf("status = %d, want %d", c.status(), tt.want)
			}
		})
	}
	t.Run("require_origin", func(t *testing.T) {
		s := authServer(t, func(c *Config) {
			c.CheckOrigin = []string{"https://app.example.com"}
			c.RequireOrigin = true
		})
		requireRefused(t, attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0"), http.StatusForbidden)
	})
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestTrustedProxyXFF: X-Forwarded-For names the client only behind a
// trusted proxy.
func TestTrustedProxyXFF(t *testing.T) {
	s := authServer(t, func(c *Config) { c.TrustedProxies = []string{"127.0.0.1/32"} })
	if c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0", "X-Forwarded-For: 2001:db8:1:2:3:4:5:6"); c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d", c.status())
	}
	if got := s.rec.lastInfo().RateKey; got != "ip:2001:db8:1:2::/64" {
		t.Fatalf("rate key = %q, want the client's /64", got)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	if c := attempt(t, d, s.Addr(), "/socket/websocket?vsn=2.0.0", "X-Forwarded-For: 198.51.100.7"); c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d", c.status())
	}
	if got := s.rec.lastInfo().RateKey; got != "ip:127.0.0.2/32" {
		t.Fatalf("rate key = %q, want the untrusted peer", got)
	}
}

// TestJWKSRotationThroughGateway: a token signed by a rotated-in key is
// accepted once the JWKS is refreshed, and a flood of unknown kids costs
// the identity provider at most one fetch per auth.jwks_refresh_interval.
func TestJWKSRotationThroughGateway(t *testing.T) {
	k1, k2 := newECKey(t), newECKey(t)
	jwks := newJWKSServer(t, map[string]*ecdsa.PublicKey{"k1": &k1.PublicKey})
	clock := newTestClock()
	s := authServer(t, func(c *Config) {
		c.Auth.Required = true
		c.Auth.JWKSURL = jwks.url()
		c.Auth.JWKSRefreshInterval = time.Minute
		c.Auth.Now = clock.Now
	})
	es := func(key *ecdsa.PrivateKey, kid string) string {
		return tokenTarget(signToken(t, jwt.SigningMethodES256, key, claims("alice"), kid))
	}
	if n := jwks.hits.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times at start, want 1", n)
	}
	if c := attempt(t, nil, s.Addr(), es(k1, "k1")); c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("k1: status = %d, want 101", c.status())
	}

	jwks.set(t, map[string]*ecdsa.PublicKey{"k2": &k2.PublicKey})
	clock.Advance(time.Minute + time.Second)
	if c := attempt(t, nil, s.Addr(), es(k2, "k2")); c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("k2 after rotation: status = %d, want 101", c.status())
	}
	if n := jwks.hits.Load(); n != 2 {
		t.Fatalf("JWKS fetched %d times, want 2 (start, rotation)", n)
	}

	for i := range 50 {
		requireRefused(t, attempt(t, nil, s.Addr(), es(k2, "forged-"+strconv.Itoa(i))), http.StatusForbidden)
	}
	if n := jwks.hits.Load(); n != 2 {
		t.Fatalf("a flood of unknown kids fetched the JWKS %d more times, want 0 within the interval", n-2)
	}
	clock.Advance(time.Minute + time.Second)
	for i := range 50 {
		requireRefused(t, attempt(t, nil, s.Addr(), es(k2, "forged-again-"+strconv.Itoa(i))), http.StatusForbidden)
	}
	if n := jwks.hits.Load(); n != 3 {
		t.Fatalf("after another interval: %d fetches, want 3", n)
	}
	// k1 is gone from the set: its tokens are refused now.
	requireRefused(t, attempt(t, nil, s.Addr(), es(k1, "k1")), http.StatusForbidden)
}

// corruptSignature changes the first character of tok's signature. (The
// last characters are no good for this: the final base64url character
// carries padding bits a decoder may ignore, so changing it can leave the
// signature's bytes as they were.)
func corruptSignature(tok string) string {
	i := strings.LastIndexByte(tok, '.') + 1
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}
