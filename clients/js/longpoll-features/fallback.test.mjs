// phoenix.js `longPollFallbackMs` (PROTOCOL.md §1.2, socket.js
// connectWithFallback): a network that blocks WebSockets, stood for by a
// proxy of the Go test in front of the gateway that refuses
// (PHXGATE_REFUSE_URL: HTTP 403) or black-holes (PHXGATE_BLACKHOLE_URL:
// never answers) /socket/websocket and passes /socket/longpoll. phoenix.js
// tries the WebSocket first, falls back to LongPoll (at once on the error,
// or when the 500 ms timer runs out), joins, pushes and gets broadcasts
// from WebSocket clients, and remembers the fallback in its session store.

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {Socket, LongPoll} from "phoenix"
import {V2} from "../lib/codec.mjs"
import {Recorder, recordingTransport} from "../lib/recorder.mjs"
import {connect, join, outcome, waitUntil, uniqueTopic} from "../lib/harness.mjs"
import {token, uniquePlayer} from "../lib/jwt.mjs"
import {env} from "../lib/longpoll.mjs"

const T_OPTS = {timeout: 30000}
const FALLBACK_MS = 500
const FALLBACK_KEY = "phx:fallback:LongPoll"

// memoryStore is a sessionStorage for Node, where phoenix.js has none.
function memoryStore() {
  const m = new Map()
  return {getItem: k => m.get(k) ?? null, setItem: (k, v) => m.set(k, String(v)), removeItem: k => m.delete(k), map: m}
}

// fallbackSocket creates a phoenix.js Socket that tries a (recorded)
// WebSocket at url first, with longPollFallbackMs.
function fallbackSocket(t, url, store, player, name) {
  const rec = new Recorder(V2, name)
  const socket = new Socket(url, {
    transport: recordingTransport(rec),
    longPollFallbackMs: FALLBACK_MS,
    sessionStorage: store,
    params: {token: token(player)},
    reconnectAfterMs: () => 20,
    rejoinAfterMs: () => 50,
  })
  const opens = []
  socket.onOpen(() => opens.push(socket.transport))
  socket.connect()
  t.after(() => new Promise(resolve => socket.disconnect(resolve)))
  return {socket, rec, opens}
}

const modes = [
  {name: "refused (HTTP 403)", env: "PHXGATE_REFUSE_URL", refused: true},
  {name: "black-holed (never answered)", env: "PHXGATE_BLACKHOLE_URL", refused: false},
]

describe("longPollFallbackMs", () => {
  for (const mode of modes) {
    test(`WebSocket ${mode.name}: phoenix.js falls back to LongPoll, joins, pushes and gets broadcasts`, T_OPTS, async t => {
      const proxied = env(mode.env)
      const store = memoryStore()
      const player = uniquePlayer("fallback")
      const f = fallbackSocket(t, proxied, store, player, `fallback ${mode.name}`)
      await waitUntil(() => f.socket.isConnected(), {what: "the fallback to open", timeoutMs: 10000})
      assert.equal(f.socket.transport, LongPoll, "phoenix.js switched to LongPoll")
      assert.deepEqual(f.opens, [LongPoll], "the only open was over LongPoll")
      // The WebSocket was tried first, through the proxy, and never opened.
      const [attempt] = f.rec.events("connect")
      assert.ok(attempt && attempt.url.startsWith(`${proxied}/websocket?`), `a WebSocket attempt first\n${f.rec.dump()}`)
      assert.deepEqual(f.rec.events("open"), [], f.rec.dump())
      const answers = f.rec.events("unexpected-response").map(e => e.status)
      if (mode.refused) {
        assert.deepEqual(answers, [403], `the proxy's refusal\n${f.rec.dump()}`)
      } else {
        assert.deepEqual(answers, [], `no answer from a black hole\n${f.rec.dump()}`)
        assert.deepEqual(f.rec.events("upgrade"), [], f.rec.dump())
      }
      await waitUntil(() => store.getItem(FALLBACK_KEY) === "true", {what: `phoenix.js to remember the fallback (${FALLBACK_KEY})`})

      // Join, push, and broadcasts both ways with a WebSocket client that
      // reaches the gateway directly.
      const topic = uniqueTopic()
      const got = {lp: [], ws: []}
      const ch = f.socket.channel(topic, {})
      ch.on("shout", p => got.lp.push(p))
      assert.deepEqual(await join(ch), {status: "ok", response: {}})
      assert.deepEqual(await outcome(ch.push("echo", {via: "longpoll"})), {status: "ok", response: {via: "longpoll"}})
      const ws = await connect(t, "2.0.0", {params: {token: token(uniquePlayer("direct"))}}, {name: "direct", longpoll: false})
      const wch = ws.socket.channel(topic, {})
      wch.on("shout", p => got.ws.push(p))
      assert.deepEqual(await join(wch), {status: "ok", response: {}})
      assert.equal((await outcome(wch.push("shout", {from: "ws"}))).status, "ok")
      assert.equal((await outcome(ch.push("shout", {from: "lp"}))).status, "ok")
      await waitUntil(() => got.lp.length === 2 && got.ws.length === 2, {what: "both shouts on both clients"})
      assert.deepEqual(got.lp, [{from: "ws"}, {from: "lp"}])
      assert.deepEqual(got.ws, [{from: "ws"}, {from: "lp"}])

      // A new page of the same session (same store) goes to LongPoll at
      // once: no WebSocket attempt at all.
      const again = fallbackSocket(t, proxied, store, player, `remembered ${mode.name}`)
      await waitUntil(() => again.socket.isConnected(), {what: "the remembered fallback to open"})
      assert.equal(again.socket.transport, LongPoll)
      assert.deepEqual(again.rec.events("connect"), [], `no WebSocket attempt once the fallback is remembered\n${again.rec.dump()}`)
      const ach = again.socket.channel(topic, {})
      ach.on("shout", p => got.lp.push({again: p}))
      assert.deepEqual(await join(ach), {status: "ok", response: {}})
      assert.equal((await outcome(wch.push("shout", {from: "ws", n: 2}))).status, "ok")
      await waitUntil(() => got.lp.some(p => p.again?.n === 2), {what: "the broadcast on the remembered fallback"})
    })
  }
})
