// phoenix.js 1.6 (npm alias phoenix-1-6, pinned 1.6.16) over its LongPoll:
// releases before 1.7.0 send one POST per push without waiting for the
// previous one, with Content-Type application/json (the body is one
// message). Joining two channels in one tick makes two concurrent POSTs on
// one session; a gateway that refused the second (409) would make this
// client close 1011, reconnect, rejoin both in one tick again, and loop.
// Its LongPoll uses XMLHttpRequest, which Node lacks: lib/xhr.mjs is a
// small one over node:http, installed before the release is loaded, that
// sends each body 2 ms after its headers (as a real network often
// delivers them), so the POSTs of one tick overlap at the gateway.

import {test} from "node:test"
import assert from "node:assert/strict"
import {readFileSync} from "node:fs"
import {install, hooks, options} from "../lib/xhr.mjs"
import {gatewayURL, uniqueTopic, outcome, waitUntil} from "../lib/harness.mjs"

install()
options.bodyDelayMs = 2
const {Socket, LongPoll} = await import("phoenix-1-6")

const T = {timeout: 30000}

// watchPosts records the POSTs of this process: how many were in flight
// at once at most, their Content-Types and their answers.
function watchPosts(t) {
  const w = {inFlight: 0, maxInFlight: 0, types: new Set(), answers: []}
  const onRequest = r => {
    if (r.method !== "POST") return
    w.types.add(r.headers["Content-Type"])
    w.inFlight++
    w.maxInFlight = Math.max(w.maxInFlight, w.inFlight)
  }
  const onAnswer = a => {
    if (a.method !== "POST") return
    w.inFlight--
    w.answers.push(`${a.status} ${a.text}`)
  }
  hooks.onRequest.push(onRequest)
  hooks.onAnswer.push(onAnswer)
  t.after(() => {
    hooks.onRequest.splice(hooks.onRequest.indexOf(onRequest), 1)
    hooks.onAnswer.splice(hooks.onAnswer.indexOf(onAnswer), 1)
  })
  return w
}

async function open(t) {
  // Reconnects are quick, so a reconnect loop shows up as many opens
  // within the test.
  const socket = new Socket(gatewayURL(), {transport: LongPoll, reconnectAfterMs: () => 20, rejoinAfterMs: () => 50})
  const events = []
  socket.onOpen(() => events.push("open"))
  socket.onClose(e => events.push(`close:${e.code}`))
  socket.onError(e => events.push(`error:${e}`))
  socket.connect()
  t.after(() => new Promise(resolve => socket.disconnect(resolve)))
  await waitUntil(() => socket.isConnected(), {what: "the long-poll socket to open", timeoutMs: 10000})
  return {socket, events}
}

test("phoenix.js 1.6: the release under test", () => {
  // Its exports map hides package.json; it sits beside this suite's.
  const pkg = JSON.parse(readFileSync(new URL("../node_modules/phoenix-1-6/package.json", import.meta.url), "utf8"))
  assert.equal(pkg.version, "1.6.16")
})

test("phoenix.js 1.6 long-poll: two joins and many pushes in one tick, all answered, no reconnect", T, async t => {
  const posts = watchPosts(t)
  const {socket, events} = await open(t)
  const a = socket.channel(uniqueTopic(), {})
  const b = socket.channel(uniqueTopic(), {})
  // Both joins go out in this tick: two POSTs at once.
  const joins = await Promise.all([outcome(a.join()), outcome(b.join())])
  assert.deepEqual(joins, [{status: "ok", response: {}}, {status: "ok", response: {}}])
  // Eight pushes on both channels in one tick: sixteen POSTs, sent
  // without waiting for each other.
  const pushes = []
  for (let i = 0; i < 8; i++) {
    pushes.push(outcome(a.push("echo", {ch: "a", i})))
    pushes.push(outcome(b.push("echo", {ch: "b", i})))
  }
  const replies = await Promise.all(pushes)
  for (let i = 0; i < 8; i++) {
    assert.deepEqual(replies[2 * i], {status: "ok", response: {ch: "a", i}})
    assert.deepEqual(replies[2 * i + 1], {status: "ok", response: {ch: "b", i}})
  }
  // And again, joining two more channels and pushing on all four in one
  // tick.
  const c = socket.channel(uniqueTopic(), {})
  const d = socket.channel(uniqueTopic(), {})
  const more = await Promise.all([
    outcome(c.join()), outcome(d.join()),
    outcome(a.push("echo", {n: 1})), outcome(b.push("echo", {n: 2})),
  ])
  assert.deepEqual(more.map(m => m.status), ["ok", "ok", "ok", "ok"])
  await waitUntil(() => posts.inFlight === 0, {what: "every POST answered", timeoutMs: 10000})
  // The client really sent concurrent POSTs, as application/json (one
  // message each), and every one was answered {"status":200}.
  assert.ok(posts.maxInFlight >= 2, `at most ${posts.maxInFlight} POST in flight: the race was not exercised`)
  assert.deepEqual([...posts.types], ["application/json"])
  assert.deepEqual(posts.answers.filter(x => x !== `200 {"status":200}`), [], "POSTs not answered 200")
  assert.equal(posts.answers.length, 2 + 16 + 4)
  // One session for the whole test: no error, no close, no reconnect.
  assert.deepEqual(events, ["open"])
  assert.equal(socket.conn.readyState, 1)
})
