// The example dice game (backends/examples/dice) behind phxgate over real
// gRPC, played with the unmodified phoenix.js client. conformance_test.go's
// dice phase starts the game (1 s betting window) and a gateway with
// auth.required, `table:*` on grpc://<game> and the Gateway API the game
// broadcasts round results through.

import {test} from "node:test"
import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import {connect, join, outcome, waitUntil} from "../lib/harness.mjs"
import {token, uniquePlayer} from "../lib/jwt.mjs"

const T_OPTS = {timeout: 60000}

test("join, bet, round_result, balances right; a resent bet applies once", T_OPTS, async t => {
  const table = `table:${randomBytes(6).toString("hex")}`
  const alice = uniquePlayer("alice"), bob = uniquePlayer("bob")
  const a = await connect(t, "2.0.0", {params: {token: token(alice)}}, {name: "alice"})
  const b = await connect(t, "2.0.0", {params: {token: token(bob)}}, {name: "bob"})
  const ca = a.socket.channel(table, {}), cb = b.socket.channel(table, {})
  const results = []
  ca.on("round_result", p => results.push(p))

  const ja = await join(ca)
  assert.equal(ja.status, "ok", JSON.stringify(ja))
  assert.equal(ja.response.balance, 1000)
  assert.equal(typeof ja.response.round.id, "number")
  const jb = await join(cb)
  assert.equal(jb.status, "ok", JSON.stringify(jb))

  // Bet until one lands in an open window (a window may close between).
  async function bet(ch, payload) {
    for (;;) {
      const r = await outcome(ch.push("bet", payload))
      if (r.status === "error" && r.response.reason === "betting_closed") continue
      return r
    }
  }
  const key = `bet-${randomBytes(4).toString("hex")}`
  const first = await bet(ca, {amount: 100, pick: "high", idempotency_key: key})
  assert.equal(first.status, "ok", JSON.stringify(first))
  assert.equal(first.response.balance, 900)
  // The same bet resent with the same key (as after a reconnect): the
  // original answer, no second debit.
  const again = await outcome(ca.push("bet", {amount: 100, pick: "high", idempotency_key: key}))
  assert.deepEqual(again, first)
  const bobBet = await bet(cb, {amount: 50, pick: "low"})
  assert.equal(bobBet.status, "ok", JSON.stringify(bobBet))
  assert.equal(bobBet.response.balance, 950)
  const bad = await outcome(ca.push("bet", {amount: -3, pick: "high"}))
  assert.deepEqual(bad, {status: "error", response: {reason: "bad_bet"}})
  const broke = await bet(cb, {amount: 100000, pick: "low"})
  assert.deepEqual(broke, {status: "error", response: {reason: "insufficient_funds"}})

  // Two round results after the bets: the bets' round has been settled.
  const seen = results.length
  await waitUntil(() => results.length >= seen + 2, {timeoutMs: 20000, what: "two round_results"})
  let alicePaid = 0, bobPaid = 0
  for (const r of results) {
    assert.ok(r.roll >= 1 && r.roll <= 6, JSON.stringify(r))
    const pa = r.payouts[alice] ?? 0, pb = r.payouts[bob] ?? 0
    if (pa) assert.ok(pa === 200 && r.roll >= 4, `alice paid ${pa} on roll ${r.roll}`)
    if (pb) assert.ok(pb === 100 && r.roll <= 3, `bob paid ${pb} on roll ${r.roll}`)
    alicePaid += pa
    bobPaid += pb
  }

  // Balances as the game keeps them: a fresh join reports them.
  const a2 = await connect(t, "2.0.0", {params: {token: token(alice)}}, {name: "alice again"})
  const b2 = await connect(t, "2.0.0", {params: {token: token(bob)}}, {name: "bob again"})
  const ja2 = await join(a2.socket.channel(table, {}))
  const jb2 = await join(b2.socket.channel(table, {}))
  assert.equal(ja2.response.balance, 900 + alicePaid, JSON.stringify({ja2, results}))
  assert.equal(jb2.response.balance, 950 + bobPaid, JSON.stringify({jb2, results}))
})
