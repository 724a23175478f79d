package auth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// allKeysConfig enables every algorithm family from static keys.
func allKeysConfig(tb testing.TB) Config {
	tb.Helper()
	k := keys(tb)
	cfg := NewConfig()
	cfg.HS256Secret, cfg.HS384Secret, cfg.HS512Secret = secret256, secret384, secret512
	cfg.PublicKeyFiles = []string{
		pemFile(tb, &k.rsa.PublicKey),
		pemFile(tb, &k.p256.PublicKey),
		pemFile(tb, &k.p384.PublicKey),
		pemFile(tb, &k.p521.PublicKey),
		pemFile(tb, k.ed.Public()),
	}
	return cfg
}

func TestVerifyAcceptsEachAlgorithm(t *testing.T) {
	k := keys(t)
	v, reg := newTestVerifier(t, allKeysConfig(t), newClock())
	want := []string{"ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512"}
	if got := v.Methods(); !slices.Equal(got, want) {
		t.Fatalf("Methods() = %v, want %v", got, want)
	}
	cases := []struct {
		name string
		m    jwt.SigningMethod
		key  any
	}{
		{"HS256", jwt.SigningMethodHS256, []byte(secret256)},
		{"HS384", jwt.SigningMethodHS384, []byte(secret384)},
		{"HS512", jwt.SigningMethodHS512, []byte(secret512)},
		{"RS256", jwt.SigningMethodRS256, k.rsa},
		{"RS384", jwt.SigningMethodRS384, k.rsa},
		{"RS512", jwt.SigningMethodRS512, k.rsa},
		{"ES256", jwt.SigningMethodES256, k.p256},
		{"ES384", jwt.SigningMethodES384, k.p384},
		{"ES512", jwt.SigningMethodES512, k.p521},
		{"EdDSA", jwt.SigningMethodEdDSA, k.ed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := baseClaims()
			c["topics"] = []string{"room:*"}
			id, err := v.Verify(context.Background(), sign(t, tc.m, tc.key, c, ""))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if id.PlayerID != "player-1" || !id.Expires.Equal(t0.Add(time.Hour)) {
				t.Fatalf("identity = %+v", id)
			}
			if !slices.Equal(id.Topics, []string{"room:*"}) || !strings.Contains(string(id.Raw), `"sub":"player-1"`) {
				t.Fatalf("topics %v raw %s", id.Topics, id.Raw)
			}
		})
	}
	if got := counterValue(t, reg, "phxgate_auth_verifications_total", "result", "ok"); got != float64(len(cases)) {
		t.Fatalf("ok verifications metric = %v, want %d", got, len(cases))
	}
}

// TestVerifyRefusesAttacks runs every forged or out-of-policy token we know of
// against a verifier that holds an RSA key, an HS256 secret, an audience and
// an issuer.
func TestVerifyRefusesAttacks(t *testing.T) {
	k := keys(t)
	rsaPEM := pemBytes(t, &k.rsa.PublicKey)
	cfg := NewConfig()
	cfg.HS256Secret = secret256
	cfg.PublicKeyFiles = []string{pemFile(t, &k.rsa.PublicKey), pemFile(t, &k.p256.PublicKey)}
	cfg.Audience, cfg.Issuer = "game", "https://id.example.test"
	good := func() jwt.MapClaims {
		c := baseClaims()
		c["aud"], c["iss"] = "game", "https://id.example.test"
		return c
	}
	with := func(key string, val any) jwt.MapClaims {
		c := good()
		if val == nil {
			delete(c, key)
		} else {
			c[key] = val
		}
		return c
	}
	// alg none: the library refuses to sign it unless asked explicitly.
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, good(), "")
	noneUpper := func() string {
		h := enc([]byte(`{"alg":"NONE","typ":"JWT"}`))
		return h + "." + strings.Split(none, ".")[1] + "."
	}()
	huge := make([]byte, 1<<20)
	for i := range huge {
		huge[i] = 'a'
	}
	cases := []struct {
		name  string
		token string
		want  error
	}{
		{"alg none", none, ErrTokenInvalid},
		{"alg NONE uppercase", noneUpper, ErrTokenInvalid},
		{"HS256 signed with the RSA public key (key confusion)", sign(t, jwt.SigningMethodHS256, rsaPEM, good(), ""), ErrTokenInvalid},
		{"HS384 not configured", sign(t, jwt.SigningMethodHS384, []byte(secret384), good(), ""), ErrTokenInvalid},
		{"RS256 signed by an unknown key", sign(t, jwt.SigningMethodRS256, k.rsa2, good(), ""), ErrTokenInvalid},
		{"ES384 header with P-256 key configured only", sign(t, jwt.SigningMethodES384, k.p384, good(), ""), ErrTokenInvalid},
		{"EdDSA not configured", sign(t, jwt.SigningMethodEdDSA, k.ed, good(), ""), ErrTokenInvalid},
		{"kid path traversal without JWKS is just a bad signature", sign(t, jwt.SigningMethodRS256, k.rsa2, good(), "../../etc/passwd"), ErrTokenInvalid},
		{"missing exp", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("exp", nil), ""), ErrTokenExpired},
		{"expired beyond leeway", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("exp", t0.Add(-31*time.Second).Unix()), ""), ErrTokenExpired},
		{"nbf in the future", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("nbf", t0.Add(5*time.Minute).Unix()), ""), ErrTokenNotYetValid},
		{"wrong aud", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("aud", "other-game"), ""), ErrTokenAudience},
		{"missing aud", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("aud", nil), ""), ErrTokenAudience},
		{"wrong iss", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("iss", "https://evil.test"), ""), ErrTokenIssuer},
		{"missing iss", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("iss", nil), ""), ErrTokenIssuer},
		{"missing sub", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("sub", nil), ""), ErrNoSubject},
		{"empty sub", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("sub", ""), ""), ErrNoSubject},
		{"numeric sub", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("sub", 42), ""), ErrTokenMalformed},
		{"sub over 256 bytes", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("sub", strings.Repeat("p", MaxSubjectBytes+1)), ""), ErrSubjectTooLong},
		{"topics not a list", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("topics", "room:*"), ""), ErrTokenMalformed},
		{"topics list of numbers", sign(t, jwt.SigningMethodHS256, []byte(secret256), with("topics", []int{1}), ""), ErrTokenMalformed},
		{"tampered payload", func() string {
			p := strings.Split(sign(t, jwt.SigningMethodHS256, []byte(secret256), good(), ""), ".")
			return p[0] + "." + enc([]byte(`{"sub":"admin","exp":9999999999,"aud":"game","iss":"https://id.example.test"}`)) + "." + p[2]
		}(), ErrTokenInvalid},
		{"a 1 MB token", string(huge), ErrTokenTooLarge},
		{"one byte over the limit", strings.Repeat("a", DefaultMaxTokenBytes+1), ErrTokenTooLarge},
		{"only dots", "..", ErrTokenMalformed},
		{"many dots", strings.Repeat(".", 100), ErrTokenMalformed},
		{"garbage", "not-a-token", ErrTokenMalformed},
		{"empty", "", ErrTokenMissing},
	}
	v, reg := newTestVerifier(t, cfg, newClock())
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.Verify(context.Background(), tc.token)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %+v, %v; want %v", id, err, tc.want)
			}
			if id != nil {
				t.Fatalf("identity returned with error: %+v", id)
			}
			if len(tc.token) > 8 && strings.Contains(err.Error(), tc.token) {
				t.Fatalf("error text contains the token")
			}
		})
	}
	if got := counterValue(t, reg, "phxgate_auth_verifications_total", "result", "too_large"); got != 2 {
		t.Fatalf("too_large metric = %v, want 2", got)
	}
}

func TestVerifyLeeway(t *testing.T) {
	cases := []struct {
		name    string
		exp     time.Duration // relative to now
		nbf     time.Duration
		wantErr error
	}{
		{"expired within leeway accepted", -29 * time.Second, 0, nil},
		{"expired beyond leeway refused", -31 * time.Second, 0, ErrTokenExpired},
		{"nbf within leeway accepted", time.Hour, 29 * time.Second, nil},
		{"nbf beyond leeway refused", time.Hour, 31 * time.Second, ErrTokenNotYetValid},
	}
	cfg := NewConfig()
	cfg.HS256Secret = secret256
	v, _ := newTestVerifier(t, cfg, newClock())
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := baseClaims()
			c["exp"] = t0.Add(tc.exp).Unix()
			if tc.nbf != 0 {
				c["nbf"] = t0.Add(tc.nbf).Unix()
			}
			_, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, []byte(secret256), c, ""))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Verify err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestVerifyKeyConfusionRSAOnly(t *testing.T) {
	// With no HMAC secret at all, an HS256 token must not even reach key
	// lookup, whatever it was signed with.
	k := keys(t)
	cfg := NewConfig()
	cfg.PublicKeyFiles = []string{pemFile(t, &k.rsa.PublicKey)}
	v, _ := newTestVerifier(t, cfg, newClock())
	for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		t.Run(m.Alg(), func(t *testing.T) {
			tok := sign(t, m, pemBytes(t, &k.rsa.PublicKey), baseClaims(), "")
			if _, err := v.Verify(context.Background(), tok); !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("Verify err = %v, want ErrTokenInvalid", err)
			}
		})
	}
}

func TestIdentityMayJoin(t *testing.T) {
	cases := []struct {
		name   string
		topics []string
		topic  string
		want   bool
	}{
		{"no claim is unrestricted", nil, "anything", true},
		{"empty claim allows nothing", []string{}, "room:1", false},
		{"exact", []string{"table:lobby"}, "table:lobby", true},
		{"exact does not prefix", []string{"table:lobby"}, "table:lobby2", false},
		{"wildcard suffix", []string{"room:*"}, "room:42", true},
		{"wildcard needs the prefix", []string{"room:*"}, "roomx:1", false},
		{"wildcard empty rest", []string{"room:*"}, "room:", true},
		{"star alone", []string{"*"}, "admin:1", true},
		{"inner star is literal", []string{"room:*:x"}, "room:1:x", false},
		{"second pattern", []string{"a", "game:*"}, "game:7", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := &Identity{PlayerID: "p", Topics: tc.topics}
			if got := id.MayJoin(tc.topic); got != tc.want {
				t.Fatalf("MayJoin(%q) with %q = %v", tc.topic, tc.topics, got)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name    string
		mutate  func(*Config)
		wantKey string // "" means valid
	}{
		{"defaults with a secret", func(c *Config) { c.HS256Secret = secret256 }, ""},
		{"required without keys", func(c *Config) {}, "required"},
		{"not required without keys", func(c *Config) { c.Required = false }, ""},
		{"short HS256 secret", func(c *Config) { c.HS256Secret = "short" }, "hs256_secret"},
		{"short HS512 secret", func(c *Config) { c.HS512Secret = secret384 }, "hs512_secret"},
		{"negative leeway", func(c *Config) { c.HS256Secret = secret256; c.Leeway = -time.Second }, "leeway"},
		{"huge leeway", func(c *Config) { c.HS256Secret = secret256; c.Leeway = time.Hour }, "leeway"},
		{"negative max token", func(c *Config) { c.HS256Secret = secret256; c.MaxTokenBytes = -1 }, "max_token_bytes"},
		{"jwks over http", func(c *Config) { c.JWKSURL = "http://id.example.test/jwks" }, "jwks_url"},
		{"jwks over http loopback", func(c *Config) { c.JWKSURL = "http://127.0.0.1:8080/jwks" }, ""},
		{"jwks file scheme", func(c *Config) { c.JWKSURL = "file:///etc/passwd" }, "jwks_url"},
		{"jwks relative", func(c *Config) { c.JWKSURL = "/jwks.json" }, "jwks_url"},
		{"refresh past a day", func(c *Config) { c.JWKSURL = "https://id.example.test/jwks"; c.JWKSRefreshInterval = 25 * time.Hour }, "jwks_refresh_interval"},
		{"negative refresh", func(c *Config) { c.JWKSURL = "https://id.example.test/jwks"; c.JWKSRefreshInterval = -1 }, "jwks_refresh_interval"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := NewConfig()
			tc.mutate(&c)
			err := c.Validate()
			if tc.wantKey == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.HasPrefix(fmt.Sprint(err), ErrConfig.Error()+": "+tc.wantKey+":") {
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.wantKey)
			}
		})
	}
}

func TestNewVerifierRefusesBadKeyFiles(t *testing.T) {
	k := keys(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		return writeFile(t, dir, name, body)
	}
	small, err := rsaKey(t, 1024)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		path string
	}{
		{"missing file", dir + "/nope.pem"},
		{"not PEM", write("junk.pem", "hello")},
		{"private key in a public key file", write("priv.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")},
		{"RSA key under 2048 bits", pemFile(t, &small.PublicKey)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := NewConfig()
			cfg.PublicKeyFiles = []string{pemFile(t, &k.rsa.PublicKey), tc.path}
			_, err := NewVerifier(cfg, nil)
			if !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), ErrConfig.Error()+": public_key_files[1]") {
				t.Fatalf("NewVerifier err = %v, want one naming public_key_files[1]", err)
			}
		})
	}
}

func TestVerifyConcurrent(t *testing.T) {
	v, _ := newTestVerifier(t, allKeysConfig(t), newClock())
	tok := sign(t, jwt.SigningMethodES256, keys(t).p256, baseClaims(), "")
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 20 {
				if _, err := v.Verify(context.Background(), tok); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

var _ = rand.Reader
