package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"sync"
	"time"

	"crypto/rsa"
)

// jwk is one key of a JWKS document (RFC 7517), public members only.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	// RSA
	N string `json:"n"`
	E string `json:"e"`
	// EC and OKP
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// jwksKey is a parsed key and the one algorithm its JWK pinned, if any.
type jwksKey struct {
	key any
	alg string
}

func (k jwksKey) allows(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	return keyAllows(k.key, alg)
}

// jwksCache fetches and caches a JWKS. Lookups take a read lock; refreshes
// are serialised by sem (a channel so a waiter can give up on ctx) and
// spaced at least minInterval apart.
type jwksCache struct {
	url         string
	client      *http.Client
	timeout     time.Duration
	minInterval time.Duration
	maxBytes    int64
	now         func() time.Time
	m           *metrics

	mu   sync.RWMutex
	keys map[string]jwksKey // by kid; replaced whole on refresh

	sem       chan struct{} // capacity 1: holder may fetch
	lastFetch time.Time     // guarded by sem
}

func newJWKSCache(cfg Config, m *metrics) *jwksCache {
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: cfg.JWKSTimeout}
	}
	return &jwksCache{
		url:         cfg.JWKSURL,
		client:      client,
		timeout:     cfg.JWKSTimeout,
		minInterval: cfg.JWKSRefreshInterval,
		maxBytes:    cfg.JWKSMaxBytes,
		now:         cfg.Now,
		m:           m,
		sem:         make(chan struct{}, 1),
	}
}

func (c *jwksCache) get(kid string) (jwksKey, bool) {
	c.mu.RLock()
	k, ok := c.keys[kid]
	c.mu.RUnlock()
	return k, ok
}

// all returns the cached keys (for kid-less tokens).
func (c *jwksCache) all() []jwksKey {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]jwksKey, 0, len(c.keys))
	for _, k := range c.keys {
		out = append(out, k)
	}
	return out
}

func (c *jwksCache) loaded() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.keys != nil
}

// lookup returns the key for kid, refreshing the set once if the kid is
// unknown and the last fetch is older than minInterval.
func (c *jwksCache) lookup(ctx context.Context, kid string) (jwksKey, error) {
	if k, ok := c.get(kid); ok {
		return k, nil
	}
	if err := c.refresh(ctx, false); err != nil {
		return jwksKey{}, err
	}
	if k, ok := c.get(kid); ok {
		return k, nil
	}
	return jwksKey{}, ErrUnknownKID
}

// refresh fetches the set unless one was fetched less than minInterval ago
// (force skips that check, for startup). Concurrent callers wait for the
// fetch in flight and then see its result instead of fetching again.
func (c *jwksCache) refresh(ctx context.Context, force bool) error {
	start := c.now()
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrJWKSUnavailable, ctx.Err())
	}
	defer func() { <-c.sem }()
	// Measured from before we queued: if another caller fetched while we
	// waited, that fetch already answered our question.
	if !force && !c.lastFetch.IsZero() && (c.lastFetch.After(start) || c.now().Sub(c.lastFetch) < c.minInterval) {
		c.m.jwksRefresh.WithLabelValues("throttled").Inc()
		return nil
	}
	// Failures count too: a dead identity provider is not hammered either.
	c.lastFetch = c.now()
	// A fetch serves every waiter, so one caller giving up must not abort
	// it; the timeout still bounds it.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	keys, err := c.fetch(fctx)
	if err != nil {
		c.m.jwksRefresh.WithLabelValues("error").Inc()
		return fmt.Errorf("%w: %w", ErrJWKSUnavailable, err)
	}
	c.m.jwksRefresh.WithLabelValues("ok").Inc()
	c.m.jwksKeys.Set(float64(len(keys)))
	c.mu.Lock()
	c.keys = keys
	c.mu.Unlock()
	return nil
}

func (c *jwksCache) fetch(ctx context.Context) (map[string]jwksKey, error) {
	// The URL is the configured one, verbatim: nothing from a token ever
	// reaches it.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return nil, fmt.Errorf("jwks: HTTP status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > c.maxBytes {
		return nil, fmt.Errorf("jwks: body over %d bytes", c.maxBytes)
	}
	return parseJWKS(body)
}

// parseJWKS keeps the usable signing keys of a JWKS document. Keys of
// unknown types, encryption keys and malformed keys are skipped rather than
// failing the whole set, so one exotic key at the provider does not lock
// every player out.
func parseJWKS(body []byte) (map[string]jwksKey, error) {
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	keys := make(map[string]jwksKey)
	for _, j := range doc.Keys {
		if len(keys) >= MaxJWKSKeys {
			break
		}
		if j.Use != "" && j.Use != "sig" {
			continue
		}
		k, err := j.publicKey()
		if err != nil {
			continue
		}
		if j.Alg != "" && !keyAllows(k, j.Alg) {
			continue
		}
		keys[j.Kid] = jwksKey{key: k, alg: j.Alg}
	}
	return keys, nil
}

func b64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

func (j jwk) publicKey() (any, error) {
	var k any
	switch j.Kty {
	case "RSA":
		n, err := b64(j.N)
		if err != nil {
			return nil, err
		}
		e, err := b64(j.E)
		if err != nil {
			return nil, err
		}
		if len(e) == 0 || len(e) > 4 {
			return nil, errors.New("bad RSA exponent")
		}
		k = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	case "EC":
		var curve elliptic.Curve
		switch j.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return nil, errors.New("unsupported curve")
		}
		x, err := b64(j.X)
		if err != nil {
			return nil, err
		}
		y, err := b64(j.Y)
		if err != nil {
			return nil, err
		}
		size := (curve.Params().BitSize + 7) / 8
		if len(x) != size || len(y) != size {
			return nil, errors.New("bad EC coordinate length")
		}
		// ParseUncompressedPublicKey checks that the point is on the curve.
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, err
		}
		k = pub
	case "OKP":
		if j.Crv != "Ed25519" {
			return nil, errors.New("unsupported OKP curve")
		}
		x, err := b64(j.X)
		if err != nil {
			return nil, err
		}
		if len(x) != ed25519.PublicKeySize {
			return nil, errors.New("bad Ed25519 key length")
		}
		k = ed25519.PublicKey(x)
	default:
		return nil, errors.New("unsupported kty")
	}
	if err := checkPublicKey(k); err != nil {
		return nil, err
	}
	return k, nil
}
