// phoenix.js over LongPoll behind a load balancer without affinity: the
// Go side (conformance_test.go, phase longpoll-cluster) puts two gateways
// on one Redis behind a proxy that moves the polls to the other node every
// few GETs. A poll that reaches the node not holding its session gets 410,
// phoenix.js closes with 3410, starts a session on that node and rejoins
// with the last position it saw (channel params as a function), so every
// broadcast of the positioned channel arrives exactly once, in order.

import {test} from "node:test"
import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import {Socket, LongPoll} from "phoenix"
import WebSocket from "ws"
import {outcome, waitUntil} from "../lib/harness.mjs"

const T = {timeout: 60000}
const N = 40

function env(name) {
  const v = process.env[name]
  if (!v) throw new Error(`${name} is not set; run through \`go test ./clients/js -run 'TestConformancePhoenixJS/longpoll-cluster'\``)
  return v
}

test("long-poll through a round-robin proxy: every broadcast once, in order, across session losses", T, async t => {
  const topic = `room:lprr-${randomBytes(6).toString("hex")}`
  const direct = env("PHXGATE_URLS").split(",")
  // The publisher is a WebSocket client on node 0, straight.
  const pub = new Socket(direct[0], {transport: WebSocket})
  pub.connect()
  t.after(() => new Promise(resolve => pub.disconnect(resolve)))
  const chPub = pub.channel(topic, {})
  assert.equal((await outcome(chPub.join())).status, "ok")

  const lp = new Socket(env("PHXGATE_URL").replace(/\/+$/, ""), {transport: LongPoll, reconnectAfterMs: () => 20, rejoinAfterMs: () => 50})
  const closes = []
  lp.onClose(e => closes.push(e.code))
  lp.connect()
  t.after(() => new Promise(resolve => lp.disconnect(resolve)))
  let last = null
  const got = []
  const ch = lp.channel(topic, () => ({offset: last}))
  ch.on("shout", (p, ref) => {
    got.push(p.n)
    last = ref
  })
  const first = await new Promise((resolve, reject) => {
    ch.join().receive("ok", resolve).receive("error", reject)
  })
  assert.match(first.position, /^p:[^:]+:[0-9]+$/)
  last = first.position

  for (let n = 1; n <= N; n++) {
    assert.equal((await outcome(chPub.push("shout", {n}))).status, "ok", `shout ${n}`)
    await new Promise(resolve => setTimeout(resolve, 25)) // spread the shouts over several session losses
  }
  await waitUntil(() => got.length >= N, {what: `all ${N} shouts (got ${got.length})`, timeoutMs: 30000})
  // A moment for a duplicate to show, bounded by frames not time: one more
  // shout, and it must be the next one.
  assert.equal((await outcome(chPub.push("shout", {n: N + 1}))).status, "ok")
  await waitUntil(() => got.length >= N + 1, {what: "the last shout", timeoutMs: 30000})
  assert.deepEqual(got, Array.from({length: N + 1}, (_, i) => i + 1), "every shout exactly once, in order")
  const lost = closes.filter(c => c === 3410).length
  t.diagnostic(`sessions lost (3410): ${lost}`)
  assert.ok(lost >= 2, `the proxy should have moved the polls to the other node several times, saw ${lost} session losses`)
})
