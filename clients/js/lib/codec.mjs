// Wire codecs for the conformance suite (PROTOCOL.md §2).
//
// Two jobs:
//  1. phoenix.js (1.8.16) only ships the V2 serializer (serializer.js): `vsn`
//     changes the URL query, not the framing. To drive a V1 connection with the
//     unmodified client we hand its Socket an `encode`/`decode` pair that speaks
//     the V1 object format (`v1PhoenixOptions`). Everything else in phoenix.js
//     (refs, join_refs, channel state machine, timers) is untouched.
//  2. Tests build the exact bytes a Phoenix 1.8.12 server would send
//     (`frame`, `reply`) and parse every recorded frame (`parse`).

const V1_SERVER_KEYS = ["event", "payload", "ref", "topic"]

// encodeV1 is the V1 client encoding. Like the phoenix.js 1.3+ V1 clients it
// sends join_ref when it has one; phoenix.js leaves it undefined on heartbeats,
// so JSON.stringify drops the key there.
function encodeV1(msg, callback) {
  if (msg.payload instanceof ArrayBuffer) {
    throw new Error("V1 has no binary framing (PROTOCOL.md §2.1)")
  }
  const {topic, event, payload, ref, join_ref} = msg
  return callback(JSON.stringify({topic, event, payload, ref, join_ref}))
}

// decodeV1 hands phoenix.js what its own decoder would: V1 server frames carry
// no join_ref, which phoenix.js treats as "for whatever join is current".
function decodeV1(raw, callback) {
  const m = JSON.parse(raw)
  return callback({join_ref: m.join_ref, ref: m.ref, topic: m.topic, event: m.event, payload: m.payload})
}

// Socket options that make phoenix.js speak V1 (see the file comment).
export function v1PhoenixOptions() {
  return {vsn: "1.0.0", encode: encodeV1, decode: decodeV1}
}

export const VSNS = ["1.0.0", "2.0.0"]

export function codecFor(vsn) {
  return vsn.startsWith("1.") ? V1 : V2
}

// A parsed frame: {join_ref, ref, topic, event, payload, binary, kind}.
// `shapeError` is set when the frame is not what a Phoenix server may send.
export const V2 = {
  vsn: "2.0.0",
  name: "V2",
  phoenixOptions() { return {vsn: "2.0.0"} },
  // frame returns the exact text a Phoenix server sends for this message.
  frame(join_ref, ref, topic, event, payload) {
    return JSON.stringify([join_ref, ref, topic, event, payload])
  },
  // clientFrame is what phoenix.js's own serializer sends.
  clientFrame(join_ref, ref, topic, event, payload) {
    return JSON.stringify([join_ref, ref, topic, event, payload])
  },
  parse(text) {
    let v
    try { v = JSON.parse(text) } catch (e) { return {shapeError: `not JSON: ${e.message}`} }
    if (!Array.isArray(v)) return {shapeError: "V2 frame is not an array"}
    const [join_ref, ref, topic, event, payload] = v
    const out = {join_ref, ref, topic, event, payload, binary: false}
    if (v.length !== 5) out.shapeError = `V2 frame has ${v.length} elements, want 5`
    return out
  },
}

export const V1 = {
  vsn: "1.0.0",
  name: "V1",
  phoenixOptions: v1PhoenixOptions,
  // The server never sends join_ref in V1 (PROTOCOL.md §2.1): join_ref is
  // accepted here only so call sites read the same for both versions.
  frame(_join_ref, ref, topic, event, payload) {
    return JSON.stringify({event, payload, ref, topic})
  },
  clientFrame(join_ref, ref, topic, event, payload) {
    const o = {topic, event, payload, ref}
    if (join_ref !== undefined) o.join_ref = join_ref
    return JSON.stringify(o)
  },
  parse(text) {
    let v
    try { v = JSON.parse(text) } catch (e) { return {shapeError: `not JSON: ${e.message}`} }
    if (v === null || typeof v !== "object" || Array.isArray(v)) return {shapeError: "V1 frame is not an object"}
    const out = {join_ref: v.join_ref, ref: v.ref, topic: v.topic, event: v.event, payload: v.payload, binary: false}
    const keys = Object.keys(v)
    // Only meaningful for server frames; client frames have their own order.
    out.serverKeyError = keys.join(",") === V1_SERVER_KEYS.join(",") ? null : `V1 server frame keys are [${keys}], want [${V1_SERVER_KEYS}]`
    return out
  },
}

// reply builds the payload of a phx_reply exactly as Phoenix encodes it:
// {"response":…,"status":…} in that key order (PROTOCOL.md §2.4).
export function replyPayload(status, response) {
  return {response, status}
}

export function reply(codec, join_ref, ref, topic, status, response) {
  return codec.frame(join_ref, ref, topic, "phx_reply", replyPayload(status, response))
}

// ---- V2 binary frames (PROTOCOL.md §2.3) ----

const enc = new TextEncoder()
const dec = new TextDecoder()

function concat(parts) {
  const len = parts.reduce((n, p) => n + p.byteLength, 0)
  const out = new Uint8Array(len)
  let off = 0
  for (const p of parts) { out.set(p, off); off += p.byteLength }
  return out
}

function str(s) { return enc.encode(s == null ? "" : String(s)) }

// binaryClientPush: kind 0 with a ref field, what phoenix.js sends.
export function binaryClientPush(join_ref, ref, topic, event, payload) {
  const f = [str(join_ref), str(ref), str(topic), str(event)]
  return concat([Uint8Array.of(0, ...f.map(b => b.byteLength)), ...f, new Uint8Array(payload)])
}

// binaryReply: kind 1, what the server sends for a reply with a binary response.
export function binaryReply(join_ref, ref, topic, status, payload) {
  const f = [str(join_ref), str(ref), str(topic), str(status)]
  return concat([Uint8Array.of(1, ...f.map(b => b.byteLength)), ...f, new Uint8Array(payload)])
}

// binaryBroadcast: kind 2, no refs at all.
export function binaryBroadcast(topic, event, payload) {
  const f = [str(topic), str(event)]
  return concat([Uint8Array.of(2, ...f.map(b => b.byteLength)), ...f, new Uint8Array(payload)])
}

// parseBinary decodes any of the three server kinds (and the client kind 0
// when fromClient is set, which has a ref field the server push lacks).
export function parseBinary(bytes, fromClient) {
  const b = bytes
  const kind = b[0]
  const fields = (n, start) => {
    const lens = Array.from(b.subarray(start, start + n))
    let off = start + n
    const vals = lens.map(l => { const s = dec.decode(b.subarray(off, off + l)); off += l; return s })
    return {vals, rest: b.subarray(off)}
  }
  if (kind === 0 && fromClient) {
    const {vals: [join_ref, ref, topic, event], rest} = fields(4, 1)
    return {kind, join_ref, ref, topic, event, payload: rest, binary: true}
  }
  if (kind === 0) {
    const {vals: [join_ref, topic, event], rest} = fields(3, 1)
    return {kind, join_ref, ref: null, topic, event, payload: rest, binary: true}
  }
  if (kind === 1) {
    const {vals: [join_ref, ref, topic, status], rest} = fields(4, 1)
    return {kind, join_ref, ref, topic, event: "phx_reply", payload: {status, response: rest}, binary: true}
  }
  if (kind === 2) {
    const {vals: [topic, event], rest} = fields(2, 1)
    return {kind, join_ref: null, ref: null, topic, event, payload: rest, binary: true}
  }
  return {kind, binary: true, shapeError: `unknown binary kind ${kind}`}
}

export function hex(bytes) {
  return Buffer.from(bytes).toString("hex")
}
