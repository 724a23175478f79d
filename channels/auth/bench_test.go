package auth

import (
	"context"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

func BenchmarkVerify(b *testing.B) {
	k := keys(b)
	v, _ := newTestVerifier(b, allKeysConfig(b), newClock())
	for _, tc := range []struct {
		name string
		m    jwt.SigningMethod
		key  any
	}{
		{"HS256", jwt.SigningMethodHS256, []byte(secret256)},
		{"RS256", jwt.SigningMethodRS256, k.rsa},
		{"ES256", jwt.SigningMethodES256, k.p256},
		{"EdDSA", jwt.SigningMethodEdDSA, k.ed},
	} {
		tok := sign(b, tc.m, tc.key, baseClaims(), "")
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(context.Background(), tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("TooLarge", func(b *testing.B) {
		tok := string(make([]byte, 1<<20))
		b.ReportAllocs()
		for b.Loop() {
			_, _ = v.Verify(context.Background(), tok)
		}
	})
}
