package game

import (
	"sync"
	"time"
)

// ledger holds every player's balance, in chips, for the life of the
// process (across tables), and applies each idempotency key at most once.
// It is safe for concurrent use.
//
// Lock order: ledger.mu is taken before a table's mu (a bet checks its
// round inside apply), never after it and never together with Game.mu.
type ledger struct {
	start int64
	clock Clock

	mu       sync.Mutex
	balances map[string]int64
	keys     *keyCache
}

// newLedger returns an empty ledger: a player it has not seen has
// startBalance. Keys are remembered for ttl and at most maxKeys of them.
func newLedger(startBalance int64, ttl time.Duration, maxKeys int, clock Clock) *ledger {
	if clock == nil {
		clock = systemClock{}
	}
	return &ledger{
		start:    startBalance,
		clock:    clock,
		balances: make(map[string]int64),
		keys:     newKeyCache(ttl, maxKeys),
	}
}

// balance returns player's balance, opening the account if needed.
func (l *ledger) balance(player string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.balanceLocked(player)
}

func (l *ledger) balanceLocked(player string) int64 {
	b, ok := l.balances[player]
	if !ok {
		b = l.start
		l.balances[player] = b
	}
	return b
}

// credit adds amount (> 0) to player's balance: a payout or a refund.
func (l *ledger) credit(player string, amount int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.balances[player] = l.balanceLocked(player) + amount
}

// account is one player's account inside ledger.apply; it is valid only
// until the function it was given to returns.
type account struct {
	l      *ledger
	player string
}

// balance returns the account's balance.
func (a *account) balance() int64 { return a.l.balanceLocked(a.player) }

// debit takes amount (> 0) from the balance, or reports false and takes
// nothing when the balance is short of it.
func (a *account) debit(amount int64) bool {
	b := a.l.balanceLocked(a.player)
	if amount > b {
		return false
	}
	a.l.balances[a.player] = b - amount
	return true
}

// apply runs fn on player's account at most once per key: a key already
// seen returns the answer fn gave the first time, whatever it was (an
// error too), and replayed is true. fn runs under the ledger's lock, so
// check-and-debit is atomic and concurrent calls with one key run fn once;
// it must be quick and must not call back into the ledger.
//
// Keys are scoped by player, so one player can never read another's answer
// with a borrowed key. An empty key is applied every time and remembered
// never (phxgate always sends one).
func (l *ledger) apply(player, key string, fn func(*account) answer) (a answer, replayed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	scoped := ""
	if key != "" {
		scoped = scopeKey(key, player)
		now := l.clock.Now()
		if a, ok := l.keys.get(scoped, now); ok {
			return a, true
		}
	}
	a = fn(&account{l: l, player: player})
	if key != "" {
		l.keys.put(scoped, a, l.clock.Now())
	}
	return a, false
}

// ledgerStats are the ledger's counters.
type ledgerStats struct {
	// players is the number of accounts.
	players int
	// keys is the number of idempotency keys remembered.
	keys int
	// keysEvictedEarly counts keys forgotten by the MaxKeys cap before
	// their KeyTTL ran out.
	keysEvictedEarly uint64
}

// stats returns the ledger's counters.
func (l *ledger) stats() ledgerStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys.expire(l.clock.Now())
	return ledgerStats{players: len(l.balances), keys: l.keys.len(), keysEvictedEarly: l.keys.evictedEarly}
}
