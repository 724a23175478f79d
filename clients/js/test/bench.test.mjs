// websocket-bench / websocket-shootout compatibility (DESIGN.md §8, `bench`
// backend) with a raw ws client, not phoenix.js: the benchmark speaks V1
// without sending vsn and compares frames byte for byte.

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import {V1, V2} from "../lib/codec.mjs"
import {Recorder} from "../lib/recorder.mjs"
import {gatewayURL, assertExact, assertWellFormed} from "../lib/harness.mjs"
import {transportFor, wsOnly, LONGPOLL} from "../lib/harness.mjs"

const T_OPTS = {timeout: 30000}

async function rawClient(t, codec, query, name) {
  const rec = new Recorder(codec, name)
  // Over long-poll (PHXGATE_TRANSPORT=longpoll) the same client is
  // phoenix.js's LongPoll transport driven by hand: send() POSTs a line.
  const WS = transportFor(rec)
  const ws = new WS(`${gatewayURL()}/websocket${query}`)
  ws.binaryType = "arraybuffer"
  t.after(() => LONGPOLL ? ws.close(1000) : ws.terminate())
  await rec.waitEvent("open", {what: `${name} to open`})
  return {rec, ws}
}

// oneOf asserts the frame is byte-equal to one of the allowed encodings.
// The bench backend's objects are {"type":…,"body":…} in DESIGN.md §8 order;
// a Phoenix channel returning the same map would encode it with sorted keys
// ({"body":…,"type":…}). Both are accepted; anything else is not.
function oneOf(entry, candidates, msg) {
  if (candidates.includes(entry.data)) return
  let lastErr
  for (const c of candidates) {
    try { assertExact(entry, c, msg); return } catch (e) { lastErr = e }
  }
  throw lastErr
}

function benchObject(type, body) {
  return [JSON.stringify({type, body}), JSON.stringify({body, type})]
}

describe("bench backend, raw V1 client without vsn", () => {
  test("join with a null payload, echo and broadcast, exact bytes", wsOnly("V1 frames are ndjson lines starting with {, which a long-poll server reads as base64 (PROTOCOL.md §1.2)", T_OPTS), async t => {
    const topic = "bench:1"
    const a = await rawClient(t, V1, "", "bench A")
    const b = await rawClient(t, V1, "", "bench B")

    const joinFrame = '{"topic":"bench:1","event":"phx_join","payload":null,"ref":""}'
    for (const c of [a, b]) {
      c.ws.send(joinFrame)
      const r = await c.rec.waitIn(m => m.event === "phx_reply" && m.ref === "")
      assertExact(r, '{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"","topic":"bench:1"}', "bench join reply")
    }

    const body = "hello-" + randomBytes(4).toString("hex")
    a.ws.send(JSON.stringify({topic, event: "echo", payload: {body}, ref: "2"}))
    const er = await a.rec.waitIn(m => m.event === "phx_reply" && m.ref === "2")
    oneOf(er, benchObject("echo", body).map(o =>
      `{"event":"phx_reply","payload":{"response":${o},"status":"ok"},"ref":"2","topic":"bench:1"}`), "bench echo reply")

    const body2 = "bcast-" + randomBytes(4).toString("hex")
    a.ws.send(JSON.stringify({topic, event: "broadcast", payload: {body: body2}, ref: "3"}))
    const br = await a.rec.waitIn(m => m.event === "phx_reply" && m.ref === "3")
    oneOf(br, benchObject("broadcastResult", body2).map(o =>
      `{"event":"phx_reply","payload":{"response":${o},"status":"ok"},"ref":"3","topic":"bench:1"}`), "bench broadcast reply")
    const bcast = benchObject("broadcast", body2).map(o =>
      `{"event":"broadcast","payload":${o},"ref":null,"topic":"bench:1"}`)
    const isOurs = m => m.event === "broadcast" && m.payload && m.payload.body === body2
    const ba = await a.rec.waitIn(isOurs)
    oneOf(ba, bcast, "broadcast to the sender")
    assert.ok(ba.seq < br.seq, "the sender's broadcast precedes its reply")
    const bb = await b.rec.waitIn(isOurs)
    oneOf(bb, bcast, "broadcast to the other client")
    assertWellFormed(a.rec)
    assertWellFormed(b.rec)
  })
})

describe("bench backend, raw V2 client", () => {
  test("join with a null payload, echo, exact bytes", T_OPTS, async t => {
    const topic = "bench:v2-" + randomBytes(4).toString("hex")
    const a = await rawClient(t, V2, "?vsn=2.0.0", "bench V2")
    a.ws.send(JSON.stringify(["1", "1", topic, "phx_join", null]))
    const r = await a.rec.waitIn(m => m.event === "phx_reply" && m.ref === "1")
    assertExact(r, JSON.stringify(["1", "1", topic, "phx_reply", {response: {}, status: "ok"}]), "join reply")
    a.ws.send(JSON.stringify(["1", "2", topic, "echo", {body: "x"}]))
    const er = await a.rec.waitIn(m => m.event === "phx_reply" && m.ref === "2")
    oneOf(er, benchObject("echo", "x").map(o => `["1","2",${JSON.stringify(topic)},"phx_reply",{"response":${o},"status":"ok"}]`), "echo reply")
    assertWellFormed(a.rec)
  })
})
