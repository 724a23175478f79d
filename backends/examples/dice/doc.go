// Command dice is an example game backend for phxgate: a dice table where
// players bet high (4..6) or low (1..3) on a roll every few seconds. It
// serves the GameBackend gRPC service phxgate calls for every join, event
// and leave, and calls phxgate's Gateway service to broadcast each round's
// result. The rules, replies and guarantees are in package game.
//
//	go run ./backends/examples/dice -listen 127.0.0.1:5000 -api 127.0.0.1:4002 [-window 3s]
//
// Flags: -listen (GameBackend address, default 127.0.0.1:5000), -api
// (phxgate's Gateway address, default 127.0.0.1:4002), -window (betting
// window, default 3s), -key-ttl and -max-keys (idempotency memory, default
// 10m and 100,000 keys), -v (debug logs). Logs are log/slog text on
// stderr. SIGINT or SIGTERM stops it gracefully: the gRPC server first
// (calls in flight get 5s), then the round loops, then the Gateway
// connection.
//
// # Running it with phxgate
//
// Route the game's topics to it and let phxgate serve the Gateway API on
// the address given as -api:
//
//	api_listen: "127.0.0.1:4002"
//	routes:
//	  - topic: "table:*"
//	    backend: "grpc://127.0.0.1:5000"
//
// Then, from phoenix.js with a token whose subject is the player:
//
//	const table = socket.channel("table:1", {});
//	table.on("round_result", (r) => console.log(r.round, r.roll, r.payouts));
//	table.join().receive("ok", ({balance, round}) => { /* … */ });
//	table.push("bet", {amount: 100, pick: "high", idempotency_key: "bet-1"})
//	  .receive("ok", ({balance, bet_id}) => { /* … */ })
//	  .receive("error", ({reason}) => { /* insufficient_funds, betting_closed, bad_bet */ });
//
// A client-supplied idempotency_key makes a bet resent after a reconnect
// apply once: phxgate turns it into the call's key "player:<id>:<key>".
//
// The Gateway API is being built in parallel with this example: while
// nothing answers at -api, the game logs each result it could not
// broadcast (after a few retries) and keeps playing; bets and balances
// work regardless.
package main
