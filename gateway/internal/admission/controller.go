package admission

import (
	"errors"
	"math"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Refusal reasons: the metric label, also handy for logs.
const (
	ReasonOrigin          = "origin"
	ReasonBadAddress      = "bad_address"
	ReasonHandshakeRate   = "ip_handshake_rate"
	ReasonIPHandshakes    = "ip_handshakes"
	ReasonIPConnLimit     = "ip_conn_limit"
	ReasonPlayerConnLimit = "player_conn_limit"
	ReasonGlobalConnLimit = "global_conn_limit"
)

// Sentinels, matched with errors.Is on a *Refusal.
var (
	ErrOrigin          = errors.New("admission: origin not allowed")
	ErrBadAddress      = errors.New("admission: client address unknown")
	ErrHandshakeRate   = errors.New("admission: too many handshakes from this address")
	ErrIPHandshakes    = errors.New("admission: too many handshakes in progress from this address")
	ErrIPConnLimit     = errors.New("admission: too many connections from this address")
	ErrPlayerConnLimit = errors.New("admission: too many connections for this player")
	ErrGlobalConnLimit = errors.New("admission: node at its connection limit")
)

// Refusal says why a handshake is refused and how to answer it.
type Refusal struct {
	// Status is the HTTP status to answer with (empty body).
	Status int
	// Reason is the metric label (Reason* constants).
	Reason string
	// RetryAfter, for a rate refusal, is when a handshake would pass; the
	// gateway may send it as a Retry-After header (rounded up to seconds).
	RetryAfter time.Duration
	err        error
}

func (r *Refusal) Error() string { return r.err.Error() }
func (r *Refusal) Unwrap() error { return r.err }

// ipState is the per-key state. It is in the idle LRU list exactly when it
// has no open connection; a key with connections is never evicted.
type ipState struct {
	key        netip.Prefix
	handshakes *rate.Limiter
	conns      int
	lastSeen   time.Time
	prev, next *ipState
}

// Controller runs the pre-upgrade checks. Safe for concurrent use.
type Controller struct {
	cfg     Config
	now     func() time.Time
	allowed []origin
	proxies []netip.Prefix
	v6bits  int
	// idleTTL is cfg.Limits.BucketTTL().
	idleTTL time.Duration

	mu      sync.Mutex
	ips     map[netip.Prefix]*ipState
	idle    ipState // LRU sentinel of connection-less keys, most recent first
	nIdle   int
	players map[string]int
	total   int
	// pending counts the handshakes in progress per peer key
	// (BeginHandshake). It is separate from ips because it is taken before
	// anything else is known and must never be evicted while counted; an
	// entry is deleted when its count returns to 0, so its size is bounded
	// by the handshakes in progress (the gateway's worker pool).
	pending map[netip.Prefix]int

	refused   *prometheus.CounterVec
	evictions *prometheus.CounterVec
}

// New validates cfg and builds a Controller; metrics are registered on reg
// (nil: not registered).
func New(cfg Config, reg prometheus.Registerer) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Controller{
		cfg:     cfg,
		now:     cfg.Now,
		v6bits:  cfg.IPv6PrefixBits,
		idleTTL: cfg.Limits.BucketTTL(),
		ips:     make(map[netip.Prefix]*ipState),
		players: make(map[string]int),
		pending: make(map[netip.Prefix]int),
	}
	c.idle.next, c.idle.prev = &c.idle, &c.idle
	for _, o := range cfg.CheckOrigin {
		a, _ := parseAllowedOrigin(o) // validated
		c.allowed = append(c.allowed, a)
	}
	for _, p := range cfg.TrustedProxies {
		pr, _ := parseCIDR(p) // validated
		c.proxies = append(c.proxies, pr)
	}
	c.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: RefusedMetric,
		Help: "Connects refused before the upgrade, by reason: admission (origin, per-address and per-player caps and rates, node caps) and token checks (token_*).",
	}, []string{"reason"})
	for _, r := range []string{ReasonOrigin, ReasonBadAddress, ReasonHandshakeRate, ReasonIPHandshakes,
		ReasonIPConnLimit, ReasonPlayerConnLimit, ReasonGlobalConnLimit} {
		c.refused.WithLabelValues(r) // a fresh node's dashboards show lines
	}
	c.evictions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phxgate_admission_ip_evictions_total",
		Help: "Per-IP handshake buckets forgotten, by reason (idle, capacity).",
	}, []string{"reason"})
	for _, r := range []string{"idle", "capacity"} {
		c.evictions.WithLabelValues(r)
	}
	conns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "phxgate_admission_connections",
		Help: "Connections admitted and not yet released.",
	}, func() float64 { return float64(c.Connections()) })
	tracked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "phxgate_admission_tracked_ips",
		Help: "IP keys (IPv4 addresses, IPv6 prefixes) with state.",
	}, func() float64 { return float64(c.TrackedIPs()) })
	if reg != nil {
		for _, m := range []prometheus.Collector{c.refused, c.evictions, conns, tracked} {
			if err := reg.Register(m); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// RefusedMetric is the one family that counts refused connects, whoever
// refused them (admission here, token checks in the gateway: see
// Controller.Refused).
const RefusedMetric = "phxgate_gateway_connect_refused_total"

// Refused returns the refusal counter, for the gateway's own reasons
// (token checks) to count in the same family.
func (c *Controller) Refused() *prometheus.CounterVec { return c.refused }

func (c *Controller) refuse(status int, reason string, sentinel error, retry time.Duration) *Refusal {
	c.refused.WithLabelValues(reason).Inc()
	return &Refusal{Status: status, Reason: reason, RetryAfter: retry, err: sentinel}
}

// OriginAllowed reports whether origin (the Origin header value, "" when
// absent) passes check_origin. An empty list allows everything.
func (c *Controller) OriginAllowed(origin string) bool {
	if len(c.allowed) == 0 {
		return true
	}
	if origin == "" {
		return !c.cfg.RequireOrigin
	}
	o, err := parseOrigin(origin, false)
	if err != nil {
		return false
	}
	for _, a := range c.allowed {
		if a.matches(o) {
			return true
		}
	}
	return false
}

// CheckOrigin is OriginAllowed as a 403 Refusal, counted.
func (c *Controller) CheckOrigin(origin string) error {
	if c.OriginAllowed(origin) {
		return nil
	}
	return c.refuse(http.StatusForbidden, ReasonOrigin, ErrOrigin, 0)
}

// nopRelease is the release of a handshake that is not counted.
func nopRelease() {}

// BeginHandshake counts one more handshake in progress from the TCP peer
// peer (keyed as Key does), before any byte of the request is read, so that
// one address holding many silent connections cannot occupy every
// handshake worker: past IPMaxHandshakes it returns a 429 *Refusal
// (ReasonIPHandshakes). On success the caller must call release exactly
// when the handshake ends, whichever way (upgrade, refusal, timeout, hand-off
// to another server); release is idempotent and safe from any goroutine.
//
// Peers inside TrustedProxies are not counted: a proxy carries many
// clients, which are told apart (and capped by Admit) only once
// X-Forwarded-For has been read. An invalid peer is not counted either;
// Admit refuses it once the request is read.
func (c *Controller) BeginHandshake(peer netip.Addr) (release func(), err error) {
	peer = peer.Unmap().WithZone("")
	if !peer.IsValid() || c.trusted(peer) {
		return nopRelease, nil
	}
	key := c.Key(peer)
	c.mu.Lock()
	n := c.pending[key]
	if n >= c.cfg.IPMaxHandshakes {
		c.mu.Unlock()
		return nil, c.refuse(http.StatusTooManyRequests, ReasonIPHandshakes, ErrIPHandshakes, 0)
	}
	c.pending[key] = n + 1
	c.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { c.endHandshake(key) }) }, nil
}

// endHandshake undoes one BeginHandshake of key.
func (c *Controller) endHandshake(key netip.Prefix) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.pending[key] - 1; n > 0 {
		c.pending[key] = n
	} else {
		delete(c.pending, key)
	}
}

// Handshakes returns the handshakes in progress counted by BeginHandshake
// for a's key (every key when a is the zero Addr).
func (c *Controller) Handshakes(a netip.Addr) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !a.IsValid() {
		n := 0
		for _, v := range c.pending {
			n += v
		}
		return n
	}
	return c.pending[c.Key(a)]
}

// Ticket is one admitted connection's share of the caps. Release it exactly
// when the connection ends (extra calls are no-ops).
type Ticket struct {
	c      *Controller
	key    netip.Prefix
	player string
	bound  bool
	done   bool
	mu     sync.Mutex
}

// Admit takes a handshake token for ip and a connection slot for ip and for
// the node. On success the caller owns the Ticket and must Release it.
func (c *Controller) Admit(ip netip.Addr) (*Ticket, error) {
	if !ip.IsValid() {
		return nil, c.refuse(http.StatusForbidden, ReasonBadAddress, ErrBadAddress, 0)
	}
	key := c.Key(ip)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.evictIdle(now)
	st := c.state(key, now)
	st.lastSeen = now
	// The rate is charged first: an attempt refused for any later reason
	// still cost us a handshake.
	if !st.handshakes.AllowN(now, 1) {
		missing := 1 - st.handshakes.TokensAt(now)
		wait := time.Duration(math.Ceil(missing / float64(st.handshakes.Limit()) * float64(time.Second)))
		return nil, c.refuse(http.StatusTooManyRequests, ReasonHandshakeRate, ErrHandshakeRate, wait)
	}
	if st.conns >= c.cfg.IPMaxConns {
		return nil, c.refuse(http.StatusTooManyRequests, ReasonIPConnLimit, ErrIPConnLimit, 0)
	}
	if c.total >= c.cfg.MaxConns {
		return nil, c.refuse(http.StatusServiceUnavailable, ReasonGlobalConnLimit, ErrGlobalConnLimit, 0)
	}
	if st.conns == 0 {
		c.unlinkIdle(st)
	}
	st.conns++
	c.total++
	return &Ticket{c: c, key: key}, nil
}

// BindPlayer takes a slot for player on this ticket's connection. Call it
// once, after the token is verified; on error the ticket is unchanged (the
// caller still Releases it).
func (t *Ticket) BindPlayer(player string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done || t.bound {
		return errors.New("admission: BindPlayer on a released or already bound ticket")
	}
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.players[player] >= c.cfg.PlayerMaxConns {
		return c.refuse(http.StatusTooManyRequests, ReasonPlayerConnLimit, ErrPlayerConnLimit, 0)
	}
	c.players[player]++
	t.player, t.bound = player, true
	return nil
}

// Release gives back the ticket's slots. Idempotent.
func (t *Ticket) Release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return
	}
	t.done = true
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.bound {
		if n := c.players[t.player] - 1; n > 0 {
			c.players[t.player] = n
		} else {
			delete(c.players, t.player)
		}
	}
	c.total--
	if st := c.ips[t.key]; st != nil {
		st.conns--
		if st.conns == 0 {
			// Kept (idle) so the handshake bucket survives a reconnect.
			st.lastSeen = c.now()
			c.pushIdle(st)
		}
	}
}

// state returns key's state, creating it; creating may evict the least
// recently seen idle key when MaxTrackedIPs idle keys exist.
func (c *Controller) state(key netip.Prefix, now time.Time) *ipState {
	if st, ok := c.ips[key]; ok {
		if st.conns == 0 {
			c.unlinkIdle(st)
			c.pushIdle(st)
		}
		return st
	}
	for c.nIdle >= c.cfg.MaxTrackedIPs {
		c.dropIdle(c.idle.prev)
		c.evictions.WithLabelValues("capacity").Inc()
	}
	st := &ipState{
		key:        key,
		handshakes: rate.NewLimiter(rate.Limit(c.cfg.IPHandshakesPerSecond), c.cfg.IPHandshakeBurst),
		lastSeen:   now,
	}
	c.ips[key] = st
	c.pushIdle(st)
	return st
}

// IdleTTL is how long an untouched handshake bucket is kept.
func (c *Controller) IdleTTL() time.Duration { return c.idleTTL }

// evictIdle forgets a few connection-less keys idle for IPIdleTTL; bounded
// per call so one handshake never pays for a big sweep.
func (c *Controller) evictIdle(now time.Time) {
	for range 8 {
		st := c.idle.prev
		if st == &c.idle || now.Sub(st.lastSeen) < c.idleTTL {
			return
		}
		c.dropIdle(st)
		c.evictions.WithLabelValues("idle").Inc()
	}
}

// Sweep forgets every connection-less key idle for IPIdleTTL; the owner calls
// it periodically. Returns how many went.
func (c *Controller) Sweep() int {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for {
		st := c.idle.prev
		if st == &c.idle || now.Sub(st.lastSeen) < c.idleTTL {
			return n
		}
		c.dropIdle(st)
		c.evictions.WithLabelValues("idle").Inc()
		n++
	}
}

func (c *Controller) dropIdle(st *ipState) {
	c.unlinkIdle(st)
	delete(c.ips, st.key)
}

func (c *Controller) pushIdle(st *ipState) {
	st.prev, st.next = &c.idle, c.idle.next
	c.idle.next.prev = st
	c.idle.next = st
	c.nIdle++
}

func (c *Controller) unlinkIdle(st *ipState) {
	st.prev.next, st.next.prev = st.next, st.prev
	st.prev, st.next = nil, nil
	c.nIdle--
}

// Connections returns the number of admitted, unreleased connections.
func (c *Controller) Connections() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// TrackedIPs returns the number of IP keys with state.
func (c *Controller) TrackedIPs() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ips)
}
