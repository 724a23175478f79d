package channels

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/phxgate/phxgate/channels/auth"
	"github.com/phxgate/phxgate/channels/ratelimit"
)

// TokenVerifier checks a join-payload token; *auth.Verifier implements it.
// Verify may block (a JWKS refresh), so it is only called on a worker,
// never on the poller.
type TokenVerifier interface {
	Verify(ctx context.Context, token string) (*auth.Identity, error)
}

var _ TokenVerifier = (*auth.Verifier)(nil)

var respUnauthorized = []byte(`{"reason":"` + ReplyUnauthorized + `"}`)

// rateKeyOf picks the key of a socket's rate limits: what the gateway
// chose (player id, or the client's IP prefix when anonymous), else the
// player id, else this connection alone.
func rateKeyOf(c Conn, info ConnectInfo) string {
	switch {
	case info.RateKey != "":
		return info.RateKey
	case info.PlayerID != "":
		return info.PlayerID
	}
	return "conn:" + strconv.FormatUint(c.ID(), 10)
}

// rateLimited is the reply response of a refused join or push:
// {"reason":"rate_limited","retry_after_ms":N}. It is built per refusal
// because N differs; it is small.
func rateLimited(d ratelimit.Decision) []byte {
	b := make([]byte, 0, 56)
	b = append(b, `{"reason":"`+ReplyRateLimited+`","retry_after_ms":`...)
	b = strconv.AppendInt(b, d.RetryAfterMillis(), 10)
	return append(b, '}')
}

// rateAbuse closes a socket whose player kept pushing past a limit (or
// which kept heartbeating past its own) for the abuse window (1008, as
// DESIGN.md §9).
func rateAbuse(kind ratelimit.Kind) error {
	return &CloseError{
		Code:   ClosePolicyViolation,
		Reason: ReasonRateAbuse,
		Err:    fmt.Errorf("channels: %s rate exceeded for the abuse window", kind),
	}
}

// allowHeartbeat reports whether a heartbeat is answered. The limit is
// this connection's own (s.hb), not the rate key's: clients take an
// unanswered heartbeat for a dead connection, so a shared bucket would let
// one fast socket make its neighbours behind the same key (a NAT's anonymous
// sockets, a player's tabs) reconnect. Over the limit it gets no reply (the
// refusal is counted by the limiter): a client that heartbeats that fast is
// not waiting for replies anyway. A *CloseError means abuse.
func (s *Socket) allowHeartbeat() (bool, error) {
	l := s.srv.cfg.Limiter
	if l == nil {
		return true, nil
	}
	d := l.AllowHeartbeat(&s.hb)
	switch {
	case d.OK:
		return true, nil
	case d.Abusive:
		return false, rateAbuse(ratelimit.KindHeartbeat)
	}
	return false, nil
}

// allowJoin charges one join to the socket's key (a join token is not
// verified yet here, and verifying it costs more than the join limit
// protects). It returns the refusal response, or a *CloseError on abuse;
// both nil admit the join. Called with mu held.
func (s *Socket) allowJoin() ([]byte, error) {
	l := s.srv.cfg.Limiter
	if l == nil {
		return nil, nil
	}
	d := l.AllowJoin(s.rateKey)
	switch {
	case d.OK:
		return nil, nil
	case d.Abusive:
		return nil, rateAbuse(ratelimit.KindJoin)
	}
	return rateLimited(d), nil
}

// allowEvent charges one event of the route's class for event to the
// channel's key (its join token's player, else the socket's). Returns as
// allowJoin. Called with mu held.
func (s *Socket) allowEvent(c *channel, event []byte) ([]byte, error) {
	l := s.srv.cfg.Limiter
	if l == nil {
		return nil, nil
	}
	class := c.route.RateLimits.DefaultClass
	if len(c.route.RateLimits.Events) > 0 {
		class = c.route.RateLimits.ClassOf(string(event))
	}
	key := s.rateKey
	if id := c.joinIdentity(); id != nil {
		key = id.PlayerID
	}
	d := l.AllowEvent(key, class)
	switch {
	case d.OK:
		return nil, nil
	case d.Abusive:
		return nil, rateAbuse(ratelimit.KindEvent)
	}
	return rateLimited(d), nil
}

// joinToken returns the join payload's "token" member. A null token counts
// as none (clients often pass {token: maybeNull}); any other non-string is
// present but invalid ("" with ok true).
func joinToken(p []byte) (token string, ok bool) {
	if len(p) == 0 || p[0] != '{' {
		return "", false
	}
	objectMembers(p, func(key, val []byte, _, _ int) bool {
		if string(key) != "token" {
			return true
		}
		if string(val) == "null" {
			return false
		}
		ok = true
		if err := json.Unmarshal(val, &token); err != nil {
			token = ""
		}
		return false
	})
	return token, ok
}

// forbidsUnrouted reports whether the connect token's topics claim forbids
// m's topic, for a join to an unrouted topic (answered on the poller,
// since it has no slot). A join carrying its own token is not judged here:
// verifying it may block, and a topic without a route has no worker turn,
// so it gets "unmatched topic".
func (s *Socket) forbidsUnrouted(m *message) bool {
	if s.identity == nil || m.binary {
		return false
	}
	if _, has := joinToken(m.payload); has && s.srv.cfg.Verifier != nil {
		return false
	}
	return !s.identity.MayJoin(string(m.topic))
}

// authorize runs on the worker before the backend's Join: it verifies a
// join-payload token and checks the topics claim of the identity that
// applies to this join (the join token's, else the connect token's). A
// join token's identity applies to this channel only: its player and
// claims go to this channel's backend calls and its player keys this
// channel's event limits. It is checked at join time only; its expiry does
// not end the channel (the socket's own token expiry closes the socket).
func (c *channel) authorize(t *task) bool {
	s := c.sock
	id := s.identity
	var joinID *auth.Identity
	if v := s.srv.cfg.Verifier; t.hasToken && v != nil {
		if t.token == "" {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.CallTimeout)
		jid, err := v.Verify(ctx, t.token)
		cancel()
		if err != nil {
			return false
		}
		id, joinID = jid, jid
	}
	if id != nil && !id.MayJoin(c.topic) {
		return false
	}
	// A join without a token on a channel that never had one has nothing
	// to record, so most channels never allocate the side struct.
	if joinID != nil || c.rare.Load() != nil {
		r := c.side()
		s.mu.Lock()
		r.joinID = joinID
		s.mu.Unlock()
	}
	return true
}
