// The core scenarios with the unmodified phoenix.js client over its LongPoll
// transport (PROTOCOL.md §1.2): connect, join, push and reply, broadcasts
// (to long-poll and WebSocket clients alike), leave, resume by position,
// and a session the server ended (3410 session_gone, reconnect, rejoin).
// In Node 20 phoenix.js's Ajax uses fetch.

import {test} from "node:test"
import assert from "node:assert/strict"
import {Socket, LongPoll} from "phoenix"
import WebSocket from "ws"
import {gatewayURL, uniqueTopic, outcome, waitUntil} from "../lib/harness.mjs"

const T = {timeout: 30000}

async function open(t, opts = {}) {
  const socket = new Socket(gatewayURL(), {transport: LongPoll, reconnectAfterMs: () => 20, rejoinAfterMs: () => 50, ...opts})
  const events = []
  socket.onOpen(() => events.push("open"))
  socket.onClose(e => events.push(`close:${e.code}`))
  socket.connect()
  t.after(() => new Promise(resolve => socket.disconnect(resolve)))
  await waitUntil(() => socket.isConnected(), {what: "the long-poll socket to open", timeoutMs: 10000})
  assert.equal(socket.transport, LongPoll)
  return {socket, events}
}

test("long-poll: join, push and reply, leave", T, async t => {
  const {socket} = await open(t)
  const ch = socket.channel(uniqueTopic(), {})
  const j = await outcome(ch.join())
  assert.deepEqual(j, {status: "ok", response: {}})
  const r = await outcome(ch.push("echo", {hello: "wörld", list: [1, 2]}))
  assert.deepEqual(r, {status: "ok", response: {hello: "wörld", list: [1, 2]}})
  // Several pushes in one tick go out in one POST; replies come in order.
  const many = await Promise.all([1, 2, 3, 4, 5].map(i => outcome(ch.push("echo", {i}))))
  assert.deepEqual(many.map(m => m.response.i), [1, 2, 3, 4, 5])
  const denied = await outcome(socket.channel(uniqueTopic(), {deny: true}).join())
  assert.deepEqual(denied, {status: "error", response: {reason: "denied"}})
  const left = await outcome(ch.leave())
  assert.equal(left.status, "ok")
  assert.equal(ch.state, "closed")
})

test("long-poll: broadcasts reach long-poll and WebSocket clients", T, async t => {
  const name = uniqueTopic()
  const lp = await open(t)
  const ws = new Socket(gatewayURL(), {transport: WebSocket})
  ws.connect()
  t.after(() => new Promise(resolve => ws.disconnect(resolve)))
  const got = {lp: [], ws: []}
  const chLP = lp.socket.channel(name, {})
  chLP.on("shout", p => got.lp.push(p))
  const chWS = ws.channel(name, {})
  chWS.on("shout", p => got.ws.push(p))
  assert.equal((await outcome(chLP.join())).status, "ok")
  assert.equal((await outcome(chWS.join())).status, "ok")
  assert.equal((await outcome(chWS.push("shout", {from: "ws"}))).status, "ok")
  assert.equal((await outcome(chLP.push("shout", {from: "lp"}))).status, "ok")
  await waitUntil(() => got.lp.length === 2 && got.ws.length === 2, {what: "both shouts on both clients", timeoutMs: 10000})
  assert.deepEqual(got.lp, [{from: "ws"}, {from: "lp"}])
  assert.deepEqual(got.ws, [{from: "ws"}, {from: "lp"}])
})

test("long-poll: resume by position replays what was missed", T, async t => {
  const name = uniqueTopic()
  const pub = await open(t)
  const chPub = pub.socket.channel(name, {})
  assert.equal((await outcome(chPub.join())).status, "ok")
  const first = await open(t)
  const chA = first.socket.channel(name, {offset: null})
  const j = await outcome(chA.join())
  assert.equal(j.status, "ok")
  assert.match(j.response.position, /^p:[^:]+:[0-9]+$/)
  await outcome(chA.leave())
  for (const n of [1, 2, 3]) assert.equal((await outcome(chPub.push("shout", {n}))).status, "ok")
  const second = await open(t)
  const got = []
  const chB = second.socket.channel(name, {offset: j.response.position})
  chB.on("shout", (p, ref) => got.push({n: p.n, ref}))
  const r = await outcome(chB.join())
  assert.equal(r.status, "ok")
  assert.equal(r.response.recovered, true)
  await waitUntil(() => got.length === 3, {what: "the three missed shouts", timeoutMs: 10000})
  assert.deepEqual(got.map(g => g.n), [1, 2, 3])
  for (const g of got) assert.match(g.ref, /^p:/)
})

test("long-poll: a session the server ended (expired) comes back: 3410, reconnect, rejoin", T, async t => {
  const {socket, events} = await open(t)
  const ch = socket.channel(uniqueTopic(), {})
  assert.equal((await outcome(ch.join())).status, "ok")
  // Stop polling (the transport's requests are aborted, as when a laptop
  // sleeps) and let the server expire the session (1.5 windows).
  const tr = socket.conn
  const poll = tr.poll
  tr.poll = () => {}
  for (const {req} of tr.reqs) req && req.abort()
  tr.reqs.clear()
  await new Promise(resolve => setTimeout(resolve, Number(process.env.PHXGATE_LONGPOLL_WINDOW_MS) * 2))
  tr.poll = poll
  tr.poll()
  await waitUntil(() => events.includes("close:3410"), {what: "close 3410 session_gone", timeoutMs: 10000})
  await waitUntil(() => socket.isConnected() && ch.state === "joined", {what: "the reconnect and rejoin", timeoutMs: 10000})
  const r = await outcome(ch.push("echo", {again: true}))
  assert.deepEqual(r, {status: "ok", response: {again: true}})
})
