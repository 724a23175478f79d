package gateway

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// Dev mode signs its tokens only with the secret drawn by applyDev: a
// Config built in code with Dev on and another hs256_secret (a production
// one, say) fails Validate and Start naming the key, as it does when it
// comes from the file, the environment or a flag.
func TestDevSecretCheckedInCode(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func(*Config)
	}{
		{"dev on, production secret", func(c *Config) {
			c.Dev = true
			c.Auth.HS256Secret = testSecret
		}},
		{"dev defaults, then another secret", func(c *Config) {
			applyDev(c)
			c.Auth.HS256Secret = testSecret
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			tc.build(&cfg)
			cfg.Listen = "127.0.0.1:0"
			if err := cfg.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "auth.hs256_secret") {
				t.Errorf("Validate = %v, want an error naming auth.hs256_secret", err)
			}
			s, err := Start(context.Background(), cfg, WithLogger(discardLogger()))
			if err == nil {
				_ = s.Shutdown(context.Background())
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "auth.hs256_secret") {
				t.Errorf("Start = %v, want an error naming auth.hs256_secret", err)
			}
		})
	}
	cfg := testConfig()
	applyDev(&cfg)
	cfg.Listen = "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Errorf("dev defaults: %v", err)
	}
}
