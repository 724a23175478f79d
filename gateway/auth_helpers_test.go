//go:build linux

package gateway

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// testSecret is an HS256 secret of the minimum length (32 bytes).
const testSecret = "phxgate-test-secret-0123456789ab"

var (
	rsaOnce sync.Once
	rsaPriv *rsa.PrivateKey
)

// testRSA is one RSA key per test binary (generating 2048-bit keys is slow
// under -race).
func testRSA(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	rsaOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		rsaPriv = k
	})
	return rsaPriv
}

func newECKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// publicPEM returns the PKIX PEM of pub.
func publicPEM(tb testing.TB, pub any) []byte {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func writePEM(tb testing.TB, pub any) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "key.pem")
	if err := os.WriteFile(p, publicPEM(tb, pub), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// claims returns claims for player that are valid for an hour.
func claims(player string) jwt.MapClaims {
	return jwt.MapClaims{"sub": player, "exp": time.Now().Add(time.Hour).Unix()}
}

func signToken(tb testing.TB, m jwt.SigningMethod, key any, c jwt.MapClaims, kid string) string {
	tb.Helper()
	t := jwt.NewWithClaims(m, c)
	if kid != "" {
		t.Header["kid"] = kid
	}
	s, err := t.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func hsToken(tb testing.TB, c jwt.MapClaims) string {
	tb.Helper()
	return signToken(tb, jwt.SigningMethodHS256, []byte(testSecret), c, "")
}

// unsignedToken builds header.payload. with alg none.
func unsignedToken(tb testing.TB, c jwt.MapClaims) string {
	tb.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT"})
	p, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p) + "."
}

// jwksServer serves a JWKS the test can swap and counts the fetches.
type jwksServer struct {
	srv  *httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	body []byte
}

func newJWKSServer(tb testing.TB, keys map[string]*ecdsa.PublicKey) *jwksServer {
	tb.Helper()
	s := &jwksServer{}
	s.set(tb, keys)
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		body := s.body
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	tb.Cleanup(s.srv.Close)
	return s
}

func (s *jwksServer) url() string { return s.srv.URL + "/jwks.json" }

func (s *jwksServer) set(tb testing.TB, keys map[string]*ecdsa.PublicKey) {
	tb.Helper()
	var doc struct {
		Keys []map[string]string `json:"keys"`
	}
	enc := base64.RawURLEncoding.EncodeToString
	for kid, k := range keys {
		raw, err := k.Bytes() // 0x04 || X || Y
		if err != nil {
			tb.Fatal(err)
		}
		doc.Keys = append(doc.Keys, map[string]string{"kty": "EC", "kid": kid, "crv": "P-256", "use": "sig",
			"x": enc(raw[1:33]), "y": enc(raw[33:])})
	}
	b, err := json.Marshal(doc)
	if err != nil {
		tb.Fatal(err)
	}
	s.mu.Lock()
	s.body = b
	s.mu.Unlock()
}

// testClock is a settable clock for the verifier (JWKS refresh spacing).
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *testClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *testClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// authServer starts a gateway with the production admission (no
// WithAdmit) and the recording test handler.
func authServer(tb testing.TB, mod func(*Config), opts ...Option) *testServer {
	tb.Helper()
	return startServer(tb, func(c *Config) {
		c.Auth.HS256Secret = testSecret
		if mod != nil {
			mod(c)
		}
	}, append([]Option{WithAdmit(nil)}, opts...)...)
}

// attempt sends one upgrade request and returns the client; its resp is nil
// when the server cut the connection before answering. The request is
// written from its own goroutine so a server that answers early (431) is
// read even while a huge request is still being written.
func attempt(tb testing.TB, d *net.Dialer, addr net.Addr, target string, extra ...string) *client {
	tb.Helper()
	if d == nil {
		d = &net.Dialer{}
	}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		tb.Fatalf("dial: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var req strings.Builder
	req.WriteString("GET " + target + " HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
	for _, h := range extra {
		req.WriteString(h + "\r\n")
	}
	req.WriteString("\r\n")
	go func() { _, _ = io.WriteString(c, req.String()) }()
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		resp = nil
	}
	return &client{tb: tb, conn: c, br: br, resp: resp}
}

// status is the response status, 0 for none.
func (c *client) status() int {
	if c.resp == nil {
		return 0
	}
	return c.resp.StatusCode
}

// wsURL is the socket URL of s for the phx client.
func wsURL(s *Server) string { return "ws://" + s.Addr().String() + "/socket/websocket" }
