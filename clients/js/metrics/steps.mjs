// The phoenix.js side of TestMetricsPhoenixJS (clients/js/metrics_test.go):
// one real phoenix.js Socket walks through connect, join, push, a
// rate-limited push, a refused join and disconnect, one step at a time, so
// the Go side can scrape /metrics before and after each.
//
// Protocol, one line each way: this script prints "step <name>" and waits
// for "go"; does the step (asserting what phoenix.js saw); prints
// "done <name>" and waits for "next". Anything wrong exits non-zero with the
// reason on stderr.
//
// Heartbeats and rejoins are pushed out of the run (heartbeatIntervalMs,
// rejoinAfterMs), so every frame the gateway counts is one a step sent.

import assert from "node:assert/strict"
import {createInterface} from "node:readline"
import {Socket} from "phoenix"
import WebSocket from "ws"

const url = process.env.PHXGATE_URL
if (!url) throw new Error("PHXGATE_URL is not set")
const STEP_MS = 10_000

const lines = createInterface({input: process.stdin})[Symbol.asyncIterator]()
async function expectLine(want) {
  const {value, done} = await lines.next()
  if (done || value.trim() !== want) throw new Error(`want "${want}" from the test, got ${done ? "EOF" : JSON.stringify(value)}`)
}

function within(what, promise) {
  let timer
  const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: nothing within ${STEP_MS} ms`)), STEP_MS) })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// outcome resolves with a Push's first answer: {status, response}.
function outcome(push) {
  return new Promise(resolve => {
    for (const s of ["ok", "error", "timeout"]) push.receive(s, response => resolve({status: s, response}))
  })
}

async function step(name, run) {
  console.log(`step ${name}`)
  await expectLine("go")
  await within(name, run())
  console.log(`done ${name}`)
  await expectLine("next")
}

const HOUR = 3_600_000
const socket = new Socket(url, {
  transport: WebSocket,
  heartbeatIntervalMs: HOUR,
  rejoinAfterMs: () => HOUR,
  reconnectAfterMs: () => HOUR,
})
const room = socket.channel("room:metrics", {})
let closed

await step("connect", () => new Promise(resolve => {
  socket.onOpen(resolve)
  socket.connect()
}))

await step("join", async () => {
  assert.deepEqual(await outcome(room.join()), {status: "ok", response: {}})
})

// The route puts echo in a class with a burst of 1: this push takes it.
await step("push", async () => {
  assert.deepEqual(await outcome(room.push("echo", {n: 1})), {status: "ok", response: {n: 1}})
})

await step("rate-limited push", async () => {
  const {status, response} = await outcome(room.push("echo", {n: 2}))
  assert.equal(status, "error")
  assert.equal(response.reason, "rate_limited", JSON.stringify(response))
  assert.ok(Number.isInteger(response.retry_after_ms) && response.retry_after_ms > 0, JSON.stringify(response))
})

// No route for nope:*; phoenix.js would retry the join after rejoinAfterMs
// (an hour here).
await step("refused join", async () => {
  const {status, response} = await outcome(socket.channel("nope:1", {}).join())
  assert.deepEqual({status, response}, {status: "error", response: {reason: "unmatched topic"}})
})

await step("disconnect", () => new Promise(resolve => {
  socket.onClose(event => { closed = event.code; resolve() })
  socket.disconnect(() => {}, 1000, "bye")
}))
assert.equal(closed, 1000)
process.exit(0)
