package channels

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels/auth"
	"github.com/phxgate/phxgate/pubsub"
	"github.com/prometheus/client_golang/prometheus"
)

// Server is the node-level protocol layer: it owns the worker pool that runs
// backend calls, the topic hub that fans broadcasts out, and the metrics.
// All methods are safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger // cfg.Logger or slog.Default()
	router *Router
	broker pubsub.Broker
	m      *metrics
	hub    *hub

	// ready holds channels that have calls queued; a worker runs a channel's
	// calls one at a time, so each channel is FIFO and channels run in
	// parallel.
	ready    chan *channel
	quit     chan struct{}
	workers  sync.WaitGroup
	inflight atomic.Int64 // channels scheduled or running
	closing  atomic.Bool
	once     sync.Once
	// instance is random per boot (Server), so that idempotency keys never
	// repeat across restarts, nodes or containers that share a hostname
	// and pid; callSeq numbers the backend calls of this instance.
	instance string
	callSeq  atomic.Uint64
	seats    seats
	// pendingOut estimates the bytes of broadcasts handed to Fanout lanes
	// and not yet queued to their sockets (see PendingBytes).
	pendingOut atomic.Int64
	// presenceControl receives the presence tracker's control events
	// (nil: none), named presenceControlEvent.
	presenceControl      PresenceControl
	presenceControlEvent string
	// stateBudget bounds the presence_state snapshots held by streams
	// (Config.PresenceStreamBytes).
	stateBudget *streamBudget
}

// InstanceID is this server's random per-boot id, the first part of the
// idempotency keys it generates.
func (s *Server) InstanceID() string { return s.instance }

// newInstanceID returns 16 random base32 characters (80 bits).
func newInstanceID() string {
	var b [10]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}

// MaxClientKeyBytes bounds a push payload's "idempotency_key".
const MaxClientKeyBytes = 64

// callKey returns the idempotency key of one backend call (see
// backends.Call.IdempotencyKey). A push from an identified player whose
// JSON object payload has a string "idempotency_key" of 1 to
// MaxClientKeyBytes bytes gets "player:<player>:<that key>" (':' and '%'
// in the player id percent-encoded, so the form is unambiguous): the same
// bet resent after a reconnect, to another node with another ref, carries
// the same key. Every other call gets "<instance>:<conn>:<gen>:<seq>":
// this boot's random id, the connection, the channel's incarnation and a
// sequence number unique in this boot. The client's refs are never part
// of a key (they are passed apart, as Call.JoinRef and Call.Ref).
func (s *Server) callKey(conn uint64, gen uint32, player, event string, p backends.Payload) string {
	if player != "" && !p.Binary && event != "phx_join" && event != "phx_leave" {
		if k, _, ok := clientKey(p.Data); ok {
			return "player:" + escapeKeyPart(player) + ":" + k
		}
	}
	b := make([]byte, 0, len(s.instance)+48)
	b = append(b, s.instance...)
	b = append(b, ':')
	b = strconv.AppendUint(b, conn, 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, uint64(gen), 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, s.callSeq.Add(1), 10)
	return string(b)
}

// clientKey returns a payload's "idempotency_key" (present reports the
// member exists). It is valid (ok) when it is a string that decodes to 1 to
// MaxClientKeyBytes bytes of valid UTF-8 (no lone surrogate, which a JSON
// decoder would turn into U+FFFD and so merge distinct keys) and the
// member appears once.
func clientKey(p []byte) (key string, present, ok bool) {
	i := skipWS(p, 0)
	if i >= len(p) || p[i] != '{' {
		return "", false, false
	}
	count := 0
	var raw []byte
	objectMembers(p[i:], func(k, val []byte, _, _ int) bool {
		if string(k) == "idempotency_key" {
			count++
			raw = val
		}
		return true
	})
	if count == 0 {
		return "", false, false
	}
	// \uXXXX escapes take 6 bytes a character at most, and so bound the
	// source of a valid key.
	if count > 1 || len(raw) < 2 || raw[0] != '"' || len(raw) > 6*MaxClientKeyBytes+2 {
		return "", true, false
	}
	var str string
	if err := json.Unmarshal(raw, &str); err != nil || str == "" || len(str) > MaxClientKeyBytes ||
		!utf8.ValidString(str) || strings.ContainsRune(str, utf8.RuneError) {
		return "", true, false
	}
	return str, true, true
}

// escapeKeyPart percent-encodes '%' and ':' so that a key part cannot
// shift the separators.
func escapeKeyPart(s string) string {
	if !strings.ContainsAny(s, "%:") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '%':
			b.WriteString("%25")
		case ':':
			b.WriteString("%3A")
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// PendingBytes is an estimate of the output the hub holds for Fanout
// lanes that have not run yet: events published faster than the lanes
// drain them. The transport adds it to its queued bytes when it decides
// whether the node is over its output budget (Config.Overloaded).
func (s *Server) PendingBytes() int64 { return s.pendingOut.Load() }

// NewServer validates cfg, registers the metrics on reg (nil: not
// registered) and starts cfg.Workers workers. Stop them with Close.
func NewServer(cfg Config, router *Router, broker pubsub.Broker, reg prometheus.Registerer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if router == nil || broker == nil {
		return nil, fmt.Errorf("%w: nil router or broker", ErrBadConfig)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("channels: metrics: %w", err)
	}
	s := &Server{
		instance: newInstanceID(),
		cfg:      cfg,
		log:      cmp.Or(cfg.Logger, slog.Default()),
		router:   router,
		broker:   broker,
		m:        m,
		ready:    make(chan *channel, cfg.QueueSize),
		quit:     make(chan struct{}),
	}
	s.hub = newHub(s)
	s.stateBudget = newStreamBudget(cfg.PresenceStreamBytes, m.presenceStreamBytes)
	s.seats.srv = s
	if pc, ok := cfg.Presence.(PresenceControl); ok {
		s.presenceControl, s.presenceControlEvent = pc, pc.ControlEvent()
	}
	if reg != nil {
		held := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "phxgate_leave_grace_seats", Help: "Seats held through a route's leave_grace (a dropped player's Leave waiting for the grace to end).",
		}, func() float64 { return float64(s.seats.count()) })
		if err := reg.Register(held); err != nil {
			return nil, fmt.Errorf("channels: metrics: %w", err)
		}
	}
	s.workers.Add(cfg.Workers)
	for range cfg.Workers {
		go s.worker()
	}
	return s, nil
}

// Connect creates the protocol state of a newly upgraded connection. It
// starts no goroutine.
func (s *Server) Connect(c Conn, info ConnectInfo) *Socket {
	lane := 0
	if l, ok := c.(Laned); ok {
		// Sockets of pollers past maxLanes share the lanes, modulo.
		lane = max(l.Lane(), 0) % s.lanes()
	}
	return &Socket{
		srv:      s,
		conn:     c,
		lane:     uint16(lane),
		ser:      info.Serializer,
		params:   info.Params,
		identity: connectIdentity(info),
		rateKey:  rateKeyOf(c, info),
	}
}

// lanes is the number of Fanout lanes a topic's subscribers are split into.
func (s *Server) lanes() int {
	if s.cfg.Fanout == nil {
		return 1
	}
	return max(1, min(s.cfg.Fanout.Lanes(), maxLanes))
}

// maxLanes bounds the lanes a topic is split into: every topic holds a
// pointer per lane, and more lanes than this buy no more parallelism in
// one topic's fan-out.
const maxLanes = 16

// overloaded reports whether the node's output budget is spent
// (Config.Overloaded).
func (s *Server) overloaded() bool {
	return s.cfg.Overloaded != nil && s.cfg.Overloaded()
}

// Publish publishes an event to topic through the broker, as a backend's
// broadcast does, unless the node's output budget is spent: then it
// returns ErrOverloaded and publishes nothing (counted in
// phxgate_overload_shed_total{what="broadcast"}). The payload is JSON
// (empty means {}) unless binary; it is kept, not copied.
func (s *Server) Publish(ctx context.Context, topic string, msg pubsub.Message) (pubsub.Position, error) {
	if s.overloaded() {
		s.m.shed.WithLabelValues(shedBroadcast).Inc()
		return pubsub.Position{}, ErrOverloaded
	}
	if len(msg.Payload) == 0 && !msg.Binary {
		msg.Payload = emptyObject
	}
	pos, err := s.broker.Publish(ctx, topic, msg)
	if err != nil {
		s.m.publishErrors.Inc()
	}
	return pos, err
}

// BrokerReady reports whether the broker can serve publishes now (a
// readiness check): nil, or why not.
func (s *Server) BrokerReady(ctx context.Context) error { return s.broker.Ping(ctx) }

// connectIdentity returns the identity a socket keeps for info. The usual
// cases hold nothing extra: anonymous (nil), or a verified token whose
// player and claims are what info carries (the identity itself). When a
// custom Admit set PlayerID or Claims apart from Identity, a copy carries
// them: its Topics are Identity's, or nil (unrestricted, as no identity
// is) when there is none, so what the socket may join is unchanged.
func connectIdentity(info ConnectInfo) *auth.Identity {
	id := info.Identity
	if id == nil && info.PlayerID == "" && info.Claims == nil {
		return nil
	}
	if id != nil && id.PlayerID == info.PlayerID && sameBytes(id.Raw, info.Claims) {
		return id
	}
	var cp auth.Identity
	if id != nil {
		cp = *id
	}
	cp.PlayerID, cp.Raw = info.PlayerID, info.Claims
	return &cp
}

// sameBytes reports whether a and b hold the same bytes; nil and empty
// differ, since the backend sees the claims as given.
func sameBytes(a, b []byte) bool {
	return (a == nil) == (b == nil) && bytes.Equal(a, b)
}

// drainPoll is how often Close checks whether the queued calls are done.
const drainPoll = 2 * time.Millisecond

// Close waits until every queued call (including the Leave calls queued by
// Terminate) has run, then stops the workers. Terminate the sockets first.
// Calls queued after Close starts are refused with backend_overloaded,
// except Leave calls, which still run. On ctx expiry the workers are stopped
// anyway and ctx's error is returned.
func (s *Server) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		s.closing.Store(true)
		t := time.NewTicker(drainPoll)
		defer t.Stop()
		for s.inflight.Load() > 0 && err == nil {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-t.C:
			}
		}
		close(s.quit)
		s.workers.Wait()
		// Nobody comes back to a node that stops: held seats leave now.
		s.seats.flush(ctx)
		if err != nil {
			// Out of time: the channels still queued never run. Their
			// Leaves are lost; say how many, loudly.
			if n := s.dropQueued(); n > 0 {
				s.m.leavesLost.Add(float64(n))
				err = fmt.Errorf("channels: close: %d Leave calls never ran: %w", n, err)
			}
		}
	})
	return err
}

// dropQueued empties the ready queue once the workers are gone and
// returns how many Leaves (a leave, a terminate of a joined channel)
// were waiting in it.
func (s *Server) dropQueued() int {
	n := 0
	for {
		select {
		case c := <-s.ready:
			c.sock.mu.Lock()
			for _, t := range c.queue {
				if t.kind == taskLeave || (t.kind == taskTerminate && c.wGen != 0) {
					n++
				}
			}
			c.sock.mu.Unlock()
			s.inflight.Add(-1)
		default:
			return n
		}
	}
}

func (s *Server) worker() {
	defer s.workers.Done()
	for {
		select {
		case c := <-s.ready:
			c.run()
			s.inflight.Add(-1)
		case <-s.quit:
			return
		}
	}
}

// schedule hands a channel to the pool. A client call (must false) is
// refused when the queue is full; a Leave (must true) never is: it waits in
// a goroutine of its own so the poller never blocks.
func (s *Server) schedule(c *channel, must bool) bool {
	if s.closing.Load() {
		if !must {
			return false
		}
		go c.run()
		return true
	}
	s.inflight.Add(1)
	select {
	case s.ready <- c:
		return true
	default:
	}
	if !must {
		s.inflight.Add(-1)
		return false
	}
	go func() {
		select {
		case s.ready <- c:
		case <-s.quit:
			c.run()
			s.inflight.Add(-1)
		}
	}()
	return true
}

// PlayerID is the player of a socket's connect token ("" when anonymous).
func (s *Socket) PlayerID() string {
	if s.identity != nil {
		return s.identity.PlayerID
	}
	return ""
}

// ServesPlayer reports whether the socket acts for player: its connect
// token's player, or a join token's on one of its channels.
func (s *Socket) ServesPlayer(player string) bool {
	if player == "" {
		return false
	}
	if s.PlayerID() == player {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.chans {
		if id := c.joinIdentity(); id != nil && id.PlayerID == player {
			return true
		}
	}
	return false
}

// PushTo sends event with payload to every channel of player joined to
// topic on this node, as a push of that channel (its join_ref, a null ref),
// and returns how many channels it reached. A channel joined with a join
// token counts as that token's player. It scans the topic's local
// subscribers.
func (s *Server) PushTo(topic, player, event string, p backends.Payload) int {
	if player == "" || event == "" {
		return 0
	}
	s.hub.mu.Lock()
	th := s.hub.topics[topic]
	s.hub.mu.Unlock()
	if th == nil {
		return 0
	}
	n := 0
	subs := th.subscribers()
	for _, c := range subs {
		sock := c.sock
		sock.mu.Lock()
		id := c.joinIdentity()
		if id == nil {
			id = sock.identity
		}
		joined, jr := c.curGen.Load() != 0, c.curJoinRef
		sock.mu.Unlock()
		if !joined || id == nil || id.PlayerID != player {
			continue
		}
		f, err := encodeMessage(sock.ser, jr, "null", c.topic, event, p)
		if err != nil {
			s.m.droppedFrames.WithLabelValues(dropReason(err)).Inc()
			continue
		}
		sock.send(f)
		n++
	}
	return n
}
