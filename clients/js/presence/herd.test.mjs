// A thundering herd: 2,000 players (phoenix.js, each its own socket and
// token) join one room within about a second. Every client converges to
// the same 2,000-key list; the diffs a client receives are batched per
// window, so the herd costs far fewer diffs than joins. Reports diffs and
// bytes per client.

import {test} from "node:test"
import assert from "node:assert/strict"
import WebSocket from "ws"
import {Socket, Presence} from "phoenix"
import {gatewayURL, waitUntil, uniqueTopic} from "../lib/harness.mjs"
import {token, uniquePlayer} from "../lib/jwt.mjs"

const PLAYERS = Number(process.env.PHXGATE_HERD || 2000)

// A transport that counts the bytes and presence frames a socket receives.
function countingTransport(stats) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols)
      this.addEventListener("message", e => {
        const s = typeof e.data === "string" ? e.data : ""
        stats.bytes += s.length
        if (s.includes('"presence_diff"')) stats.diffs++
        if (s.includes('"presence_state"')) stats.states++
      })
    }
  }
}

test(`${PLAYERS} players join one room within a second and converge`, {timeout: 120000}, async t => {
  const topic = uniqueTopic()
  const prefix = uniquePlayer("herd")
  // Connect everyone first, then send the 2,000 joins at once: the herd is
  // the joins, not the handshakes.
  const clients = await Promise.all(Array.from({length: PLAYERS}, (_, i) => new Promise(resolve => {
    const stats = {bytes: 0, diffs: 0, states: 0}
    const socket = new Socket(gatewayURL(), {
      transport: countingTransport(stats),
      params: {token: token(`${prefix}-${i}`)},
      reconnectAfterMs: () => 60000,
      heartbeatIntervalMs: 60000,
    })
    socket.onOpen(() => resolve({socket, stats}))
    socket.connect()
  })))
  t.after(() => Promise.all(clients.map(c => new Promise(r => c.socket.disconnect(r)))))
  const started = Date.now()
  const joins = clients.map(c => {
    const ch = c.socket.channel(topic, {})
    c.presence = new Presence(ch)
    return new Promise(resolve => ch.join(60000).receive("ok", () => resolve(true)).receive("error", r => resolve(r)).receive("timeout", () => resolve("timeout")))
  })
  const sentIn = Date.now() - started
  for (const [i, r] of (await Promise.all(joins)).entries()) assert.equal(r, true, `player ${i} join: ${JSON.stringify(r)}`)
  const joinedIn = Date.now() - started
  const count = p => { let n = 0; p.list(() => { n++ }); return n }
  await waitUntil(() => clients.every(c => count(c.presence) === PLAYERS), {what: `every client to list ${PLAYERS} players`, timeoutMs: 60000, every: 50})
  const convergedIn = Date.now() - started
  // The same list everywhere: the same keys, one meta each.
  const want = clients[0].presence.list((key, {metas}) => `${key}:${metas.map(m => m.phx_ref).join(",")}`).sort().join("|")
  for (const c of clients) {
    assert.equal(c.presence.list((key, {metas}) => `${key}:${metas.map(m => m.phx_ref).join(",")}`).sort().join("|"), want)
  }
  const diffs = clients.map(c => c.stats.diffs)
  const bytes = clients.map(c => c.stats.bytes)
  const avg = a => a.reduce((x, y) => x + y, 0) / a.length
  t.diagnostic(`herd of ${PLAYERS}: joins sent within ${sentIn} ms, all answered after ${joinedIn} ms, every list complete after ${convergedIn} ms; per client: ${avg(diffs).toFixed(1)} presence_diff (max ${Math.max(...diffs)}), ` +
    `${(avg(bytes) / 1024).toFixed(0)} KiB received (max ${(Math.max(...bytes) / 1024).toFixed(0)} KiB)`)
  assert.ok(avg(diffs) < PLAYERS / 4, `diffs are batched: ${avg(diffs)} per client for ${PLAYERS} joins`)
  assert.ok(clients.every(c => c.stats.states === 1), "one presence_state per join")
})
