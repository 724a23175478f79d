// A frame-recording WebSocket transport for phoenix.js.
//
// phoenix.js calls `new opts.transport(url, protocols)`, sets `binaryType`
// and the `onopen`/`onmessage`/`onclose`/`onerror` properties, and calls
// `send`/`close`. A subclass of ws's WebSocket provides all of that (Node 20
// has no global WebSocket). The subclass records, per phoenix.js Socket and in
// wire order, every frame in both directions (text as string, binary as
// bytes) plus connection events (upgrade URL, offered and chosen subprotocol,
// negotiated extensions, close codes), so tests assert on exactly what went
// over the wire rather than on what phoenix.js made of it.

import {EventEmitter} from "node:events"
import WebSocket from "ws"
import {parseBinary} from "./codec.mjs"

export const DEFAULT_WAIT_MS = 5000

// An address nothing listens on, for simulated outages (see Recorder.offline).
const REFUSED_HOST = "127.0.0.1:1"

export class Recorder {
  // codec parses text frames (codec.mjs V1 or V2).
  constructor(codec, name = "socket") {
    this.codec = codec
    this.name = name
    this.entries = [] // {seq, conn, dir: "out"|"in"|"event", ...}
    this.conns = [] // one per transport instance: {url, protocols, ws}
    this.emitter = new EventEmitter()
    this.emitter.setMaxListeners(0)
    // While true, new connections go to an address that refuses them, so
    // phoenix.js keeps failing to reconnect until the test lets it through.
    this.offline = false
  }

  push(entry) {
    entry.seq = this.entries.length
    this.entries.push(entry)
    this.emitter.emit("entry", entry)
  }

  frames(dir) { return this.entries.filter(e => e.dir === dir) }
  get out() { return this.frames("out") }
  get in() { return this.frames("in") }
  events(type) { return this.entries.filter(e => e.dir === "event" && e.type === type) }

  // waitFor resolves with the first entry at or after `from` that matches pred,
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

  // waitIn waits for an inbound frame whose parsed message matches pred.
  waitIn(pred, opts = {}) {
    return this.waitFor(e => e.dir === "in" && !e.msg.shapeError && pred(e.msg, e), opts)
  }

  waitOut(pred, opts = {}) {
    return this.waitFor(e => e.dir === "out" && !e.msg.shapeError && pred(e.msg, e), opts)
  }

  waitEvent(type, opts = {}) {
    return this.waitFor(e => e.dir === "event" && e.type === type, {what: `event ${type}`, ...opts})
  }

  // inAfter lists inbound frames with seq in (after, before).
  between(after, before = Infinity, dir = "in") {
    return this.entries.filter(e => e.dir === dir && e.seq > after && e.seq < before)
  }

  dump(from = 0) {
    const lines = this.entries.slice(from).map(e => `  #${e.seq} c${e.conn} ${describe(e)}`)
    return `recorded (${this.name}, from #${from}):\n${lines.join("\n") || "  (nothing)"}`
  }
}

export function describe(e) {
  if (e.dir === "event") {
    const {seq: _s, conn: _c, dir: _d, ...rest} = e
    return `** ${JSON.stringify(rest)}`
  }
  const arrow = e.dir === "out" ? "->" : "<-"
  return e.binary ? `${arrow} binary ${Buffer.from(e.data).toString("hex")}` : `${arrow} ${e.data}`
}

// recordingTransport returns a WebSocket class bound to recorder, to pass as
// phoenix.js's `transport` option.
export function recordingTransport(recorder) {
  return class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      const conn = recorder.conns.length
      let target = url
      if (recorder.offline) {
        const u = new URL(url)
        u.host = REFUSED_HOST
        target = u.toString()
      }
      // ws offers permessage-deflate by default, as browsers do; the server
      // must decline it (PROTOCOL.md §1.1, compress: false).
      super(target, protocols)
      this.conn = conn
      recorder.conns.push({url, protocols, ws: this, blocked: recorder.offline})
      recorder.push({conn, dir: "event", type: "connect", url, protocols: protocols ?? null, blocked: recorder.offline})
      this.on("upgrade", res => {
        recorder.push({conn, dir: "event", type: "upgrade", status: res.statusCode,
          protocolHeader: res.headers["sec-websocket-protocol"] ?? null,
          extensionsHeader: res.headers["sec-websocket-extensions"] ?? null})
      })
      this.on("open", () => {
        recorder.push({conn, dir: "event", type: "open", protocol: this.protocol, extensions: this.extensions})
      })
      // An HTTP answer other than 101 (e.g. 401/403 from auth). A browser
      // fires error then close (1006), and phoenix.js schedules a reconnect;
      // terminate() makes ws do the same (destroying only the request would
      // leave the WebSocket CONNECTING forever and phoenix.js would never retry).
      this.on("unexpected-response", (_req, res) => {
        recorder.push({conn, dir: "event", type: "unexpected-response", status: res.statusCode,
          contentLength: res.headers["content-length"] ?? null})
        this.terminate()
      })
      this.on("message", (data, isBinary) => {
        recorder.push(inbound(recorder.codec, conn, data, isBinary))
      })
      this.on("ping", data => {
        recorder.push({conn, dir: "event", type: "ping", data: Buffer.from(data).toString("hex")})
      })
      this.on("close", (code, reason) => {
        recorder.push({conn, dir: "event", type: "close", code, reason: reason.toString()})
      })
      this.on("error", err => {
        recorder.push({conn, dir: "event", type: "error", message: err.message})
      })
    }

    send(data, ...rest) {
      recorder.push(outbound(recorder.codec, this.conn, data))
      return super.send(data, ...rest)
    }

    close(code, reason) {
      recorder.push({conn: this.conn, dir: "event", type: "client-close", code: code ?? null, reason: reason == null ? null : String(reason)})
      return super.close(code, reason)
    }
  }
}

function toBytes(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data.slice(0))
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength))
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data))
  throw new Error(`unexpected frame data ${typeof data}`)
}

function inbound(codec, conn, data, isBinary) {
  if (isBinary) {
    const bytes = toBytes(data)
    return {conn, dir: "in", binary: true, data: bytes, msg: parseBinary(bytes, false)}
  }
  const text = typeof data === "string" ? data : Buffer.from(toBytes(data)).toString("utf8")
  return {conn, dir: "in", binary: false, data: text, msg: codec.parse(text)}
}

function outbound(codec, conn, data) {
  if (typeof data === "string") return {conn, dir: "out", binary: false, data, msg: codec.parse(data)}
  const bytes = toBytes(data)
  return {conn, dir: "out", binary: true, data: bytes, msg: parseBinary(bytes, true)}
}

// LONGPOLL is true when the suite runs over phoenix.js's LongPoll transport
// (PHXGATE_TRANSPORT=longpoll, set by the conformance test's
// `longpoll-scenarios` phase).
export const LONGPOLL = process.env.PHXGATE_TRANSPORT === "longpoll"

// recordingLongPoll returns phoenix.js's LongPoll bound to recorder, with the
// same entries as recordingTransport where they exist over HTTP: connect
// (the URL phoenix.js gave, before it maps /websocket to /longpoll), open
// (the first 410), every message in and out (each ndjson line a frame),
// close and client-close. There is no upgrade, no ping and no binary in:
// a long-poll client only reads JSON strings. `terminate()` drops the
// session the way a lost network does (requests aborted, close 1006), so
// tests that cut a WebSocket cut a long-poll session alike.
export function recordingLongPoll(recorder, LongPoll) {
  return class RecordingLongPoll extends LongPoll {
    constructor(url, protocols) {
      const conn = recorder.conns.length
      super(url, protocols)
      this.conn = conn
      if (recorder.offline) {
        const u = new URL(this.pollEndpoint)
        u.host = REFUSED_HOST
        this.pollEndpoint = u.toString()
      }
      recorder.conns.push({url, protocols, ws: this, blocked: recorder.offline})
      recorder.push({conn, dir: "event", type: "connect", url, protocols: protocols ?? null, blocked: recorder.offline})
    }

    set onopen(fn) { this._onopen = fn }
    get onopen() {
      return ev => {
        recorder.push({conn: this.conn, dir: "event", type: "open", protocol: "", extensions: ""})
        return this._onopen(ev)
      }
    }
    set onmessage(fn) { this._onmessage = fn }
    get onmessage() {
      return ev => {
        recorder.push(inbound(recorder.codec, this.conn, ev.data, false))
        return this._onmessage(ev)
      }
    }
    set onclose(fn) { this._onclose = fn }
    get onclose() {
      return ev => {
        recorder.push({conn: this.conn, dir: "event", type: "close", code: ev.code, reason: ev.reason ?? ""})
        return this._onclose(ev)
      }
    }
    set onerror(fn) { this._onerror = fn }
    get onerror() {
      return err => {
        recorder.push({conn: this.conn, dir: "event", type: "error", message: String(err)})
        return this._onerror(err)
      }
    }

    send(data) {
      recorder.push(outbound(recorder.codec, this.conn, data))
      return super.send(data)
    }

    close(code, reason, wasClean) {
      recorder.push({conn: this.conn, dir: "event", type: "client-close", code: code ?? null, reason: reason == null ? null : String(reason)})
      return super.close(code, reason, wasClean)
    }

    terminate() {
      if (!this.isActive()) return
      this.stop(3) // SOCKET_STATES.closed: nothing of this session runs again
      this.emitClose(1006, "", false)
    }
  }
}
