// Set-up for the third-party client suite: the unmodified `phoenix-channels`
// package (a community Node port of an old phoenix.js, V1 JSON objects, on
// the `websocket` package's W3C client) wired to a frame recorder.
//
// phoenix-channels' Socket takes a `transport` option and calls
// `new transport(url)`, then sets onopen/onmessage/onclose/onerror and calls
// send/close and reads readyState. RecordingTransport wraps the very
// W3CWebSocket class the client would use by default (resolved from the
// client's own location, so it is the `websocket` version the client pulls
// in) and records every frame and connection event in wire order before
// passing it on untouched.

import assert from "node:assert/strict"
import {createRequire} from "node:module"
import {EventEmitter} from "node:events"
import {randomBytes} from "node:crypto"

const require = createRequire(import.meta.url)
const clientMain = require.resolve("phoenix-channels")
const {Socket, Channel, Presence} = require("phoenix-channels")
// The WebSocket class phoenix-channels uses when no transport is given.
const W3CWebSocket = createRequire(clientMain)("websocket").w3cwebsocket

export {Socket, Channel, Presence, W3CWebSocket}

export const DEFAULT_WAIT_MS = 5000

// gatewayURL is the socket endpoint without the transport suffix, as an app
// configures phoenix-channels (it appends "/websocket" itself).
export function gatewayURL() {
  const url = process.env.PHXGATE_URL
  if (!url) throw new Error("PHXGATE_URL is not set (e.g. ws://127.0.0.1:4000/socket); run the suite through `go test -run ThirdParty ./clients/js` or set it")
  return url.replace(/\/+$/, "")
}

// uniqueTopic keeps tests (and parallel test files) apart on one gateway.
export function uniqueTopic(prefix = "room") {
  return `${prefix}:${randomBytes(6).toString("hex")}`
}

export class Recorder {
  constructor(name = "socket") {
    this.name = name
    this.entries = [] // {seq, conn, dir: "out"|"in"|"event", ...}
    this.conns = []
    this.emitter = new EventEmitter()
    this.emitter.setMaxListeners(0)
  }

  push(entry) {
    entry.seq = this.entries.length
    entry.at = Date.now()
    this.entries.push(entry)
    this.emitter.emit("entry", entry)
  }

  get out() { return this.entries.filter(e => e.dir === "out") }
  get in() { return this.entries.filter(e => e.dir === "in") }
  events(type) { return this.entries.filter(e => e.dir === "event" && e.type === type) }

  // waitFor resolves with the first entry at or after `from` matching pred,
  // or rejects after timeoutMs with a dump of what was recorded.
  waitFor(pred, {from = 0, timeoutMs = DEFAULT_WAIT_MS, what = "a matching frame"} = {}) {
    for (let i = from; i < this.entries.length; i++) {
      if (pred(this.entries[i])) return Promise.resolve(this.entries[i])
    }
    return new Promise((resolve, reject) => {
      const onEntry = e => {
        if (e.seq >= from && pred(e)) { cleanup(); resolve(e) }
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${what}\n${this.dump(from)}`))
      }, timeoutMs)
      const cleanup = () => { clearTimeout(timer); this.emitter.off("entry", onEntry) }
      this.emitter.on("entry", onEntry)
    })
  }

  // waitIn / waitOut wait for a frame whose parsed message matches pred.
  waitIn(pred, opts = {}) {
    return this.waitFor(e => e.dir === "in" && e.msg && pred(e.msg, e), {what: "an inbound frame", ...opts})
  }
  waitOut(pred, opts = {}) {
    return this.waitFor(e => e.dir === "out" && e.msg && pred(e.msg, e), {what: "an outbound frame", ...opts})
  }
  waitEvent(type, opts = {}) {
    return this.waitFor(e => e.dir === "event" && e.type === type, {what: `event ${type}`, ...opts})
  }

  // frames on one topic, in either direction, optionally after a seq.
  topicFrames(topic, dir = "in", after = -1) {
    return this.entries.filter(e => e.dir === dir && e.seq > after && e.msg && e.msg.topic === topic)
  }

  dump(from = 0) {
    const lines = this.entries.slice(from).map(e => `  #${e.seq} c${e.conn} ${describe(e)}`)
    return `recorded (${this.name}, from #${from}):\n${lines.join("\n") || "  (nothing)"}`
  }
}

export function describe(e) {
  if (e.dir === "event") {
    const {seq: _s, conn: _c, dir: _d, at: _a, ...rest} = e
    return `** ${JSON.stringify(rest)}`
  }
  const arrow = e.dir === "out" ? "->" : "<-"
  return e.binary ? `${arrow} binary ${Buffer.from(e.data).toString("hex")}` : `${arrow} ${e.data}`
}

function parse(text) {
  try {
    const v = JSON.parse(text)
    return v !== null && typeof v === "object" && !Array.isArray(v) ? v : null
  } catch {
    return null
  }
}

// recordingTransport returns a transport class bound to recorder, to pass as
// phoenix-channels' `transport` option.
export function recordingTransport(recorder) {
  return class RecordingTransport {
    constructor(url, ...rest) {
      const conn = recorder.conns.length
      this.conn = conn
      this.onopen = null
      this.onmessage = null
      this.onclose = null
      this.onerror = null
      const ws = new W3CWebSocket(url, ...rest)
      this.ws = ws
      recorder.conns.push({url, ws: this})
      recorder.push({conn, dir: "event", type: "connect", url})
      ws.onopen = ev => {
        recorder.push({conn, dir: "event", type: "open", protocol: ws.protocol ?? null, extensions: ws.extensions ?? ""})
        // The server must not ping (Phoenix never does); the websocket
        // package answers pings itself, so watch its connection object.
        const c = ws._connection
        c?.on("ping", data => {
          recorder.push({conn, dir: "event", type: "ping", data: Buffer.from(data).toString("hex")})
        })
        // The W3C close event reports the client's own code and description
        // when the client started the close, and a stock description when
        // the server's close frame has no reason; record the server's close
        // frame itself (opcode 8) as it arrives.
        if (c && typeof c.processFrame === "function") {
          const processFrame = c.processFrame
          c.processFrame = function (frame) {
            if (frame.opcode === 0x08) {
              // WebSocketFrame has split the status code off the payload.
              recorder.push({conn, dir: "event", type: "server-close-frame",
                code: frame.closeStatus === -1 ? null : frame.closeStatus,
                reason: Buffer.from(frame.binaryPayload ?? []).toString("utf8")})
            }
            return processFrame.call(this, frame)
          }
        }
        this.onopen?.(ev)
      }
      ws.onmessage = ev => {
        const binary = typeof ev.data !== "string"
        recorder.push(binary
          ? {conn, dir: "in", binary, data: new Uint8Array(ev.data), msg: null}
          : {conn, dir: "in", binary, data: ev.data, msg: parse(ev.data)})
        this.onmessage?.(ev)
      }
      ws.onclose = ev => {
        recorder.push({conn, dir: "event", type: "close", code: ev.code, reason: ev.reason ?? ""})
        this.onclose?.(ev)
      }
      ws.onerror = ev => {
        recorder.push({conn, dir: "event", type: "error"})
        this.onerror?.(ev)
      }
    }

    get readyState() { return this.ws.readyState }
    get protocol() { return this.ws.protocol }
    get extensions() { return this.ws.extensions }

    send(data) {
      recorder.push({conn: this.conn, dir: "out", binary: typeof data !== "string", data, msg: typeof data === "string" ? parse(data) : null})
      return this.ws.send(data)
    }

    close(code, reason) {
      recorder.push({conn: this.conn, dir: "event", type: "client-close", code: code ?? null, reason: reason ?? null})
      return this.ws.close(code, reason)
    }
  }
}

// connect opens a phoenix-channels Socket with a recording transport and
// waits for the WebSocket to open. Rejoins and reconnects go through the
// client's reconnectAfterMs (it uses it for both); tests make it short.
export async function connect(t, opts = {}, {name = "socket", waitOpen = true} = {}) {
  const rec = new Recorder(name)
  const socket = new Socket(gatewayURL(), {
    transport: recordingTransport(rec),
    // First retry fast (so a crash rejoin is quick), then slower, so a
    // gateway that refuses the upgrade is not hammered (it rate-limits
    // handshakes per IP, and every test here connects from 127.0.0.1).
    reconnectAfterMs: tries => tries <= 1 ? 20 : 250,
    ...opts,
  })
  socket.connect()
  if (process.env.PHXGATE_JS_DUMP) t.after(() => { for (const l of rec.dump().split("\n")) t.diagnostic(l) })
  t.after(() => teardown(socket))
  if (waitOpen) await rec.waitEvent("open", {what: `${name} to open`})
  return {socket, rec, topic: uniqueTopic()}
}

// teardown disconnects and stops the client's own timers. phoenix-channels'
// disconnect() neither clears the heartbeat interval nor the channels' rejoin
// timers (it silences onclose first, so onConnClose never runs), so a
// disconnected socket would keep ticking.
export function teardown(socket) {
  socket.disconnect()
  clearInterval(socket.heartbeatTimer)
  socket.reconnectTimer.reset()
  for (const ch of socket.channels) ch.rejoinTimer.reset()
}

// outcome turns a Push into a promise of {status, response}; statuses are
// whatever the server replied, or "timeout".
export function outcome(push, statuses = ["ok", "error", "timeout"]) {
  return new Promise(resolve => {
    for (const s of statuses) push.receive(s, response => resolve({status: s, response}))
  })
}

export function join(channel, timeout) {
  return outcome(timeout === undefined ? channel.join() : channel.join(timeout))
}

// waitUntil polls cond (client state that changes without a frame).
export async function waitUntil(cond, {timeoutMs = DEFAULT_WAIT_MS, every = 5, what = "condition"} = {}) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await cond()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise(r => setTimeout(r, every))
  }
}

// v1 builds the exact V1 text frame Phoenix 1.8.12 sends: keys in sorted
// order event, payload, ref, topic; never join_ref (PROTOCOL.md §2.1, §2.4).
export function v1(topic, event, payload, ref) {
  return `{"event":${JSON.stringify(event)},"payload":${JSON.stringify(payload)},"ref":${JSON.stringify(ref)},"topic":${JSON.stringify(topic)}}`
}

// v1Reply is a phx_reply; response keys come before status (sorted).
export function v1Reply(topic, ref, status, response) {
  return `{"event":"phx_reply","payload":{"response":${JSON.stringify(response)},"status":${JSON.stringify(status)}},"ref":${JSON.stringify(ref)},"topic":${JSON.stringify(topic)}}`
}

// assertExact compares a recorded text frame with the expected bytes and,
// on mismatch, says whether they are at least structurally equal.
export function assertExact(entry, expected, msg = "frame bytes") {
  assert.ok(entry, `${msg}: no frame`)
  assert.equal(entry.binary, false, `${msg}: expected a text frame, got ${describe(entry)}`)
  if (entry.data !== expected) {
    let structural = ""
    try { assert.deepStrictEqual(JSON.parse(entry.data), JSON.parse(expected)); structural = " (structurally equal: only key order/formatting differ)" } catch { /* shown below */ }
    assert.fail(`${msg}${structural}\n  got:  ${entry.data}\n  want: ${expected}`)
  }
}

// assertWellFormed: no server pings, no binary frames (V1 is text only), and
// every server frame a V1 object with exactly event/payload/ref/topic in
// sorted order, never join_ref, with an object payload (PROTOCOL.md §2.1).
export function assertWellFormed(rec) {
  assert.deepEqual(rec.events("ping"), [], "the server must not send WebSocket pings")
  for (const e of rec.in) {
    assert.equal(e.binary, false, `binary frame on a V1 socket: ${describe(e)}`)
    assert.ok(e.msg, `not a JSON object: ${describe(e)}`)
    assert.deepEqual(Object.keys(e.msg), ["event", "payload", "ref", "topic"], `V1 server frame keys: ${describe(e)}`)
    // Payloads are objects (PROTOCOL.md §2.2); this client reads
    // payload.status on every frame and would throw on null.
    const p = e.msg.payload
    assert.ok(p !== null && typeof p === "object" && !Array.isArray(p), `payload is not an object: ${describe(e)}`)
  }
}

// assertClientFrame: what this client sends is a V1 object with exactly
// topic/event/payload/ref (no join_ref key at all) and a decimal string ref.
export function assertClientFrame(e) {
  assert.ok(e.msg, `not a JSON object: ${describe(e)}`)
  assert.deepEqual(Object.keys(e.msg), ["topic", "event", "payload", "ref"], `client frame keys: ${describe(e)}`)
  assert.match(e.msg.ref, /^[0-9]+$/, `client ref: ${describe(e)}`)
}
