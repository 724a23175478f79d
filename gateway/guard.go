package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/phxgate/phxgate/channels/auth"
	"github.com/phxgate/phxgate/channels/ratelimit"
	"github.com/phxgate/phxgate/gateway/internal/admission"
	"github.com/phxgate/phxgate/gateway/internal/configload"
	"github.com/prometheus/client_golang/prometheus"
)

// tokenParam is the connect param carrying a token (phoenix.js
// `params: {token}`). It is removed before the backend sees the params.
const tokenParam = "token"

// anonKeyPrefix marks rate-limit keys of anonymous sockets: the client's
// IP prefix, so that reconnecting (or opening more sockets) from the same
// address resets nothing. Player ids never collide with it in practice, and
// a player who picks such a sub only shares buckets with that address.
const anonKeyPrefix = "ip:"

// guard holds the protections built from Config: the admission controller
// (origin, per-IP handshake rate and connection caps, per-player and
// global caps), the token verifier and the per-player rate limiter. All
// three are safe for concurrent use; the guard's own state is the interned
// anonymous rate keys, behind their own lock.
type guard struct {
	cfg      Config
	log      *slog.Logger
	ctl      *admission.Controller
	verifier *auth.Verifier
	limiter  *ratelimit.Limiter
	// refused counts every connect refused by admit, by reason: the
	// admission reasons (origin, ip_conn_limit …) and token_* ones. The
	// building blocks' own metrics give more detail.
	refused  *prometheus.CounterVec
	anonKeys anonKeys
}

// anonKeys interns the rate keys of anonymous sockets ("ip:" + the client's
// IP prefix), so that the sockets of one address share one string instead
// of each holding its own copy for its lifetime. Entries live two sweep
// intervals after their last handshake (about the admission's idle TTL for
// the per-IP state they mirror); each generation holds at most maxAnonKeys,
// past which a key is built fresh, as before interning. Safe for
// concurrent use.
type anonKeys struct {
	mu        sync.Mutex
	cur, prev map[netip.Prefix]string
}

// maxAnonKeys bounds one generation of anonKeys. Interning only pays off
// for addresses that open many sockets, so the bound can be well below the
// number of addresses the admission controller tracks.
const maxAnonKeys = 16_384

// get returns the rate key of prefix.
func (k *anonKeys) get(prefix netip.Prefix) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.cur[prefix]; ok {
		return key
	}
	key, ok := k.prev[prefix]
	if !ok {
		key = anonKeyPrefix + prefix.String()
	}
	if len(k.cur) < maxAnonKeys {
		if k.cur == nil {
			k.cur = make(map[netip.Prefix]string)
		}
		k.cur[prefix] = key
	}
	return key
}

// rotate starts a generation: keys not used since the previous rotate are
// forgotten (their sockets keep their strings).
func (k *anonKeys) rotate() {
	k.mu.Lock()
	k.prev, k.cur = k.cur, nil
	k.mu.Unlock()
}

// newGuard builds the three building blocks and registers their metrics on
// reg. Errors name the configuration key (a PEM file that does not parse
// names auth.public_key_files[i]).
func newGuard(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*guard, error) {
	ctl, err := admission.New(cfg.admissionConfig(), reg)
	if err != nil {
		return nil, configload.Section("", err, admission.ErrConfig)
	}
	v, err := auth.NewVerifier(cfg.Auth, reg)
	if err != nil {
		return nil, configload.Section("auth.", err, auth.ErrConfig)
	}
	l, err := ratelimit.New(cfg.Limits.Config, reg)
	if err != nil {
		return nil, configload.Section("limits.", err, ratelimit.ErrConfig)
	}
	// One family for every refused connect: the admission controller
	// counts its own refusals, the guard its token refusals.
	refused := ctl.Refused()
	for _, r := range []string{"token_param", "token_ambiguous", "token_missing", "token_too_large", "token_malformed",
		"token_unknown_kid", "token_jwks_unavailable", "token_expired", "token_not_yet_valid", "token_audience",
		"token_issuer", "token_no_subject", "token_subject_too_long", "token_invalid", "token_internal"} {
		refused.WithLabelValues(r)
	}
	return &guard{cfg: cfg, log: log, ctl: ctl, verifier: v, limiter: l, refused: refused}, nil
}

// authOn reports whether tokens are verified: auth.required, or any key
// configured (then a token is optional, but one that is present must be
// valid). With neither, auth is off.
func (g *guard) authOn() bool {
	a := g.cfg.Auth
	return a.Required || a.HS256Secret != "" || a.HS384Secret != "" || a.HS512Secret != "" ||
		len(a.PublicKeyFiles) > 0 || a.JWKSURL != ""
}

// sweepInterval is how often idle limiter and admission state is dropped:
// half the shorter idle TTL, so an entry lives at most 1.5 TTL.
func (g *guard) sweepInterval() time.Duration {
	ttl := min(g.cfg.Limits.IdleTTL, g.ctl.IdleTTL())
	return max(ttl/2, limitsSweepMin)
}

// sweep drops idle state; the Server calls it on its ticker.
func (g *guard) sweep() {
	g.anonKeys.rotate()
	limiter, ips := g.limiter.Sweep(), g.ctl.Sweep()
	if limiter+ips > 0 {
		g.log.Debug("swept idle limiter state", "players", limiter, "ips", ips)
	}
}

// beginHandshake counts a just-accepted connection against its TCP peer's
// cap on handshakes in progress (limits.ip_max_handshakes). The peer is the
// socket's, not X-Forwarded-For (nothing has been read yet); trusted proxies
// are exempt. On success the caller must call release once the handshake
// has ended; a refusal is counted under its reason.
func (g *guard) beginHandshake(nc net.Conn) (release func(), err error) {
	var peer netip.Addr
	if ta, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		peer = ta.AddrPort().Addr()
	}
	release, err = g.ctl.BeginHandshake(peer)
	if err != nil {
		g.log.Debug("connect refused at accept", "remote", nc.RemoteAddr().String(), "err", err)
	}
	return release, err
}

// The admission ticket is the Releaser admit returns: stored in the conn
// as is, it costs no allocation beyond the ticket itself.
var _ Releaser = (*admission.Ticket)(nil)

// errAmbiguousToken refuses a request carrying two different tokens (the
// token param and the authToken subprotocol): which one names the player
// would be a guess.
var errAmbiguousToken = errors.New("gateway: two different tokens (param and authToken)")

// errTokenParam refuses a token param that is not a plain string
// (token[a]=b).
var errTokenParam = errors.New("gateway: token param is not a string")

// admit is the production Options.Admit, in the order of DESIGN.md §2:
// origin, per-IP handshake rate and connection caps, token, per-player cap.
// It runs on a handshake worker; Verify may wait for a JWKS refresh, bounded
// by the handshake timeout.
func (g *guard) admit(r *Request) (int, Releaser) {
	log := g.log.With("conn", r.ConnID, "remote", r.RemoteAddr)
	ip := g.ctl.ClientIP(r.RemoteAddr, r.XForwardedFor)
	if err := g.ctl.CheckOrigin(r.Origin); err != nil {
		log.Debug("connect refused: origin not allowed")
		return g.refusal(r, err), nil
	}
	t, err := g.ctl.Admit(ip)
	if err != nil {
		log.Debug("connect refused", "client", ip.String(), "err", err)
		return g.refusal(r, err), nil
	}
	admitted := false
	defer func() {
		if !admitted {
			t.Release()
		}
	}()

	token, err := takeToken(&r.Info.Params, r.Info.AuthToken)
	if !g.authOn() {
		// No key to verify with: tokens are stripped and ignored and every
		// socket is anonymous (a token cannot be "invalid" against no key).
		token, err = "", nil
	}
	if err != nil {
		reason := "token_param"
		if errors.Is(err, errAmbiguousToken) {
			reason = "token_ambiguous"
		}
		log.Debug("connect refused: bad token", "reason", reason)
		g.refused.WithLabelValues(reason).Inc()
		return http.StatusForbidden, nil
	}
	if token == "" {
		if g.cfg.Auth.Required {
			// Counted as a "missing" verification like any other refusal.
			_, _ = g.verifier.Verify(context.Background(), "")
			log.Debug("connect refused: token required")
			g.refused.WithLabelValues("token_missing").Inc()
			return http.StatusUnauthorized, nil
		}
		r.Info.RateKey = g.anonKeys.get(g.ctl.Key(ip))
		admitted = true
		return 0, t
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.HandshakeTimeout)
	id, err := g.verifier.Verify(ctx, token)
	cancel()
	if err != nil {
		// The reason label only: errors never carry token text, and the
		// token itself is never logged.
		log.Debug("connect refused: token rejected", "reason", auth.Reason(err))
		g.refused.WithLabelValues("token_" + auth.Reason(err)).Inc()
		return http.StatusForbidden, nil
	}
	if err := t.BindPlayer(id.PlayerID); err != nil {
		log.Debug("connect refused", "player", id.PlayerID, "err", err)
		return g.refusal(r, err), nil
	}
	r.Info.PlayerID, r.Info.Claims, r.Info.Identity, r.Info.RateKey = id.PlayerID, id.Raw, id, id.PlayerID
	// The socket is closed once the token is expired beyond the leeway
	// that Verify itself grants, so a token accepted "just expired" is not
	// cut a moment later.
	r.Expires = id.Expires.Add(g.cfg.Auth.Leeway)
	admitted = true
	return 0, t
}

// refusal turns an admission error into the status to answer with, and
// sets the Retry-After of rate refusals.
func (g *guard) refusal(r *Request, err error) int {
	var ref *admission.Refusal
	if errors.As(err, &ref) { // counted by the controller
		r.RetryAfter = ref.RetryAfter
		return ref.Status
	}
	return http.StatusForbidden
}

// takeToken returns the connect token and removes the token param from
// *params (a JSON object), so the backend never sees it. The param and the
// authToken subprotocol may both carry the same token; two different ones
// are refused.
func takeToken(params *[]byte, authToken string) (string, error) {
	var fromParam string
	if p := *params; len(p) > 0 && json.Valid(p) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(p, &m); err == nil {
			if raw, ok := m[tokenParam]; ok {
				if err := json.Unmarshal(raw, &fromParam); err != nil {
					return "", errTokenParam
				}
				delete(m, tokenParam)
				out, err := json.Marshal(m)
				if err != nil {
					return "", err
				}
				*params = out
			}
		}
	}
	switch {
	case authToken != "" && fromParam != "" && authToken != fromParam:
		return "", errAmbiguousToken
	case authToken != "":
		return authToken, nil
	}
	return fromParam, nil
}
