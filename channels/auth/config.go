package auth

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Limits and defaults. Each is a named constant so that the README, the
// tests and the metrics agree on one number.
const (
	// DefaultMaxTokenBytes bounds a token before any parsing: base64 and JSON
	// decoding of an attacker's megabyte costs CPU and memory on the
	// handshake path, while real tokens are a few hundred bytes.
	DefaultMaxTokenBytes = 8 << 10
	// DefaultLeeway absorbs clock skew between the issuer and this node.
	DefaultLeeway = 30 * time.Second
	// DefaultJWKSRefreshInterval is the minimum spacing of JWKS fetches
	// triggered by unknown kids. Anyone can forge a kid, so without this the
	// gateway would amplify a token flood onto the identity provider.
	DefaultJWKSRefreshInterval = time.Minute
	// DefaultJWKSTimeout bounds one JWKS fetch (connect, headers and body).
	DefaultJWKSTimeout = 5 * time.Second
	// DefaultJWKSMaxBytes bounds a JWKS response body; real key sets are a
	// few KiB.
	DefaultJWKSMaxBytes = 1 << 20
	// MaxJWKSKeys bounds the number of keys taken from one JWKS document, so
	// a kid-less token is tried against a bounded number of keys.
	MaxJWKSKeys = 64
	// MaxSubjectBytes bounds the player id: it becomes a map key in the rate
	// limiter and the connection tracker.
	MaxSubjectBytes = 256
	// MinRSABits refuses RSA keys too short to be safe.
	MinRSABits = 2048
)

// minHMACBytes follows RFC 7518 §3.2: an HMAC key must be at least as long
// as the hash output.
var minHMACBytes = map[string]int{"HS256": 32, "HS384": 48, "HS512": 64}

// Config configures a Verifier. It is the auth section of phxgate's
// configuration: the yaml tags are the keys under auth., and Validate names
// them relative to it ("leeway"; the caller adds "auth.").
type Config struct {
	// Required (auth.required) says that a connection without a token is
	// refused. The Verifier does not act on it (it only verifies tokens it is
	// given); the caller reads it. When true, at least one key source must
	// be configured.
	Required bool `yaml:"required" usage:"refuse connects without a valid token (401 missing, 403 invalid)"`
	// HS256Secret (auth.hs256_secret) enables HS256 with this secret, at
	// least 32 bytes. Empty disables HS256.
	HS256Secret string `yaml:"hs256_secret" usage:"HS256 secret for tokens (at least 32 bytes)"`
	// HS384Secret (auth.hs384_secret) enables HS384, at least 48 bytes.
	// Empty disables HS384.
	HS384Secret string `yaml:"hs384_secret" usage:"HS384 secret for tokens (at least 48 bytes)"`
	// HS512Secret (auth.hs512_secret) enables HS512, at least 64 bytes.
	// Empty disables HS512.
	HS512Secret string `yaml:"hs512_secret" usage:"HS512 secret for tokens (at least 64 bytes)"`
	// PublicKeyFiles (auth.public_key_files) are PEM files holding RSA
	// (≥ 2048 bits; enables RS256/384/512), ECDSA (P-256 → ES256, P-384 →
	// ES384, P-521 → ES512) or Ed25519 (EdDSA) public keys, in "PUBLIC KEY"
	// (PKIX) or "RSA PUBLIC KEY" (PKCS#1) blocks or certificates. A file may
	// hold several blocks. They are read once, by NewVerifier. Empty: none.
	PublicKeyFiles []string `yaml:"public_key_files" usage:"PEM files with RSA, ECDSA or Ed25519 public keys, comma-separated"`
	// JWKSURL (auth.jwks_url) is an https URL (http only for loopback hosts)
	// serving a JSON Web Key Set. Tokens with a `kid` are verified against
	// it. Empty disables JWKS.
	JWKSURL string `yaml:"jwks_url" usage:"JWKS URL (https; http only for loopback)"`
	// JWKSRefreshInterval (auth.jwks_refresh_interval) is the minimum time
	// between two JWKS fetches. Zero means DefaultJWKSRefreshInterval.
	JWKSRefreshInterval time.Duration `yaml:"jwks_refresh_interval" usage:"minimum time between two JWKS fetches"`
	// JWKSTimeout (auth.jwks_timeout) bounds one JWKS fetch. Zero means
	// DefaultJWKSTimeout.
	JWKSTimeout time.Duration `yaml:"jwks_timeout" usage:"deadline of one JWKS fetch"`
	// JWKSMaxBytes (auth.jwks_max_bytes) bounds the JWKS response body, in
	// bytes. Zero means DefaultJWKSMaxBytes.
	JWKSMaxBytes int64 `yaml:"jwks_max_bytes" usage:"largest JWKS response body in bytes"`
	// Leeway (auth.leeway) is the clock skew tolerated on exp and nbf.
	// Zero means no tolerance; NewConfig sets DefaultLeeway.
	Leeway time.Duration `yaml:"leeway" usage:"clock skew tolerated on exp and nbf"`
	// Audience (auth.audience), when set, must appear in the token's aud.
	// Empty: aud is not checked.
	Audience string `yaml:"audience" usage:"required token audience (empty: not checked)"`
	// Issuer (auth.issuer), when set, must equal the token's iss. Empty:
	// iss is not checked.
	Issuer string `yaml:"issuer" usage:"required token issuer (empty: not checked)"`
	// MaxTokenBytes (auth.max_token_bytes) is the largest token accepted, in
	// bytes, checked before parsing. Zero means DefaultMaxTokenBytes.
	MaxTokenBytes int `yaml:"max_token_bytes" usage:"largest token accepted, in bytes, checked before parsing"`

	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time `yaml:"-"`
	// HTTPClient fetches the JWKS; nil means a client with JWKSTimeout.
	// For tests.
	HTTPClient *http.Client `yaml:"-"`
}

// NewConfig returns the defaults: auth required, no keys (one must be
// added), 30 s leeway, 8 KiB tokens, JWKS refreshed at most once a minute.
func NewConfig() Config {
	return Config{
		Required:            true,
		Leeway:              DefaultLeeway,
		MaxTokenBytes:       DefaultMaxTokenBytes,
		JWKSRefreshInterval: DefaultJWKSRefreshInterval,
		JWKSTimeout:         DefaultJWKSTimeout,
		JWKSMaxBytes:        DefaultJWKSMaxBytes,
	}
}

// ErrConfig marks every configuration error.
var ErrConfig = errors.New("invalid auth config")

func configErr(key, msg string) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, key, msg)
}

// Validate checks the configuration; errors name the offending key. It does
// not read files or the network (NewVerifier does).
func (c Config) Validate() error {
	for _, s := range []struct{ key, alg, secret string }{
		{"hs256_secret", "HS256", c.HS256Secret},
		{"hs384_secret", "HS384", c.HS384Secret},
		{"hs512_secret", "HS512", c.HS512Secret},
	} {
		if s.secret != "" && len(s.secret) < minHMACBytes[s.alg] {
			return configErr(s.key, fmt.Sprintf("must be at least %d bytes for %s", minHMACBytes[s.alg], s.alg))
		}
	}
	if c.JWKSURL != "" {
		u, err := url.Parse(c.JWKSURL)
		if err != nil || u.Host == "" {
			return configErr("jwks_url", "must be an absolute URL")
		}
		switch u.Scheme {
		case "https":
		case "http":
			if !isLoopback(u.Hostname()) {
				return configErr("jwks_url", "must use https (http is allowed only for loopback hosts)")
			}
		default:
			return configErr("jwks_url", "must use https")
		}
	}
	if c.Leeway < 0 {
		return configErr("leeway", "must be ≥ 0")
	}
	if c.Leeway > 10*time.Minute {
		return configErr("leeway", "must be ≤ 10m")
	}
	if c.MaxTokenBytes < 0 {
		return configErr("max_token_bytes", "must be ≥ 0")
	}
	if c.JWKSRefreshInterval < 0 || c.JWKSRefreshInterval > 24*time.Hour {
		return configErr("jwks_refresh_interval", "must be between 0s and 24h")
	}
	if c.JWKSTimeout < 0 {
		return configErr("jwks_timeout", "must be ≥ 0")
	}
	if c.JWKSMaxBytes < 0 {
		return configErr("jwks_max_bytes", "must be ≥ 0")
	}
	if c.Required && !c.hasKeySource() {
		return configErr("required", "needs hs256_secret, hs384_secret, hs512_secret, public_key_files or jwks_url")
	}
	return nil
}

func (c Config) hasKeySource() bool {
	return c.HS256Secret != "" || c.HS384Secret != "" || c.HS512Secret != "" ||
		len(c.PublicKeyFiles) > 0 || c.JWKSURL != ""
}

// withDefaults fills zero values that mean "default".
func (c Config) withDefaults() Config {
	if c.MaxTokenBytes == 0 {
		c.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if c.JWKSRefreshInterval == 0 {
		c.JWKSRefreshInterval = DefaultJWKSRefreshInterval
	}
	if c.JWKSTimeout == 0 {
		c.JWKSTimeout = DefaultJWKSTimeout
	}
	if c.JWKSMaxBytes == 0 {
		c.JWKSMaxBytes = DefaultJWKSMaxBytes
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
