package gateway

import (
	"errors"
	"os"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The api secret of deploy/k8s/secret.yaml is a placeholder long enough
// to pass the length check: applied unchanged, it must fail the start,
// naming the key, not guard the API with a value anyone can read.
func TestAPISecretPlaceholderRefused(t *testing.T) {
	raw, err := os.ReadFile("../deploy/k8s/secret.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var manifest struct {
		StringData struct {
			APISecret string `yaml:"api_secret"`
		} `yaml:"stringData"`
	}
	if err := yaml.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	placeholder := manifest.StringData.APISecret
	if len(placeholder) < 32 {
		t.Fatalf("placeholder %q: the length check alone refuses it; this test guards the other case", placeholder)
	}
	for _, secret := range []string{placeholder, "x" + placeholder + "x", "0123456789abcdef-REPLACE-0123456789abcdef"} {
		cfg := testConfig()
		cfg.APISecret = secret
		err := cfg.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "api_secret") {
			t.Errorf("api_secret %q: Validate = %v, want an error naming api_secret", secret, err)
		}
	}
	cfg := testConfig()
	cfg.APISecret = testAPISecret
	if err := cfg.Validate(); err != nil {
		t.Errorf("a real secret: %v", err)
	}
}
