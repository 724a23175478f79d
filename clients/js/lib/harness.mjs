// Shared set-up for the conformance tests: where the gateway is, a phoenix.js
// Socket wired to a recording transport, and promise wrappers for pushes.

import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import {Socket, LongPoll} from "phoenix"
import {codecFor, VSNS} from "./codec.mjs"
import {Recorder, recordingTransport, recordingLongPoll, LONGPOLL, describe, DEFAULT_WAIT_MS} from "./recorder.mjs"

export {DEFAULT_WAIT_MS, LONGPOLL}

// transportVsns are the serializers a phoenix.js scenario runs with. Over
// long-poll only V2: phoenix.js 1.8.16 sends each V1 frame as an ndjson
// line starting with "{", which Phoenix (and phxgate) read as base64 of a
// binary frame (PROTOCOL.md §1.2), so V1 cannot work over long-poll.
export const transportVsns = LONGPOLL ? VSNS.filter(v => v.startsWith("2.")) : VSNS

// wsOnly marks a test that cannot apply over long-poll, with why; node
// reports it as skipped with the reason.
export function wsOnly(why, opts = {}) {
  return LONGPOLL ? {...opts, skip: `WebSocket only: ${why}`} : opts
}

// transportFor is the phoenix.js transport class recording into rec;
// longpoll overrides PHXGATE_TRANSPORT for one socket (mixed rooms).
export function transportFor(rec, longpoll = LONGPOLL) {
  return longpoll ? recordingLongPoll(rec, LongPoll) : recordingTransport(rec)
}

// gatewayURL is the socket endpoint without the transport suffix, as a
// phoenix.js app would configure it, e.g. ws://127.0.0.1:4000/socket.
export function gatewayURL() {
  const url = process.env.PHXGATE_URL
  if (!url) throw new Error("PHXGATE_URL is not set (e.g. ws://127.0.0.1:4000/socket); run the suite through `go test ./clients/js` or set it")
  return url.replace(/\/+$/, "")
}

// uniqueTopic keeps tests (and the V1/V2 runs, and parallel test files) from
// seeing each other's broadcasts on the shared gateway.
export function uniqueTopic(prefix = "room") {
  return `${prefix}:${randomBytes(6).toString("hex")}`
}

// connect opens a phoenix.js Socket for vsn with a recording transport and
// waits for the WebSocket to open (url: a gateway other than PHXGATE_URL;
// longpoll: true or false picks the transport of this socket whatever
// PHXGATE_TRANSPORT says).
// Reconnects and rejoins are fast so tests
// that provoke them finish quickly; tests override what they need.
export async function connect(t, vsn, opts = {}, {name = "socket", waitOpen = true, url, longpoll} = {}) {
  const codec = codecFor(vsn)
  const rec = new Recorder(codec, `${name} vsn=${vsn}`)
  const socket = new Socket(url ?? gatewayURL(), {
    transport: transportFor(rec, longpoll ?? LONGPOLL),
    reconnectAfterMs: () => 20,
    rejoinAfterMs: () => 50,
    ...codec.phoenixOptions(),
    ...opts,
  })
  socket.connect()
  // PHXGATE_JS_DUMP=1 prints every recorded frame of every socket.
  if (process.env.PHXGATE_JS_DUMP) t.after(() => { for (const l of rec.dump().split("\n")) t.diagnostic(l) })
  t.after(() => new Promise(resolve => {
    socket.disconnect(resolve)
  }))
  if (waitOpen) await rec.waitEvent("open", {what: `${name} to open`})
  return {socket, rec, codec, topic: uniqueTopic()}
}

// outcome turns a phoenix.js Push into a promise of {status, response}; the
// statuses are whatever the server replied, or "timeout".
export function outcome(push, statuses = ["ok", "error", "timeout"]) {
  return new Promise(resolve => {
    for (const s of statuses) push.receive(s, response => resolve({status: s, response}))
  })
}

// join calls channel.join() and waits for its first outcome.
export function join(channel, timeout) {
  return outcome(timeout === undefined ? channel.join() : channel.join(timeout))
}

// waitUntil polls cond until it is true (for phoenix.js state that changes
// without a frame, e.g. a channel state after a callback).
export async function waitUntil(cond, {timeoutMs = DEFAULT_WAIT_MS, every = 5, what = "condition"} = {}) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await cond()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise(r => setTimeout(r, every))
  }
}

// assertExact compares a recorded text frame with the expected bytes and,
// on mismatch, also shows the structural difference.
export function assertExact(entry, expected, msg = "frame bytes") {
  assert.equal(entry.binary, false, `${msg}: expected a text frame, got ${describe(entry)}`)
  if (entry.data !== expected) {
    let structural = ""
    try { assert.deepStrictEqual(JSON.parse(entry.data), JSON.parse(expected)); structural = " (structurally equal: only key order/formatting differ)" } catch { /* shown below */ }
    assert.fail(`${msg}${structural}\n  got:  ${entry.data}\n  want: ${expected}`)
  }
}

// assertStructural compares parsed JSON only (for frames whose bytes the
// protocol leaves open, e.g. objects extended by phxgate).
export function assertStructural(entry, expected, msg = "frame") {
  assert.equal(entry.binary, false, `${msg}: expected a text frame, got ${describe(entry)}`)
  assert.deepStrictEqual(JSON.parse(entry.data), JSON.parse(expected), `${msg}\n  got:  ${entry.data}\n  want: ${expected}`)
}

// assertWellFormed checks there were no server pings and every server frame
// recorded so far against the serializer's shape: V2 arrays of exactly 5, V1 objects with exactly
// event/payload/ref/topic in sorted order (never join_ref).
export function assertWellFormed(rec) {
  // Phoenix never pings; phoenix.js heartbeats instead (PROTOCOL.md §1.1).
  assert.deepEqual(rec.events("ping"), [], "the server must not send WebSocket pings")
  for (const e of rec.in) {
    if (e.binary) {
      assert.equal(rec.codec.name, "V2", `binary frame on a V1 socket: ${describe(e)}`)
      assert.ok(!e.msg.shapeError, `${e.msg.shapeError}: ${describe(e)}`)
      continue
    }
    assert.ok(!e.msg.shapeError, `${e.msg.shapeError}: ${describe(e)}`)
    if (rec.codec.name === "V1") assert.equal(e.msg.serverKeyError, null, `${e.msg.serverKeyError}: ${describe(e)}`)
  }
}

// isDecimalRef: phoenix.js refs are decimal strings (PROTOCOL.md §3.2).
export function isDecimalRef(r) {
  return typeof r === "string" && /^[0-9]+$/.test(r)
}

// inbound frames for one topic, optionally after a sequence number.
export function topicFrames(rec, topic, after = -1) {
  return rec.in.filter(e => e.seq > after && e.msg.topic === topic)
}
