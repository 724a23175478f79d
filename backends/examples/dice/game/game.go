package game

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TopicPrefix starts every topic the game serves: "table:<id>".
const TopicPrefix = "table:"

// Events: EventBet is the client's one event; EventRoundResult is
// broadcast to a table's topic after each roll.
const (
	EventBet         = "bet"
	EventRoundResult = "round_result"
)

// Reasons of the game's error replies ({"reason":…}).
const (
	ReasonBadTopic          = "bad_topic"          // join: topic is not table:<id>
	ReasonLoginRequired     = "login_required"     // join or bet without a player id
	ReasonBadBet            = "bad_bet"            // bet payload malformed or out of bounds
	ReasonBettingClosed     = "betting_closed"     // bet after the round's window
	ReasonInsufficientFunds = "insufficient_funds" // bet over the balance
	ReasonUnknownEvent      = "unknown event"      // any event but bet
)

// Reply statuses.
const (
	StatusOK    = "ok"
	StatusError = "error"
)

// Options are the game's collaborators; every field may be left nil.
type Options struct {
	// Broadcaster receives the round results (nil: they are only logged).
	Broadcaster Broadcaster
	// Clock drives rounds, key ages and retry backoff (nil: wall clock).
	Clock Clock
	// Roll returns a die's face, 1..6 (nil: crypto/rand). A value out of
	// range is logged and replaced by a crypto/rand roll.
	Roll func() int
	// Logger gets the game's logs (nil: slog.Default()).
	Logger *slog.Logger
}

// Game is the dice game: it serves GameBackend (Join, HandleIn, Leave) and
// runs one round loop per table with players. It is safe for concurrent
// use; see the package doc for its lock order.
type Game struct {
	backendv1.UnimplementedGameBackendServer

	cfg    Config
	clock  Clock
	roll   func() int
	bc     Broadcaster
	log    *slog.Logger
	ledger *ledger
	bootID string

	betSeq atomic.Uint64

	// ctx is cancelled by Close: it ends the round loops and their
	// broadcasts, which loops (a WaitGroup) tracks.
	ctx    context.Context
	cancel context.CancelFunc
	loops  sync.WaitGroup
	closed atomic.Bool

	mu     sync.RWMutex
	tables map[string]*table // tables with players
	// rolled is the last rolled round of each emptied table, so that the
	// table's rounds go on counting when it starts again. At most
	// Config.MaxKeys entries; past it one is forgotten (that table counts
	// from 1 again).
	rolled map[string]uint64
	calls  *keyCache // keys of the joins and leaves applied

	rounds            atomic.Uint64
	broadcastFailures atomic.Uint64
}

// New returns a game; Close stops it.
func New(cfg Config, opts Options) (*Game, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Game{
		cfg:    cfg,
		clock:  opts.Clock,
		roll:   opts.Roll,
		bc:     opts.Broadcaster,
		log:    opts.Logger,
		tables: make(map[string]*table),
		rolled: make(map[string]uint64),
		calls:  newKeyCache(cfg.KeyTTL, cfg.MaxKeys),
	}
	if g.clock == nil {
		g.clock = systemClock{}
	}
	if g.roll == nil {
		g.roll = cryptoRoll
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	g.ledger = newLedger(cfg.StartBalance, cfg.KeyTTL, cfg.MaxKeys, g.clock)
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand crashes instead)
	g.bootID = hex.EncodeToString(b[:])
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g, nil
}

// Close stops every round loop (their open rounds are not rolled),
// cancels the broadcasts in flight and waits for the loops to return.
// Calls after Close fail with UNAVAILABLE. It is idempotent.
func (g *Game) Close() {
	g.mu.Lock()
	g.closed.Store(true)
	g.mu.Unlock()
	g.cancel()
	g.loops.Wait()
}

var errClosed = status.Error(codes.Unavailable, "dice: game is shutting down")

// Join admits a player to a table: it answers the balance and the round
// taking bets, and starts the table's rounds with its first player.
func (g *Game) Join(ctx context.Context, req *backendv1.JoinRequest) (*backendv1.JoinResponse, error) {
	c := req.GetCall()
	if c == nil {
		return nil, status.Error(codes.InvalidArgument, "dice: no call")
	}
	topic, player := c.GetTopic(), c.GetPlayerId()
	if !strings.HasPrefix(topic, TopicPrefix) || len(topic) == len(TopicPrefix) {
		return &backendv1.JoinResponse{Reply: errorAnswer(ReasonBadTopic).reply()}, nil
	}
	if player == "" {
		return &backendv1.JoinResponse{Reply: errorAnswer(ReasonLoginRequired).reply()}, nil
	}
	// Read before g.mu: the ledger's lock is never taken under it.
	bal := g.ledger.balance(player)

	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed.Load() {
		return nil, errClosed
	}
	now := g.clock.Now()
	key := c.GetIdempotencyKey()
	if key != "" {
		// A retried join must not count the player twice: Leave comes once.
		key = scopeKey(key, "join", topic, player)
		if a, ok := g.calls.get(key, now); ok {
			return &backendv1.JoinResponse{Reply: a.reply(), PresenceMeta: presenceMeta(player)}, nil
		}
	}
	// phxgate gave up on this join (and sends or sent its Leave): do not
	// seat anyone.
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	seat := seatID(c.GetNodeId(), c.GetConnId(), c.GetJoinRef())
	if _, left := g.calls.get(scopeKey(seat, "left", topic), now); left {
		return &backendv1.JoinResponse{Reply: errorAnswer("join_expired").reply()}, nil
	}
	t := g.tables[topic]
	if t == nil {
		t = g.startTable(topic, now)
		g.tables[topic] = t
	}
	t.mu.Lock()
	if req.GetRejoin() {
		// The player's dropped connection's seat, for which no Leave
		// comes: this join takes it over. A node too old to name it
		// (rejoin without rejoin_conn_id) gives up one of the player's
		// seats on that node instead.
		if old := seatID(c.GetNodeId(), req.GetRejoinConnId(), req.GetRejoinJoinRef()); req.GetRejoinConnId() != 0 {
			if t.seats[old] == player {
				delete(t.seats, old)
			}
		} else {
			t.dropOneSeat(c.GetNodeId(), player)
		}
	}
	t.seats[seat] = player
	view := t.round.view(now)
	t.mu.Unlock()
	a := okAnswer(joinReply{Balance: bal, Round: view})
	if key != "" {
		g.calls.put(key, a, now)
	}
	g.log.Debug("dice: join", "topic", topic, "player", player, "node_id", c.GetNodeId(), "conn_id", c.GetConnId(), "round", view.ID)
	return &backendv1.JoinResponse{Reply: a.reply(), PresenceMeta: presenceMeta(player)}, nil
}

// seatID names the seat a join takes: the joining channel's node,
// connection and join_ref.
func seatID(node string, conn uint64, joinRef string) string {
	return node + "\x00" + strconv.FormatUint(conn, 10) + "\x00" + joinRef
}

// presenceMeta is what a player is shown with on a table with presence on:
// their name.
func presenceMeta(player string) []byte {
	b, _ := json.Marshal(struct {
		Name string `json:"name"`
	}{player})
	return b
}

// HandleIn answers a client event: bet, or an unknown event error.
func (g *Game) HandleIn(ctx context.Context, req *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
	c := req.GetCall()
	if c == nil {
		return nil, status.Error(codes.InvalidArgument, "dice: no call")
	}
	if c.GetEvent() != EventBet {
		return &backendv1.HandleInResponse{Reply: errorAnswer(ReasonUnknownEvent).reply()}, nil
	}
	if c.GetPlayerId() == "" {
		return &backendv1.HandleInResponse{Reply: errorAnswer(ReasonLoginRequired).reply()}, nil
	}
	if g.closed.Load() {
		return nil, errClosed
	}
	a, replayed := g.bet(c)
	if replayed {
		g.log.DebugContext(ctx, "dice: bet replayed", "topic", c.GetTopic(), "player", c.GetPlayerId(), "node_id", c.GetNodeId(), "conn_id", c.GetConnId(), "status", a.status)
	}
	g.log.DebugContext(ctx, "dice: bet", "topic", c.GetTopic(), "player", c.GetPlayerId(), "conn_id", c.GetConnId(), "status", a.status, "replayed", replayed)
	return &backendv1.HandleInResponse{Reply: a.reply()}, nil
}

// bet places one bet, at most once per idempotency key.
func (g *Game) bet(c *backendv1.Call) (answer, bool) {
	player := c.GetPlayerId()
	g.mu.RLock()
	t := g.tables[c.GetTopic()]
	g.mu.RUnlock()
	return g.ledger.apply(player, c.GetIdempotencyKey(), func(acct *account) answer {
		amount, pick, ok := parseBet(c.GetPayload(), g.cfg.MaxBet)
		if !ok {
			return errorAnswer(ReasonBadBet)
		}
		if t == nil {
			// No player left on the table (or the game restarted since the
			// join): no round takes bets.
			return errorAnswer(ReasonBettingClosed)
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		r := t.round
		if r == nil || !g.clock.Now().Before(r.closesAt) {
			return errorAnswer(ReasonBettingClosed)
		}
		if !acct.debit(amount) {
			return errorAnswer(ReasonInsufficientFunds)
		}
		r.stake(player, pick, amount)
		id := g.bootID + "-" + strconv.FormatUint(g.betSeq.Add(1), 10)
		return okAnswer(betReply{Balance: acct.balance(), BetID: id})
	})
}

// Leave takes a player's channel off its table. The table's last leave
// stops its rounds and refunds the bets of the round left open.
func (g *Game) Leave(_ context.Context, req *backendv1.LeaveRequest) (*backendv1.LeaveResponse, error) {
	c := req.GetCall()
	if c == nil {
		return nil, status.Error(codes.InvalidArgument, "dice: no call")
	}
	topic, player := c.GetTopic(), c.GetPlayerId()
	var refund *round
	g.mu.Lock()
	now := g.clock.Now()
	key := c.GetIdempotencyKey()
	if key != "" {
		key = scopeKey(key, "leave", topic, player)
		if _, ok := g.calls.get(key, now); ok {
			g.mu.Unlock()
			return &backendv1.LeaveResponse{}, nil
		}
		g.calls.put(key, answer{status: StatusOK}, now)
	}
	seat := seatID(c.GetNodeId(), c.GetConnId(), c.GetJoinRef())
	t := g.tables[topic]
	if t == nil {
		// A Leave for a seat not (yet) taken: its join may still come;
		// remember it so that join seats nobody.
		g.calls.put(scopeKey(seat, "left", topic), answer{status: StatusOK}, now)
	}
	if t != nil {
		t.mu.Lock()
		if _, ok := t.seats[seat]; !ok {
			g.calls.put(scopeKey(seat, "left", topic), answer{status: StatusOK}, now)
		}
		delete(t.seats, seat)
		if len(t.seats) == 0 {
			refund = t.round
			t.round = nil
			close(t.stop)
			delete(g.tables, topic)
			g.rememberRolled(topic, t.lastID-1) // lastID is the refunded round's
		}
		t.mu.Unlock()
	}
	g.mu.Unlock()

	g.log.Debug("dice: leave", "topic", topic, "player", player, "node_id", c.GetNodeId(), "conn_id", c.GetConnId(), "reason", req.GetReason().String())
	if refund != nil {
		for p, s := range refund.stakes {
			g.ledger.credit(p, s.high+s.low)
		}
		g.log.Info("dice: table empty, rounds stopped", "topic", topic, "round", refund.id, "refunded_players", len(refund.stakes))
	}
	return &backendv1.LeaveResponse{}, nil
}

// rememberRolled keeps an emptied table's last rolled round id, within
// Config.MaxKeys entries. Called under g.mu.
func (g *Game) rememberRolled(topic string, id uint64) {
	if _, ok := g.rolled[topic]; !ok && len(g.rolled) >= g.cfg.MaxKeys {
		for k := range g.rolled {
			delete(g.rolled, k)
			break
		}
	}
	g.rolled[topic] = id
}

// Balance returns player's balance in chips (StartBalance for a player not
// seen yet).
func (g *Game) Balance(player string) int64 { return g.ledger.balance(player) }

// Stats are the game's counters.
type Stats struct {
	Tables            int    // tables with players
	Accounts          int    // players with a balance
	Keys              int    // bet idempotency keys remembered
	KeysEvictedEarly  uint64 // bet keys forgotten by the MaxKeys cap before their KeyTTL
	Rounds            uint64 // rounds rolled
	BroadcastFailures uint64 // round results given up
}

// Stats returns the game's counters.
func (g *Game) Stats() Stats {
	ls := g.ledger.stats()
	g.mu.RLock()
	tables := len(g.tables)
	g.mu.RUnlock()
	return Stats{
		Tables:            tables,
		Accounts:          ls.players,
		Keys:              ls.keys,
		KeysEvictedEarly:  ls.keysEvictedEarly,
		Rounds:            g.rounds.Load(),
		BroadcastFailures: g.broadcastFailures.Load(),
	}
}

// Replies.

type joinReply struct {
	Balance int64     `json:"balance"`
	Round   roundView `json:"round"`
}

type betReply struct {
	Balance int64  `json:"balance"`
	BetID   string `json:"bet_id"`
}

type reasonReply struct {
	Reason string `json:"reason"`
}

func okAnswer(v any) answer {
	b, err := json.Marshal(v)
	if err != nil {
		panic("dice: reply does not encode: " + err.Error()) // only fixed structs of ints and strings
	}
	return answer{status: StatusOK, body: b}
}

func errorAnswer(reason string) answer {
	b, _ := json.Marshal(reasonReply{Reason: reason})
	return answer{status: StatusError, body: b}
}

func (a answer) reply() *backendv1.Reply {
	return &backendv1.Reply{Status: a.status, Response: &backendv1.Payload{Data: a.body}}
}
