package auth

import (
	"context"
	"errors"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// FuzzVerify feeds arbitrary tokens to a verifier with every key family: it
// must never panic, and a token is accepted only with a PlayerID.
func FuzzVerify(f *testing.F) {
	k := keys(f)
	f.Add(sign(f, jwt.SigningMethodHS256, []byte(secret256), baseClaims(), ""))
	f.Add(sign(f, jwt.SigningMethodES256, k.p256, baseClaims(), "kid"))
	f.Add(sign(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, baseClaims(), ""))
	f.Add("..")
	f.Add("eyJhbGciOiJIUzI1NiJ9.e30.")
	f.Add("a.b.c.d")
	v, _ := newTestVerifier(f, allKeysConfig(f), newClock())
	f.Fuzz(func(t *testing.T, token string) {
		id, err := v.Verify(context.Background(), token)
		if err == nil && (id == nil || id.PlayerID == "") {
			t.Fatalf("accepted without identity: %q", token)
		}
		if err != nil && Reason(err) == "internal" && !errors.Is(err, context.Canceled) {
			t.Fatalf("unclassified error %v for %q", err, token)
		}
	})
}

// FuzzParseJWKS: a hostile identity provider (or a MITM on a misconfigured
// URL) must not crash the gateway.
func FuzzParseJWKS(f *testing.F) {
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		keys, err := parseJWKS(body)
		if err == nil && len(keys) > MaxJWKSKeys {
			t.Fatalf("%d keys", len(keys))
		}
	})
}
