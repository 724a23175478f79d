package auth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func jwksVerifier(tb testing.TB, url string, clock *fakeClock) *Verifier {
	tb.Helper()
	cfg := NewConfig()
	cfg.JWKSURL = url
	v, _ := newTestVerifier(tb, cfg, clock)
	return v
}

func TestJWKSKeyTypes(t *testing.T) {
	k := keys(t)
	srv := newJWKSServer(t, map[string]any{
		"rsa": &k.rsa.PublicKey, "p256": &k.p256.PublicKey, "p384": &k.p384.PublicKey,
		"p521": &k.p521.PublicKey, "ed": k.ed.Public(),
	})
	v := jwksVerifier(t, srv.url(), newClock())
	cases := []struct {
		name, kid string
		m         jwt.SigningMethod
		key       any
		want      error
	}{
		{"RSA RS256", "rsa", jwt.SigningMethodRS256, k.rsa, nil},
		{"RSA RS512", "rsa", jwt.SigningMethodRS512, k.rsa, nil},
		{"EC P-256", "p256", jwt.SigningMethodES256, k.p256, nil},
		{"EC P-384", "p384", jwt.SigningMethodES384, k.p384, nil},
		{"EC P-521", "p521", jwt.SigningMethodES512, k.p521, nil},
		{"OKP Ed25519", "ed", jwt.SigningMethodEdDSA, k.ed, nil},
		{"RSA kid with an EC token", "rsa", jwt.SigningMethodES256, k.p256, ErrTokenInvalid},
		{"P-256 kid with an ES384 token", "p256", jwt.SigningMethodES384, k.p384, ErrTokenInvalid},
		{"right kid, wrong signer", "rsa", jwt.SigningMethodRS256, k.rsa2, ErrTokenInvalid},
		{"HS256 signed with the JWKS RSA key bytes", "rsa", jwt.SigningMethodHS256, pemBytes(t, &k.rsa.PublicKey), ErrTokenInvalid},
		{"no kid: tried against the matching keys", "", jwt.SigningMethodEdDSA, k.ed, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), sign(t, tc.m, tc.key, baseClaims(), tc.kid))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify err = %v, want %v", err, tc.want)
			}
		})
	}
	if got := srv.hits.Load(); got != 1 {
		t.Fatalf("JWKS fetched %d times, want 1 (cached)", got)
	}
}

func TestJWKSUnknownKID(t *testing.T) {
	k := keys(t)
	srv := newJWKSServer(t, map[string]any{"a": &k.rsa.PublicKey})
	v := jwksVerifier(t, srv.url(), newClock())
	_, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodRS256, k.rsa, baseClaims(), "nope"))
	if !errors.Is(err, ErrUnknownKID) {
		t.Fatalf("Verify err = %v, want ErrUnknownKID", err)
	}
}

func TestJWKSKIDPathTraversal(t *testing.T) {
	k := keys(t)
	srv := newJWKSServer(t, map[string]any{"a": &k.rsa.PublicKey})
	clock := newClock()
	v := jwksVerifier(t, srv.url(), clock)
	for _, kid := range []string{"../../etc/passwd", "/etc/passwd", "..%2f..%2fetc%2fpasswd", "a?x=1", "http://evil.test/jwks"} {
		t.Run(kid, func(t *testing.T) {
			clock.Advance(2 * time.Minute) // allow a refresh each time
			_, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodRS256, k.rsa, baseClaims(), kid))
			if !errors.Is(err, ErrUnknownKID) {
				t.Fatalf("Verify err = %v, want ErrUnknownKID", err)
			}
			if strings.Contains(err.Error(), kid) {
				t.Fatalf("error echoes the kid: %v", err)
			}
		})
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, p := range srv.paths {
		if p != "/.well-known/jwks.json" {
			t.Fatalf("JWKS server saw path %q; the kid must never reach a URL", p)
		}
	}
}

func TestJWKSKeyRotation(t *testing.T) {
	k := keys(t)
	srv := newJWKSServer(t, map[string]any{"old": &k.rsa.PublicKey})
	clock := newClock()
	v := jwksVerifier(t, srv.url(), clock)
	ctx := context.Background()
	oldTok := sign(t, jwt.SigningMethodRS256, k.rsa, baseClaims(), "old")
	newTok := sign(t, jwt.SigningMethodES256, k.p256, baseClaims(), "new")

	if _, err := v.Verify(ctx, oldTok); err != nil {
		t.Fatalf("old key before rotation: %v", err)
	}
	srv.set(t, map[string]any{"new": &k.p256.PublicKey})

	// Within the refresh interval of the last fetch, the new kid is unknown.
	clock.Advance(30 * time.Second)
	if _, err := v.Verify(ctx, newTok); !errors.Is(err, ErrUnknownKID) {
		t.Fatalf("new key 30 s after the last fetch: err = %v, want ErrUnknownKID", err)
	}
	// Once the interval has passed, the unknown kid triggers one refresh.
	clock.Advance(31 * time.Second)
	if _, err := v.Verify(ctx, newTok); err != nil {
		t.Fatalf("new key after rotation: %v", err)
	}
	if _, err := v.Verify(ctx, oldTok); !errors.Is(err, ErrUnknownKID) {
		t.Fatalf("retired key: err = %v, want ErrUnknownKID", err)
	}
	if got := srv.hits.Load(); got != 2 {
		t.Fatalf("JWKS hits = %d, want 2", got)
	}
}

// TestJWKSUnknownKIDFloodRefreshesOncePerMinute: anyone can mint tokens with
// random kids; the identity provider must see at most one request per
// refresh interval however many arrive, concurrently or not.
func TestJWKSUnknownKIDFloodRefreshesOncePerMinute(t *testing.T) {
	k := keys(t)
	srv := newJWKSServer(t, map[string]any{"a": &k.rsa.PublicKey})
	clock := newClock()
	v := jwksVerifier(t, srv.url(), clock)
	flood := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				b := make([]byte, 8)
				_, _ = rand.Read(b)
				_, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodRS256, k.rsa, baseClaims(), hex.EncodeToString(b)))
				if !errors.Is(err, ErrUnknownKID) {
					t.Errorf("Verify err = %v, want ErrUnknownKID", err)
				}
			})
		}
		wg.Wait()
	}
	steps := []struct {
		advance  time.Duration
		wantHits int64
	}{
		{0, 1},                // first use fetches once
		{30 * time.Second, 1}, // still inside the minute
		{29 * time.Second, 1}, // 59 s
		{2 * time.Second, 2},  // 61 s: one more
		{59 * time.Second, 2}, // 120 s since start, 59 s since the last
		{time.Second, 3},      // 60 s since the last
		{10 * time.Minute, 4}, // long quiet: still exactly one
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		flood(200)
		if got := srv.hits.Load(); got != s.wantHits {
			t.Fatalf("step %d: JWKS hits = %d, want %d", i, got, s.wantHits)
		}
	}
}

func TestJWKSUnavailable(t *testing.T) {
	k := keys(t)
	cases := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"HTTP 500", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) }},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("<html>")) }},
		{"body over the limit", func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"keys":[` + strings.Repeat(" ", DefaultJWKSMaxBytes) + `]}`))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			t.Cleanup(srv.Close)
			v := jwksVerifier(t, srv.URL, newClock())
			_, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodRS256, k.rsa, baseClaims(), "a"))
			if !errors.Is(err, ErrJWKSUnavailable) {
				t.Fatalf("Verify err = %v, want ErrJWKSUnavailable", err)
			}
		})
	}
}

func TestJWKSFetchTimeout(t *testing.T) {
	k := keys(t)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	cfg := NewConfig()
	cfg.JWKSURL = srv.URL
	cfg.JWKSTimeout = 50 * time.Millisecond
	v, _ := newTestVerifier(t, cfg, newClock())
	_, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodRS256, k.rsa, baseClaims(), "a"))
	if !errors.Is(err, ErrJWKSUnavailable) {
		t.Fatalf("Verify err = %v, want ErrJWKSUnavailable", err)
	}
}

func TestLoadJWKSAtStart(t *testing.T) {
	k := keys(t)
	srv := newJWKSServer(t, map[string]any{"a": &k.rsa.PublicKey})
	v := jwksVerifier(t, srv.url(), newClock())
	for range 2 { // forced: not throttled
		if err := v.LoadJWKS(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodRS256, k.rsa, baseClaims(), "a")); err != nil {
		t.Fatal(err)
	}
	if got := srv.hits.Load(); got != 2 {
		t.Fatalf("JWKS hits = %d, want 2", got)
	}
}

func TestParseJWKSSkipsUnusableKeys(t *testing.T) {
	k := keys(t)
	body := `{"keys":[
		{"kty":"oct","kid":"sym","k":"c2VjcmV0"},
		{"kty":"RSA","kid":"enc","use":"enc","n":"` + enc(k.rsa.N.Bytes()) + `","e":"AQAB"},
		{"kty":"RSA","kid":"bad-alg","alg":"ES256","n":"` + enc(k.rsa.N.Bytes()) + `","e":"AQAB"},
		{"kty":"EC","kid":"off-curve","crv":"P-256","x":"` + enc(make([]byte, 32)) + `","y":"` + enc(make([]byte, 32)) + `"},
		{"kty":"RSA","kid":"small","n":"` + enc(make([]byte, 64)) + `","e":"AQAB"},
		{"kty":"RSA","kid":"ok","alg":"RS256","n":"` + enc(k.rsa.N.Bytes()) + `","e":"AQAB"}
	]}`
	keys, err := parseJWKS([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys["ok"].key == nil {
		t.Fatalf("parsed keys %v, want only \"ok\"", keys)
	}
	if keys["ok"].allows("RS512") {
		t.Fatal("a key pinned to RS256 must not verify RS512")
	}
}
