package game

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"
)

// Round states in a join's reply: betting until the window closes,
// rolling from then until the roll (a moment, unless the loop is late).
const (
	StateBetting = "betting"
	StateRolling = "rolling"
)

// table is one topic with players. Its loop goroutine rolls each round at
// its deadline and opens the next one at once, until the last player
// leaves (stop) or the game closes. A table leaves Game.tables with its
// last player, and a later join starts a new one.
type table struct {
	topic string
	stop  chan struct{} // closed by the last leave
	done  chan struct{} // closed when the loop has returned

	mu sync.Mutex
	// seats are the channels joined, by seatID (node, connection and
	// join_ref), each the player's: a Leave removes exactly its join's
	// seat, and one for a join never applied (phxgate sends it when a
	// join's answer was lost) removes nothing.
	seats map[string]string
	round *round // taking bets; nil once stopped
	// lastID is the id of the newest round opened on the table.
	lastID uint64
}

// round is one betting window. Stakes are summed per player and pick, so
// a round's memory is bounded by its players, not by its bets.
type round struct {
	id       uint64
	closesAt time.Time
	stakes   map[string]*stake
}

type stake struct{ high, low int64 }

func (r *round) stake(player, pick string, amount int64) {
	s := r.stakes[player]
	if s == nil {
		s = &stake{}
		r.stakes[player] = s
	}
	if pick == PickHigh {
		s.high += amount
	} else {
		s.low += amount
	}
}

type roundView struct {
	ID         uint64 `json:"id"`
	State      string `json:"state"`
	ClosesAtMs int64  `json:"closes_at_ms"`
}

func (r *round) view(now time.Time) roundView {
	state := StateBetting
	if !now.Before(r.closesAt) {
		state = StateRolling
	}
	return roundView{ID: r.id, State: state, ClosesAtMs: r.closesAt.UnixMilli()}
}

// newRound opens t's next round at now. Round ids count per table, 1, 2,
// 3 …, so a client sees round_result rise by exactly one and can tell a
// missed result from a late one. Called with t.mu held (or t unshared).
func (g *Game) newRound(t *table, now time.Time) *round {
	t.lastID++
	return &round{
		id:       t.lastID,
		closesAt: now.Add(g.cfg.Window),
		stakes:   make(map[string]*stake),
	}
}

// startTable returns a new table with its first round open and its loop
// running. A table started again after it emptied goes on from its last
// rolled round (the round its last leave refunded was never rolled, so
// its id is used again). Called under g.mu, with g not closed.
func (g *Game) startTable(topic string, now time.Time) *table {
	t := &table{
		topic:  topic,
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		seats:  make(map[string]string),
		lastID: g.rolled[topic],
	}
	delete(g.rolled, topic)
	t.round = g.newRound(t, now)
	g.loops.Add(1)
	go g.runTable(t)
	return t
}

// result is a rolled round.
type result struct {
	topic   string
	round   uint64
	roll    int
	payouts map[string]int64
}

// runTable is t's round loop.
func (g *Game) runTable(t *table) {
	defer g.loops.Done()
	defer close(t.done)
	for {
		t.mu.Lock()
		r := t.round
		t.mu.Unlock()
		if r == nil {
			return
		}
		tm := g.clock.NewTimer(r.closesAt.Sub(g.clock.Now()))
		select {
		case <-t.stop:
			tm.Stop()
			return
		case <-g.ctx.Done():
			tm.Stop()
			return
		case <-tm.C():
		}
		res, ok := g.settle(t, g.rollDie())
		if !ok {
			return
		}
		// Pay before telling: a player who sees the result and asks for
		// the balance must see the payout.
		for p, amount := range res.payouts {
			g.ledger.credit(p, amount)
		}
		g.rounds.Add(1)
		g.publish(res)
	}
}

// settle closes t's round with roll and opens the next one. It reports
// false when the table was stopped meanwhile (the leave refunded the
// round).
func (g *Game) settle(t *table, roll int) (result, bool) {
	now := g.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.round
	if r == nil {
		return result{}, false
	}
	t.round = g.newRound(t, now)
	payouts := make(map[string]int64)
	for p, s := range r.stakes {
		won := s.low
		if wins(PickHigh, roll) {
			won = s.high
		}
		if won > 0 {
			payouts[p] = 2 * won
		}
	}
	return result{topic: t.topic, round: r.id, roll: roll, payouts: payouts}, true
}

type roundResult struct {
	Round   uint64           `json:"round"`
	Roll    int              `json:"roll"`
	Payouts map[string]int64 `json:"payouts"`
}

// publish broadcasts res to its table, retrying transient failures
// BroadcastAttempts times in all with doubling backoff. It runs on the
// table's loop, which it holds for at most BroadcastAttempts ×
// BroadcastTimeout plus the backoffs; the next round already takes bets
// meanwhile. A result given up is logged and counted, never queued.
func (g *Game) publish(res result) {
	payload, err := json.Marshal(roundResult{Round: res.round, Roll: res.roll, Payouts: res.payouts})
	if err != nil {
		panic("dice: round result does not encode: " + err.Error()) // ints and strings only
	}
	log := g.log.With("topic", res.topic, "round", res.round, "roll", res.roll)
	if g.bc == nil {
		log.Info("dice: round rolled (no broadcaster)", "payouts", len(res.payouts))
		return
	}
	backoff := g.cfg.BroadcastBackoff
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(g.ctx, g.cfg.BroadcastTimeout)
		err := g.bc.Broadcast(ctx, res.topic, EventRoundResult, payload)
		cancel()
		if err == nil {
			log.Debug("dice: round result broadcast", "attempt", attempt)
			return
		}
		if attempt >= g.cfg.BroadcastAttempts || errors.Is(err, ErrPermanent) || g.ctx.Err() != nil {
			g.broadcastFailures.Add(1)
			log.Error("dice: round result not broadcast, given up", "attempt", attempt, "err", err)
			return
		}
		log.Warn("dice: round result broadcast failed, retrying", "attempt", attempt, "backoff", backoff, "err", err)
		tm := g.clock.NewTimer(backoff)
		select {
		case <-tm.C():
		case <-g.ctx.Done():
			tm.Stop()
			g.broadcastFailures.Add(1)
			log.Error("dice: round result not broadcast, game closing", "attempt", attempt, "err", err)
			return
		}
		backoff = min(2*backoff, backoffCapFactor*g.cfg.BroadcastBackoff)
	}
}

// rollDie returns g.roll's face, or a crypto/rand one when it is out of
// 1..6.
func (g *Game) rollDie() int {
	n := g.roll()
	if n < 1 || n > 6 {
		g.log.Error("dice: roller out of range, rolling with crypto/rand", "roll", n)
		return cryptoRoll()
	}
	return n
}

// cryptoRoll returns a uniform 1..6 from crypto/rand: a byte below 252 (a
// multiple of 6) modulo 6, so no face is favoured.
func cryptoRoll() int {
	var b [1]byte
	for {
		_, _ = rand.Read(b[:]) // never fails (crypto/rand crashes instead)
		if b[0] < 252 {
			return int(b[0]%6) + 1
		}
	}
}

// dropOneSeat removes one of player's seats joined through node, for a
// rejoin that does not name the seat it takes over. Called with t.mu held.
func (t *table) dropOneSeat(node, player string) {
	prefix := node + "\x00"
	for id, p := range t.seats {
		if p == player && strings.HasPrefix(id, prefix) {
			delete(t.seats, id)
			return
		}
	}
}
