// Package game is the dice game of the example backend: the rules, the
// ledger and a GameBackend implementation (Game) that needs no network,
// so tests call its methods directly. The dice command serves it over
// gRPC.
//
// # Rules
//
// Topics are "table:<id>". Every player (the call's player_id) has one
// balance for the life of the process, across tables, starting at
// Config.StartBalance (1000). A table's first join opens a round taking
// bets for Config.Window (3s); at its end a die is rolled (crypto/rand),
// each winning bet is paid twice its amount (high wins on 4..6, low on
// 1..3), and the next round opens at once while the table has players.
// After the balances are credited, the result is broadcast to the table's
// topic as event round_result:
//
//	{"round":R,"roll":N,"payouts":{"<player>":amount,…}}
//
// payouts lists the winners only ({} when nobody won), and every
// subscriber gets the same payload. R counts the table's rounds, 1, 2, 3 …
// with no gap, so a client can tell a missed result by its number. The
// last leave of a table stops its rounds and refunds the stakes of the
// round left open; that round was never rolled, and the table's next first
// join opens a round with its id again.
//
// Replies (status "ok" or "error"):
//
//	join  ok    {"balance":N,"round":{"id":R,"state":"betting","closes_at_ms":T}}
//	            (state "rolling" when the window has just closed and the
//	            roll is under way; T in ms since the epoch)
//	join  error bad_topic | login_required
//	bet   {"amount":N,"pick":"high"|"low"}
//	      ok    {"balance":N,"bet_id":"…"}  (balance after the debit)
//	      error bad_bet | betting_closed | insufficient_funds | login_required
//	other events: error "unknown event"
//
// Error responses are {"reason":"…"}; the reasons are the Reason*
// constants. bad_bet: the payload is not a JSON object, or amount is not a
// positive JSON integer ≤ Config.MaxBet (1,000,000), or pick is neither
// "high" nor "low". Calls after Close fail with gRPC UNAVAILABLE; a call
// without a Call with INVALID_ARGUMENT.
//
// # Idempotency and memory
//
// The ledger applies a bet's idempotency key (Call.idempotency_key,
// opaque, scoped by player) at most once: the key's first answer, an error
// too, is stored as sent, and every later call with that key gets the
// same bytes back (same bet_id, same balance figure) and moves no money.
// Check, debit and record happen under the ledger's lock, so concurrent
// retries of one key debit once. Keys are forgotten Config.KeyTTL (10m)
// after they were stored, and at most Config.MaxKeys (100,000, about
// 300 bytes each: ~30 MB) are kept: past the cap the oldest is forgotten
// first (Stats.KeysEvictedEarly counts those), and a retry of a forgotten
// key would be applied again, so KeyTTL must outlast every resend. Joins
// and leaves are deduplicated the same way (scoped by topic and player,
// in a second cache with the same bounds), so a retried join never counts
// a player twice. Balances are never forgotten (one per authenticated
// player); a table lives while it has players, and a round keeps one
// stake per player and pick, whatever the number of bets.
//
// Known limits: state lives in memory only (a restart resets balances,
// and players still joined get betting_closed until they rejoin); a join
// the game admitted whose answer never reached phxgate (it timed out)
// gets no Leave, so its table keeps rolling empty rounds.
//
// # Concurrency
//
// Game is safe for concurrent use: calls for different tables and players
// run in parallel. Locks, in the order they may be taken:
//
//	Game.mu    (tables, join and leave keys)  →  table.mu
//	ledger.mu  (balances, bet keys)           →  table.mu
//
// Game.mu and ledger.mu are never held together. Each table with players
// has one goroutine, its round loop, owned by the Game: it ends when the
// table's last player leaves or at Close, which waits for every loop. A
// loop sends its results itself, retrying transient failures with backoff
// within Config.BroadcastAttempts × Config.BroadcastTimeout plus the
// waits, so an unreachable Gateway delays a roll by that much at most and
// never stops the game. The Clock, the roller and the Broadcaster are
// injectable (Options) so tests drive rounds without sleeping.
package game
