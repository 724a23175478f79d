// The bench backend through the third-party phoenix-channels client:
// echo {"body":B} → ok {"type":"echo","body":B} for any JSON B.

import {test} from "node:test"
import assert from "node:assert/strict"
import {connect, join, outcome, uniqueTopic, assertWellFormed, assertClientFrame} from "./lib/client.mjs"

test("bench: join ok, echo {body:B} → {type:'echo', body:B}", async t => {
  const {socket, rec} = await connect(t)
  const topic = uniqueTopic("bench")
  const ch = socket.channel(topic, {})
  assert.deepEqual(await join(ch), {status: "ok", response: {}})
  const bodies = ["hello", 42, -1.5e-7, true, null, [1, "two", {three: 3}], {nested: {list: []}}, "ünï©ødé ☃"]
  for (const body of bodies) {
    const from = rec.entries.length
    const push = ch.push("echo", {body})
    const res = await outcome(push)
    assert.deepEqual(res, {status: "ok", response: {type: "echo", body}}, `body ${JSON.stringify(body)}`)
    const out = await rec.waitOut(m => m.topic === topic && m.ref === push.ref, {from})
    assertClientFrame(out)
    // Structural: Phoenix would re-encode the response map with sorted keys
    // ({"body":…,"type":"echo"}); phxgate builds {"type":…,"body":…}.
    // PROTOCOL.md §2.4 leaves the order of payload keys open.
    const reply = await rec.waitIn(m => m.topic === topic && m.ref === push.ref, {from})
    assert.deepEqual(JSON.parse(reply.data), {event: "phx_reply", payload: {response: {type: "echo", body}, status: "ok"}, ref: push.ref, topic})
  }
  // A body missing altogether is null.
  assert.deepEqual(await outcome(ch.push("echo", {})), {status: "ok", response: {type: "echo", body: null}})
  assertWellFormed(rec)
})
