package gateway

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/phxgate/phxgate/channels/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
)

// Dev mode (--dev) is one developer on localhost playing the demo game in
// a few browser tabs. Its settings are defaults laid under the config
// file, the environment and the flags, which still apply, except where a
// setting would let /dev/token's tokens reach past that developer's
// machine or be accepted by anything but this process: dev mode is turned
// on only by the flag or PHXGATE_DEV (a file is refused: a production
// file must never carry it); it always signs with the secret it generates
// at start, so a configured verification key is refused; it listens on a
// loopback address only; and its routes answer only requests addressed to
// a loopback name (a site whose name an attacker points at 127.0.0.1 is
// refused: DNS rebinding).
const (
	// DefaultDevListen keeps dev mode on loopback: /dev/token hands out
	// tokens to anyone who asks.
	DefaultDevListen = "127.0.0.1:4000"
	// DefaultDevAssets is the demo page's directory, relative to the
	// repository root (where `make run` runs).
	DefaultDevAssets = "clients/js"
	// DefaultDevTokenTTL is the lifetime of a /dev/token token: short, so
	// that the page's token refresh runs while someone watches.
	DefaultDevTokenTTL = 10 * time.Minute
	// maxDevTokenTTL bounds dev_token_ttl.
	maxDevTokenTTL = 24 * time.Hour
	// maxDevPlayerLen bounds a dev player name (the token's sub).
	maxDevPlayerLen = 32
)

// Dev mode's limits: every limit is still enforced, sized for a handful
// of tabs and scripts of one developer on one address, reconnecting at
// once and polling (long-poll) without ever being refused.
const (
	devIPMaxConns            = 1000
	devIPMaxHandshakes       = 256
	devPlayerMaxConns        = 100
	devIPHandshakesPerSecond = 200
	devIPHandshakeBurst      = 1000
	devJoinsPerSecond        = 200
	devJoinBurst             = 1000
	devEventsPerSecond       = 200
	devEventBurst            = 1000
	devMaxMetasPerKey        = 64
)

// The demo page's files under dev_assets, by URL path. Nothing else on
// disk is served.
var devFiles = map[string]struct{ file, contentType string }{
	"/":                 {"demo/index.html", "text/html; charset=utf-8"},
	"/demo/app.mjs":     {"demo/app.mjs", "text/javascript; charset=utf-8"},
	"/demo/style.css":   {"demo/style.css", "text/css; charset=utf-8"},
	"/demo/phoenix.mjs": {"node_modules/phoenix/priv/static/phoenix.mjs", "text/javascript; charset=utf-8"},
}

// devCSP lets the page load nothing from anywhere but phxgate itself.
const devCSP = "default-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// applyDevIfAsked lays dev mode's defaults over c when the dev flag or
// PHXGATE_DEV asks for it (the flag wins).
func applyDevIfAsked(c *Config, flagVal, envVal string) error {
	v, key := flagVal, "dev"
	if v == "" {
		v, key = envVal, EnvName("dev")
	}
	if v == "" {
		return nil
	}
	on, err := strconv.ParseBool(v)
	if err != nil {
		return keyErr("dev", "%s: %v", key, err)
	}
	if on {
		applyDev(c)
	}
	return nil
}

// applyDev sets dev mode's defaults: the in-memory broker, the demo game
// on table:* and echo on room:* (presence and history on both), tokens
// required and signed with a secret generated now, and the dev limits.
func applyDev(c *Config) {
	var secret [32]byte
	_, _ = rand.Read(secret[:]) // never fails (crypto/rand crashes instead)
	c.Dev = true
	c.Listen = DefaultDevListen
	c.DevAssets = DefaultDevAssets
	c.DevTokenTTL = DefaultDevTokenTTL
	c.RedisURL, c.RedisClusterAddrs = "", nil
	c.Auth.Required = true
	c.devSecret = hex.EncodeToString(secret[:])
	c.Auth.HS256Secret = c.devSecret
	c.Routes = []RouteConfig{
		{Topic: "table:*", Backend: specDemo, Presence: true, History: 100},
		{Topic: "room:*", Backend: "echo", Presence: true, History: 100},
	}
	l := &c.Limits
	l.IPMaxConns, l.IPMaxHandshakes, l.PlayerMaxConns = devIPMaxConns, devIPMaxHandshakes, devPlayerMaxConns
	l.IPHandshakesPerSecond, l.IPHandshakeBurst = devIPHandshakesPerSecond, devIPHandshakeBurst
	l.JoinsPerSecond, l.JoinBurst = devJoinsPerSecond, devJoinBurst
	// A new map: NewConfig's default one must not change.
	l.Classes = maps.Clone(l.Classes)
	l.Classes[ratelimit.DefaultClass] = ratelimit.ClassLimit{PerSecond: devEventsPerSecond, Burst: devEventBurst}
	c.Presence.MaxMetasPerKey = devMaxMetasPerKey
}

// validateDev checks the dev keys.
func (c Config) validateDev() error {
	if c.DevTokenTTL < 0 || c.DevTokenTTL > maxDevTokenTTL {
		return keyErr("dev_token_ttl", "must be between 0s and %v", maxDevTokenTTL)
	}
	if c.DemoRound != 0 && (c.DemoRound < 10*time.Millisecond || c.DemoRound > time.Hour) {
		return keyErr("demo_round", "must be 0s (the game's default) or between 10ms and 1h")
	}
	if !c.Dev {
		return nil
	}
	// Set by the file, the environment, a flag or code, another secret
	// would sign dev tokens that something else trusts.
	if c.devSecret == "" || c.Auth.HS256Secret != c.devSecret {
		return keyErr("auth.hs256_secret", "must not be set in dev mode: it signs its tokens with a secret generated at start (remove it from the file, PHXGATE_AUTH_HS256_SECRET or the flags; dev mode is turned on by --dev or PHXGATE_DEV, which draw it)")
	}
	// Dev mode verifies only its own tokens: a configured key would let
	// production tokens in, or a dev token be taken for a production one.
	for _, k := range []struct {
		key string
		set bool
	}{
		{"auth.hs384_secret", c.Auth.HS384Secret != ""},
		{"auth.hs512_secret", c.Auth.HS512Secret != ""},
		{"auth.public_key_files", len(c.Auth.PublicKeyFiles) > 0},
		{"auth.jwks_url", c.Auth.JWKSURL != ""},
	} {
		if k.set {
			return keyErr(k.key, "must be empty in dev mode (it signs and checks only the tokens it issues)")
		}
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return keyErr("listen", "%v", err)
	}
	if !isLoopbackHost(host) {
		return keyErr("listen", "dev mode hands a token to anyone who asks, so it listens on loopback only (127.0.0.1, [::1] or localhost), got %q", c.Listen)
	}
	return nil
}

// isLoopbackHost reports whether host (a name or an address, without a
// port; brackets allowed) is "localhost" or a loopback address. Other
// names are refused even when they resolve to loopback: resolution can
// change under our feet.
func isLoopbackHost(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// loopbackRequest reports whether r is addressed (Host) to a loopback
// name: what a page of the developer's own browser sends, and what a page
// of another site, whose name was pointed at 127.0.0.1, cannot.
func loopbackRequest(r *http.Request) bool {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return isLoopbackHost(host) || isLocalhostSubdomain(host)
}

// isLocalhostSubdomain reports whether host is a name under .localhost,
// which browsers resolve to loopback themselves, never asking DNS (so a
// rebinding attacker cannot make a page of theirs send it).
func isLocalhostSubdomain(host string) bool {
	const suffix = ".localhost"
	host = strings.TrimSuffix(host, ".")
	return len(host) > len(suffix) && strings.EqualFold(host[len(host)-len(suffix):], suffix)
}

// devTokenTTL is c.DevTokenTTL or its default.
func (c Config) devTokenTTL() time.Duration {
	if c.DevTokenTTL == 0 {
		return DefaultDevTokenTTL
	}
	return c.DevTokenTTL
}

// devHTTP returns next with dev mode's routes in front: the demo page and
// its assets, and /dev/token. It fails when the page or phoenix.js is
// missing from dev_assets, naming the fix.
func (s *Server) devHTTP(next http.Handler) (http.Handler, error) {
	dir := s.cfg.DevAssets
	if dir == "" {
		dir = DefaultDevAssets
	}
	for _, f := range devFiles {
		p := filepath.Join(dir, filepath.FromSlash(f.file))
		if _, err := os.Stat(p); err != nil {
			fix := "check dev_assets (the clients/js directory of the repository)"
			if filepath.Base(p) == "phoenix.mjs" {
				fix = "run make node-deps (it installs phoenix.js into " + filepath.Join(dir, "node_modules") + ")"
			}
			return nil, keyErr("dev_assets", "%s is missing: %s", p, fix)
		}
	}
	tokens := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phxgate_dev_tokens_total",
		Help: "Tokens asked of /dev/token (dev mode), by result: issued, refused (a bad player name) or foreign_host (a Host header that is not a loopback name: 421).",
	}, []string{"result"})
	if err := s.reg.Register(tokens); err != nil {
		return nil, err
	}
	issued, refused, foreign := tokens.WithLabelValues("issued"), tokens.WithLabelValues("refused"), tokens.WithLabelValues("foreign_host")
	secret := []byte(s.cfg.Auth.HS256Secret)
	ttl := s.cfg.devTokenTTL()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, asset := devFiles[r.URL.Path]
		isToken := r.URL.Path == "/dev/token"
		if !asset && !isToken {
			next.ServeHTTP(w, r)
			return
		}
		if !loopbackRequest(r) {
			if isToken {
				foreign.Inc()
			}
			w.Header().Set("Cache-Control", "no-store")
			http.Error(w, "dev mode answers only requests to a loopback name (localhost, *.localhost, 127.0.0.1, [::1])", http.StatusMisdirectedRequest)
			return
		}
		if isToken {
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("Content-Type", "application/json")
			player := r.URL.Query().Get("player")
			if err := checkDevPlayer(player); err != nil {
				refused.Inc()
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
				return
			}
			exp := time.Now().Add(ttl)
			claims := jwt.MapClaims{"sub": player, "exp": exp.Unix(), "iat": time.Now().Unix()}
			if s.cfg.Auth.Audience != "" {
				claims["aud"] = s.cfg.Auth.Audience
			}
			if s.cfg.Auth.Issuer != "" {
				claims["iss"] = s.cfg.Auth.Issuer
			}
			tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
			if err != nil {
				http.Error(w, `{"error":"signing failed"}`, http.StatusInternalServerError)
				return
			}
			issued.Inc()
			_ = json.NewEncoder(w).Encode(struct {
				Token       string `json:"token"`
				Player      string `json:"player"`
				ExpiresAtMs int64  `json:"expires_at_ms"`
			}{tok, player, exp.UnixMilli()})
			return
		}
		f := devFiles[r.URL.Path]
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// Read on every request: an edit to the page shows on reload.
		body, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.file)))
		if err != nil {
			s.log.Error("dev: demo asset unreadable", "file", f.file, "err", err)
			http.Error(w, "demo asset unreadable (see the gateway's log)", http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", devCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(body)
	}), nil
}

var errDevPlayer = errors.New("player must be 1 to 32 letters, digits, '_', '-' or '.'")

// checkDevPlayer accepts short ASCII names, so a name never needs escaping
// in a URL, a log line or the page.
func checkDevPlayer(p string) error {
	if len(p) == 0 || len(p) > maxDevPlayerLen {
		return fmt.Errorf("%w (got %d bytes)", errDevPlayer, len(p))
	}
	for _, c := range []byte(p) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '.':
		default:
			return errDevPlayer
		}
	}
	return nil
}
