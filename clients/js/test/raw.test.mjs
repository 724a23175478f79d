// Ref bookkeeping that phoenix.js never exercises but other Phoenix clients
// do, with a raw ws client (PROTOCOL.md §2.1, §3.1): a join whose join_ref
// differs from its ref, and V1 clients that send no join_ref at all.

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {V1, V2, reply} from "../lib/codec.mjs"
import {Recorder} from "../lib/recorder.mjs"
import {gatewayURL, uniqueTopic, assertExact, assertWellFormed} from "../lib/harness.mjs"
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
  const send = (...f) => ws.send(codec.clientFrame(...f))
  return {rec, ws, send}
}

const isReply = (topic, ref) => m => m.topic === topic && m.event === "phx_reply" && m.ref === ref

describe("raw V2 client", () => {
  test("a join's join_ref, not its ref, names the channel", T_OPTS, async t => {
    const {rec, send} = await rawClient(t, V2, "?vsn=2.0.0", "raw V2")
    const topic = uniqueTopic()
    send("5", "6", topic, "phx_join", {})
    assertExact(await rec.waitIn(isReply(topic, "6")), reply(V2, "5", "6", topic, "ok", {}), "join reply")
    send("5", "7", topic, "echo", {a: 1})
    assertExact(await rec.waitIn(isReply(topic, "7")), reply(V2, "5", "7", topic, "ok", {a: 1}), "echo with the join_ref")
    send("5", "8", topic, "crash", {})
    const err = await rec.waitIn(m => m.topic === topic && m.event === "phx_error")
    assertExact(err, V2.frame("5", "5", topic, "phx_error", {reason: "channel_crash"}), "phx_error carries the join_ref twice")
    assertWellFormed(rec)
  })
})

describe("raw V1 client without join_ref", () => {
  test("replies echo the ref; phx_close and phx_error carry ref null", wsOnly("V1 frames are ndjson lines starting with {, which a long-poll server reads as base64 (PROTOCOL.md §1.2)", T_OPTS), async t => {
    const {rec, send} = await rawClient(t, V1, "?vsn=1.0.0", "raw V1")
    const topic = uniqueTopic()
    send(undefined, "1", topic, "phx_join", {})
    assertExact(await rec.waitIn(isReply(topic, "1")), reply(V1, null, "1", topic, "ok", {}), "join reply")
    send(undefined, "2", topic, "echo", {b: 2})
    assertExact(await rec.waitIn(isReply(topic, "2")), reply(V1, null, "2", topic, "ok", {b: 2}), "echo reply")
    send(undefined, "3", topic, "crash", {})
    const err = await rec.waitIn(m => m.topic === topic && m.event === "phx_error")
    // The socket keeps the join's join_ref, which the client never sent.
    assertExact(err, V1.frame(null, null, topic, "phx_error", {reason: "channel_crash"}), "phx_error ref")

    send(undefined, "4", topic, "phx_join", {})
    assertExact(await rec.waitIn(isReply(topic, "4")), reply(V1, null, "4", topic, "ok", {}), "rejoin reply")
    send(undefined, "5", topic, "phx_leave", {})
    const lr = await rec.waitIn(isReply(topic, "5"))
    assertExact(lr, reply(V1, null, "5", topic, "ok", {}), "leave reply")
    const close = await rec.waitIn(m => m.topic === topic && m.event === "phx_close")
    assertExact(close, V1.frame(null, null, topic, "phx_close", {}), "phx_close ref")
    assert.ok(close.seq > lr.seq)
    assertWellFormed(rec)
  })
})
