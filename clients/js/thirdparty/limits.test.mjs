// Heartbeats under phxgate's default rate limits, seen by this client.
//
// Phoenix answers every heartbeat (PROTOCOL.md §3.1, "always"). phxgate's
// default limits (limits.* keys, on unless configured otherwise) answer a
// heartbeat over the limit with nothing at all (channels/guard.go
// allowHeartbeat). This client, like phoenix.js, treats an unanswered
// heartbeat as a dead connection: when the next one is due it closes with
// 1000 "hearbeat timeout", errors its channels and reconnects. So the limit
// must be per connection (10/s, burst 100 by default): anonymous sockets
// share their client IP's join and event buckets, and a shared heartbeat
// bucket would let one socket that heartbeats too fast make a well-behaved
// socket from the same address drop and reconnect.
//
// It runs only on a gateway of its own (PHXGATE_LIMITS_PHASE=1, set by the
// Go test's "limits" phase), so that its flood stays away from the main
// phase's sockets.

import {test} from "node:test"
import assert from "node:assert/strict"
import {connect, join, teardown, waitUntil, describe} from "./lib/client.mjs"

const skip = process.env.PHXGATE_LIMITS_PHASE ? false : "runs in the Go test's limits phase (PHXGATE_LIMITS_PHASE=1), on a gateway of its own"

test("heartbeat flood from one socket: another socket from the same address keeps getting its heartbeats answered", {
  skip,
}, async t => {
  const b = await connect(t, {heartbeatIntervalMs: 1000}, {name: "B (bystander)"})
  const ch = b.socket.channel(`room:bystander-${Date.now()}`, {})
  assert.equal((await join(ch)).status, "ok")
  const a = await connect(t, {heartbeatIntervalMs: 5}, {name: "A (flooder)"})
  const floodFrom = b.rec.entries.length
  try {
    // Watch B over four of its heartbeat intervals while A floods.
    await waitUntil(() => b.rec.out.filter(e => e.seq >= floodFrom && e.msg?.topic === "phoenix").length >= 4 ||
      b.rec.events("client-close").length > 0, {timeoutMs: 15000, every: 20, what: "four of B's heartbeats or B closing"})
  } finally {
    teardown(a.socket)
  }
  const bClose = b.rec.events("client-close")
  const aAnswered = a.rec.in.filter(e => e.msg?.topic === "phoenix").length
  const aSent = a.rec.out.filter(e => e.msg?.topic === "phoenix").length
  t.diagnostic(`A sent ${aSent} heartbeats, ${aAnswered} answered`)
  for (const e of b.rec.entries.slice(floodFrom)) t.diagnostic(`B #${e.seq} c${e.conn} ${describe(e)}`)
  assert.deepEqual(bClose, [], "B closed its connection: a heartbeat went unanswered")
  for (const hb of b.rec.out.filter(e => e.seq >= floodFrom && e.msg?.topic === "phoenix").slice(0, -1)) {
    assert.ok(b.rec.in.some(e => e.msg?.topic === "phoenix" && e.msg.ref === hb.msg.ref), `B's heartbeat ${hb.msg.ref} was not answered`)
  }
})
