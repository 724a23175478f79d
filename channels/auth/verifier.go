package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// Verifier checks tokens against the configured keys. Safe for concurrent
// use.
type Verifier struct {
	cfg     Config
	parser  *jwt.Parser
	hmac    map[string][]byte // alg → secret
	static  []any             // public keys from PEM files
	jwks    *jwksCache        // nil without a JWKS URL
	methods []string
	m       *metrics
}

// NewVerifier validates cfg, loads the PEM files and registers metrics on reg
// (nil: metrics are not registered). The JWKS is fetched on first use; call
// LoadJWKS to fetch it at start.
func NewVerifier(cfg Config, reg prometheus.Registerer) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	v := &Verifier{cfg: cfg, hmac: map[string][]byte{}, m: m}
	for alg, s := range map[string]string{"HS256": cfg.HS256Secret, "HS384": cfg.HS384Secret, "HS512": cfg.HS512Secret} {
		if s != "" {
			v.hmac[alg] = []byte(s)
			v.methods = append(v.methods, alg)
		}
	}
	for i, path := range cfg.PublicKeyFiles {
		keys, err := loadPublicKeyFile(path)
		if err != nil {
			return nil, fmt.Errorf("%w: public_key_files[%d] (%s): %w", ErrConfig, i, path, err)
		}
		for _, k := range keys {
			v.static = append(v.static, k)
			v.methods = append(v.methods, algsForKey(k)...)
		}
	}
	if cfg.JWKSURL != "" {
		v.jwks = newJWKSCache(cfg, m)
		// The JWKS content is unknown until fetched; allow the asymmetric
		// families and let the key lookup enforce each key's type.
		v.methods = append(v.methods, rsaAlgs...)
		v.methods = append(v.methods, ecAlgs...)
		v.methods = append(v.methods, edAlgs...)
	}
	slices.Sort(v.methods)
	v.methods = slices.Compact(v.methods)
	opts := []jwt.ParserOption{
		// Never empty: with no keys at all, an impossible method keeps
		// WithValidMethods from meaning "any".
		jwt.WithValidMethods(append([]string{"-"}, v.methods...)),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(cfg.Now),
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// Required reports Config.Required: whether a connection without a token is
// refused.
func (v *Verifier) Required() bool { return v.cfg.Required }

// Methods returns the accepted signing algorithms, sorted.
func (v *Verifier) Methods() []string { return slices.Clone(v.methods) }

// LoadJWKS fetches the JWKS now, regardless of the refresh interval; for
// start-up, so the first players do not wait for it. Without a JWKS URL it
// does nothing.
func (v *Verifier) LoadJWKS(ctx context.Context) error {
	if v.jwks == nil {
		return nil
	}
	return v.jwks.refresh(ctx, true)
}

type claims struct {
	jwt.RegisteredClaims
	Topics []string `json:"topics,omitempty"`
}

// Verify checks token and returns the identity it carries. Errors wrap one of
// the package's sentinels (see Reason) and never contain the token.
func (v *Verifier) Verify(ctx context.Context, token string) (*Identity, error) {
	id, err := v.verify(ctx, token)
	v.m.verify.WithLabelValues(Reason(err)).Inc()
	return id, err
}

func (v *Verifier) verify(ctx context.Context, token string) (*Identity, error) {
	if token == "" {
		return nil, ErrTokenMissing
	}
	if len(token) > v.cfg.MaxTokenBytes {
		return nil, ErrTokenTooLarge
	}
	var c claims
	tok, err := v.parser.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		return v.keyFor(ctx, t)
	})
	if err != nil {
		return nil, v.classify(err, &c)
	}
	if c.Subject == "" {
		return nil, ErrNoSubject
	}
	if len(c.Subject) > MaxSubjectBytes {
		return nil, ErrSubjectTooLong
	}
	id := &Identity{PlayerID: c.Subject, Expires: c.ExpiresAt.Time, Topics: c.Topics}
	// The signature covers the payload segment, so its decoding is the
	// verified claims; the parser already decoded it once, so it is valid.
	if _, payload, ok := strings.Cut(tok.Raw, "."); ok {
		payload, _, _ = strings.Cut(payload, ".")
		id.Raw, _ = base64.RawURLEncoding.DecodeString(payload)
	}
	return id, nil
}

// keyFor picks the keys that may verify t. The parser has already checked
// t's alg against the configured methods; this also binds the alg to the key
// type, so a key of one family is never offered to another family's
// algorithm.
func (v *Verifier) keyFor(ctx context.Context, t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	if secret, ok := v.hmac[alg]; ok {
		return secret, nil
	}
	if strings.HasPrefix(alg, "HS") {
		return nil, ErrTokenInvalid
	}
	kid, hasKID := t.Header["kid"].(string)
	if _, present := t.Header["kid"]; present && !hasKID {
		return nil, ErrTokenMalformed
	}
	var keys []jwt.VerificationKey
	if hasKID && v.jwks != nil {
		// A kid names a JWKS key. It is only a map key here.
		k, err := v.jwks.lookup(ctx, kid)
		if err != nil {
			return nil, err
		}
		if !k.allows(alg) {
			return nil, ErrTokenInvalid
		}
		return k.key, nil
	}
	// PEM keys carry no kid, so a kid is ignored when there is no JWKS.
	for _, k := range v.static {
		if keyAllows(k, alg) {
			keys = append(keys, k)
		}
	}
	if v.jwks != nil {
		if !v.jwks.loaded() {
			// A JWKS outage only matters when no static key can serve.
			if err := v.jwks.refresh(ctx, false); err != nil && len(keys) == 0 {
				return nil, err
			}
		}
		for _, k := range v.jwks.all() {
			if k.allows(alg) {
				keys = append(keys, k.key)
			}
		}
	}
	if len(keys) == 0 {
		return nil, ErrTokenInvalid
	}
	return jwt.VerificationKeySet{Keys: keys}, nil
}

// classify maps a jwt/v5 error to our sentinel, keeping the original in the
// chain. Order matters: the keyfunc's own errors come first.
func (v *Verifier) classify(err error, c *claims) error {
	for _, own := range []error{ErrUnknownKID, ErrJWKSUnavailable, ErrTokenMalformed, ErrTokenInvalid} {
		if errors.Is(err, own) {
			return fmt.Errorf("%w: %w", own, err)
		}
	}
	var s error
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		s = ErrTokenMalformed
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		s = ErrTokenInvalid
	case errors.Is(err, jwt.ErrTokenExpired):
		s = ErrTokenExpired
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		// The parser requires exp always, aud and iss when configured, and
		// does not say which one is missing except in prose.
		switch {
		case c.ExpiresAt == nil:
			s = ErrTokenExpired
		case v.cfg.Audience != "" && len(c.Audience) == 0:
			s = ErrTokenAudience
		default:
			s = ErrTokenIssuer
		}
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		s = ErrTokenNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		s = ErrTokenAudience
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		s = ErrTokenIssuer
	default:
		s = ErrTokenInvalid
	}
	return fmt.Errorf("%w: %w", s, err)
}
