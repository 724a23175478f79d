package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/phxgate/phxgate/channels/ratelimit"
)

// devAssets writes a demo page directory as `make node-deps` leaves it.
func devAssets(tb testing.TB, withPhoenix bool) string {
	tb.Helper()
	dir := tb.TempDir()
	files := map[string]string{
		"demo/index.html": "<!doctype html><title>dice</title>",
		"demo/app.mjs":    "export {};",
		"demo/style.css":  "body{}",
	}
	if withPhoenix {
		files["node_modules/phoenix/priv/static/phoenix.mjs"] = "export class Socket {}"
	}
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

func noEnv(string) string { return "" }

// --dev lays dev mode's settings under the other sources: flags still
// apply, and a bad dev key fails at start naming it.
func TestDevConfig(t *testing.T) {
	cfg, err := LoadConfig([]string{"--dev"}, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Dev || !cfg.Auth.Required || len(cfg.Auth.HS256Secret) != 64 || cfg.Listen != DefaultDevListen || cfg.RedisURL != "" {
		t.Fatalf("dev config %+v", cfg)
	}
	if r := cfg.Routes[0]; len(cfg.Routes) != 2 || r.Topic != "table:*" || r.Backend != "demo" || !r.Presence || r.History != 100 ||
		cfg.Routes[1].Topic != "room:*" || cfg.Routes[1].Backend != "echo" || !cfg.Routes[1].Presence {
		t.Fatalf("dev routes %+v", cfg.Routes)
	}
	l := cfg.Limits
	if l.PlayerMaxConns != devPlayerMaxConns || l.IPMaxConns != devIPMaxConns || l.JoinBurst != devJoinBurst ||
		l.Classes[ratelimit.DefaultClass].Burst != devEventBurst || cfg.Presence.MaxMetasPerKey != devMaxMetasPerKey {
		t.Fatalf("dev limits %+v, presence %+v", l, cfg.Presence)
	}
	// Every limit is still enforced: none is zero.
	if l.IPHandshakesPerSecond <= 0 || l.IPMaxHandshakes <= 0 || l.MaxConns <= 0 {
		t.Fatalf("dev limits %+v", l)
	}
	// Each start has its own secret.
	again, err := LoadConfig([]string{"--dev"}, noEnv, io.Discard)
	if err != nil || again.Auth.HS256Secret == cfg.Auth.HS256Secret {
		t.Fatalf("second dev secret equals the first (%v)", err)
	}

	cfg, err = LoadConfig([]string{"--dev", "--listen", "127.0.0.1:0", "--limits.player_max_conns", "3", "--demo_round", "1s"}, noEnv, io.Discard)
	if err != nil || cfg.Listen != "127.0.0.1:0" || cfg.Limits.PlayerMaxConns != 3 || cfg.DemoRound != time.Second || !cfg.Dev {
		t.Fatalf("flags over dev: %+v, %v", cfg, err)
	}
	env := func(k string) string {
		if k == "PHXGATE_DEV" {
			return "true"
		}
		return ""
	}
	if cfg, err = LoadConfig(nil, env, io.Discard); err != nil || !cfg.Dev || len(cfg.Routes) != 2 {
		t.Fatalf("PHXGATE_DEV=true: %+v, %v", cfg, err)
	}
	if cfg, err = LoadConfig(nil, noEnv, io.Discard); err != nil || cfg.Dev || len(cfg.Routes) != 0 {
		t.Fatalf("no dev: %+v, %v", cfg, err)
	}

	bad := []struct {
		name string
		args []string
		key  string
	}{
		{"token ttl", []string{"--dev", "--dev_token_ttl", "-1s"}, "dev_token_ttl"},
		{"demo round", []string{"--dev", "--demo_round", "1ms"}, "demo_round"},
		{"no secret", []string{"--dev", "--auth.hs256_secret", ""}, "auth.hs256_secret"},
		{"dev value", []string{"--dev=maybe"}, "dev"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(tc.args, noEnv, io.Discard)
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err %v, want a config error naming %s", err, tc.key)
			}
		})
	}
}

// Dev mode without phoenix.js on disk stops at start and says how to fix it.
func TestDevMissingAssets(t *testing.T) {
	cfg := testConfig()
	applyDev(&cfg)
	cfg.Listen = "127.0.0.1:0"
	cfg.DevAssets = devAssets(t, false)
	_, err := Start(context.Background(), cfg, WithLogger(discardLogger()))
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "dev_assets") || !strings.Contains(err.Error(), "make node-deps") {
		t.Fatalf("Start: %v, want a dev_assets error naming make node-deps", err)
	}
}

// Dev mode serves the page and its assets with a same-origin-only CSP,
// and /dev/token tokens that the gateway accepts to play the demo game;
// a bad name is refused with a reason and counted.
func TestDevServesPageAndTokens(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		applyDev(c)
		c.Listen, c.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
		c.DevAssets = devAssets(t, true)
		c.DevTokenTTL = time.Minute
	})
	base := "http://" + s.Addr().String()
	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	for path, want := range map[string]string{"/": "<title>dice</title>", "/demo/app.mjs": "export {};", "/demo/phoenix.mjs": "class Socket", "/demo/style.css": "body{}"} {
		resp, body := get(path)
		if resp.StatusCode != 200 || !strings.Contains(body, want) || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Fatalf("GET %s: %d %q %v", path, resp.StatusCode, body, resp.Header)
		}
		if strings.HasSuffix(path, ".mjs") && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") {
			t.Fatalf("GET %s: content type %q", path, resp.Header.Get("Content-Type"))
		}
	}
	for _, path := range []string{"/demo/../go.mod", "/demo/", "/node_modules/phoenix/package.json", "/index.html"} {
		if resp, _ := get(path); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s: %d, want 404", path, resp.StatusCode)
		}
	}

	for _, name := range []string{"", "a b", "<script>", strings.Repeat("x", 33), "é"} {
		resp, body := get("/dev/token?player=" + url.QueryEscape(name))
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "player must be") {
			t.Fatalf("token for %q: %d %s", name, resp.StatusCode, body)
		}
	}
	if n := sumCounter(t, s.Registry(), "phxgate_dev_tokens_total", "result", "refused"); n != 5 {
		t.Fatalf("refused tokens counted %v, want 5", n)
	}
	resp, body := get("/dev/token?player=alice")
	var tok struct {
		Token       string `json:"token"`
		Player      string `json:"player"`
		ExpiresAtMs int64  `json:"expires_at_ms"`
	}
	if err := json.Unmarshal([]byte(body), &tok); err != nil || resp.StatusCode != 200 || tok.Player != "alice" {
		t.Fatalf("token: %d %s %v", resp.StatusCode, body, err)
	}
	if left := time.Until(time.UnixMilli(tok.ExpiresAtMs)); left <= 0 || left > time.Minute {
		t.Fatalf("token expires in %v, want within dev_token_ttl (1m)", left)
	}
	parsed, err := jwt.Parse(tok.Token, func(*jwt.Token) (any, error) { return []byte(s.cfg.Auth.HS256Secret), nil }, jwt.WithValidMethods([]string{"HS256"}))
	if err != nil || parsed.Claims.(jwt.MapClaims)["sub"] != "alice" {
		t.Fatalf("token %v: %v", parsed, err)
	}
	if n := sumCounter(t, s.Registry(), "phxgate_dev_tokens_total", "result", "issued"); n != 1 {
		t.Fatalf("issued tokens counted %v, want 1", n)
	}

	// Tokens are required in dev mode, and the dev token plays.
	if c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0"); c.status() != http.StatusUnauthorized {
		t.Fatalf("connect without a token: %d, want 401", c.status())
	}
	c := attempt(t, nil, s.Addr(), tokenTarget(tok.Token))
	if c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("connect with the dev token: %d", c.status())
	}
	c.sendText(`["1","1","table:7","phx_join",{"offset":null}]`)
	reply := c.readV2()
	if !strings.Contains(string(reply[4]), `"balance":1000`) || !strings.Contains(string(reply[4]), `"position"`) {
		t.Fatalf("join reply %s", reply[4])
	}
	if st := string(c.readEvent("presence_state")); !strings.Contains(st, `"alice"`) {
		t.Fatalf("presence_state %s", st)
	}
}

// Several tabs of one player, reconnecting at once, are never refused in
// dev mode (the default per-player cap is 10).
func TestDevManyTabsOfOnePlayer(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		applyDev(c)
		c.Listen, c.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
		c.DevAssets = devAssets(t, true)
	})
	tok := signToken(t, jwt.SigningMethodHS256, []byte(s.cfg.Auth.HS256Secret), claims("bob"), "")
	for round := range 2 {
		var conns []*client
		for i := range 40 {
			c := attempt(t, nil, s.Addr(), tokenTarget(tok))
			if c.status() != http.StatusSwitchingProtocols {
				t.Fatalf("round %d, tab %d refused: %d", round, i, c.status())
			}
			c.sendText(`["1","1","table:1","phx_join",{}]`)
			if r := c.readV2(); !strings.Contains(string(r[4]), `"status":"ok"`) {
				t.Fatalf("round %d, tab %d join %s", round, i, r[4])
			}
			conns = append(conns, c)
		}
		for _, c := range conns {
			_ = c.conn.Close()
		}
		waitFor(t, 10*time.Second, func() bool { return s.Connections() == 0 }, "the tabs' sockets close")
	}
}

// Dev mode never serves tokens a production gateway would accept, nor to
// anyone but the developer's own machine: `dev` comes only from the flag
// or PHXGATE_DEV, its secret is always the one generated at start, and it
// listens on loopback only. Each refusal names the key to fix.
func TestDevRefusesProductionSettings(t *testing.T) {
	dir := t.TempDir()
	file := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secret := strings.Repeat("s", 32)
	devYAML := file("dev.yaml", "listen: 127.0.0.1:4000\ndev: true\n")
	prodYAML := file("prod.yaml", "listen: 127.0.0.1:4000\nauth:\n  hs256_secret: "+secret+"\n")
	openYAML := file("open.yaml", "listen: 0.0.0.0:4000\n")
	envOf := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	devEnv := envOf("PHXGATE_DEV", "true")

	bad := []struct {
		name string
		args []string
		env  func(string) string
		key  string
	}{
		{"dev in a file", []string{"--config", devYAML}, noEnv, "dev"},
		{"dev in a file with the flag", []string{"--dev", "--config", devYAML}, noEnv, "dev"},
		{"secret flag", []string{"--dev", "--auth.hs256_secret", secret}, noEnv, "auth.hs256_secret"},
		{"secret env", []string{"--dev"}, envOf("PHXGATE_AUTH_HS256_SECRET", secret), "auth.hs256_secret"},
		{"PHXGATE_DEV next to a production file", []string{"--config", prodYAML}, devEnv, "auth.hs256_secret"},
		{"hs384 secret", []string{"--dev", "--auth.hs384_secret", strings.Repeat("s", 48)}, noEnv, "auth.hs384_secret"},
		{"hs512 secret", []string{"--dev", "--auth.hs512_secret", strings.Repeat("s", 64)}, noEnv, "auth.hs512_secret"},
		{"public keys", []string{"--dev", "--auth.public_key_files", "/etc/keys/a.pem"}, noEnv, "auth.public_key_files"},
		{"jwks", []string{"--dev", "--auth.jwks_url", "https://id.example/jwks.json"}, noEnv, "auth.jwks_url"},
		{"all interfaces", []string{"--dev", "--listen", "0.0.0.0:4000"}, noEnv, "listen"},
		{"no host", []string{"--dev", "--listen", ":4000"}, noEnv, "listen"},
		{"all interfaces v6", []string{"--dev", "--listen", "[::]:4000"}, noEnv, "listen"},
		{"a LAN address", []string{"--dev", "--listen", "192.168.1.7:4000"}, noEnv, "listen"},
		{"a host name", []string{"--dev", "--listen", "devbox.example:4000"}, noEnv, "listen"},
		{"PHXGATE_DEV next to a file listening everywhere", []string{"--config", openYAML}, devEnv, "listen"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(tc.args, tc.env, io.Discard)
			if !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), "config: "+tc.key+": ") {
				t.Fatalf("err %v, want a config error about %s", err, tc.key)
			}
		})
	}
	if _, err := ParseYAML([]byte("dev: true\n")); !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), "config: dev: ") {
		t.Fatalf("ParseYAML(dev: true): %v, want a config error about dev", err)
	}
	// The other dev keys are harmless without dev and stay in files.
	if _, err := ParseYAML([]byte("dev_token_ttl: 1m\ndemo_round: 1s\n")); err != nil {
		t.Fatal(err)
	}

	for _, listen := range []string{"127.0.0.1:0", "127.0.0.2:4000", "[::1]:4000", "localhost:4000", "LocalHost:4000"} {
		if cfg, err := LoadConfig([]string{"--dev", "--listen", listen}, noEnv, io.Discard); err != nil || cfg.Listen != listen {
			t.Fatalf("--dev --listen %s: %v", listen, err)
		}
	}
	// Without dev mode nothing changes: the same settings are fine.
	if _, err := LoadConfig([]string{"--config", prodYAML}, noEnv, io.Discard); err != nil {
		t.Fatal(err)
	}

	// A Config handed to Start directly is held to the same rules.
	for _, tc := range []struct {
		key string
		mod func(*Config)
	}{
		{"listen", func(c *Config) { c.Listen = "0.0.0.0:0" }},
		{"auth.jwks_url", func(c *Config) { c.Auth.JWKSURL = "https://id.example/jwks.json" }},
		{"auth.public_key_files", func(c *Config) { c.Auth.PublicKeyFiles = []string{"/etc/keys/a.pem"} }},
	} {
		cfg := testConfig()
		applyDev(&cfg)
		cfg.Listen = "127.0.0.1:0"
		cfg.DevAssets = devAssets(t, true)
		tc.mod(&cfg)
		if s, err := Start(context.Background(), cfg, WithLogger(discardLogger())); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.key+": ") {
			if s != nil {
				_ = s.Shutdown(context.Background())
			}
			t.Fatalf("Start with %s set in dev mode: %v, want a config error about %s", tc.key, err, tc.key)
		}
	}
}

// A web page on another site cannot get a dev token by pointing its own
// host name at 127.0.0.1 (DNS rebinding): the dev routes answer only
// requests addressed to a loopback name, and count the others.
func TestDevRoutesRefuseForeignHost(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		applyDev(c)
		c.Listen, c.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
		c.DevAssets = devAssets(t, true)
	})
	_, port, _ := strings.Cut(s.Addr().String(), ":")
	do := func(host, path string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+s.Addr().String()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	foreign := []string{"evil.example:" + port, "evil.example", "127.0.0.1.evil.example:" + port, "localhost.evil.example", "192.168.1.7:" + port, "0.0.0.0:" + port,
		"game.localhost.evil.example", "evil-localhost:" + port, ".localhost"}
	for _, host := range foreign {
		for _, path := range []string{"/dev/token?player=alice", "/", "/demo/app.mjs"} {
			code, body := do(host, path)
			if code != http.StatusMisdirectedRequest || strings.Contains(body, "token\"") || !strings.Contains(body, "loopback") {
				t.Fatalf("GET %s with Host %q: %d %q, want 421 naming loopback", path, host, code, body)
			}
		}
	}
	if n := sumCounter(t, s.Registry(), "phxgate_dev_tokens_total", "result", "foreign_host"); n != float64(len(foreign)) {
		t.Fatalf("foreign-host token requests counted %v, want %d", n, len(foreign))
	}
	if n := sumCounter(t, s.Registry(), "phxgate_dev_tokens_total", "result", "issued"); n != 0 {
		t.Fatalf("tokens issued to foreign hosts: %v", n)
	}
	// Browsers resolve every *.localhost name to loopback themselves.
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port, "LOCALHOST", "[::1]:" + port, "127.0.0.1", "game.localhost:" + port, "a.b.LocalHost"} {
		if code, body := do(host, "/dev/token?player=alice"); code != http.StatusOK || !strings.Contains(body, `"token"`) {
			t.Fatalf("token with Host %q: %d %s", host, code, body)
		}
	}
	// The socket routes are not dev routes: a token is what guards them.
	if code, _ := do("evil.example", "/socket/longpoll?vsn=2.0.0"); code == http.StatusMisdirectedRequest {
		t.Fatalf("long-poll refused for its Host: %d", code)
	}
}
