package gateway

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// otel.enabled is read from the file, the environment and the flags, and
// off by default.
func TestOtelEnabledConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "phxgate.yaml")
	if err := os.WriteFile(file, []byte("otel:\n  enabled: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want bool
	}{
		{"default", nil, nil, false},
		{"file", []string{"--config", file}, nil, true},
		{"env", nil, map[string]string{"PHXGATE_OTEL_ENABLED": "true"}, true},
		{"flag over file", []string{"--config", file, "--otel.enabled=false"}, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := LoadConfig(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Otel.Enabled != tc.want {
				t.Errorf("otel.enabled = %v, want %v", cfg.Otel.Enabled, tc.want)
			}
		})
	}
	if _, err := LoadConfig(nil, func(k string) string {
		if k == "PHXGATE_OTEL_ENABLED" {
			return "maybe"
		}
		return ""
	}, io.Discard); err == nil || !strings.Contains(err.Error(), "otel.enabled") {
		t.Errorf("bad PHXGATE_OTEL_ENABLED: err %v, want one naming otel.enabled", err)
	}
}
