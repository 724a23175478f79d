// Drain at shutdown (DESIGN.md §9, PROTOCOL.md §1.1): SIGTERM closes every
// socket with 1012 and phoenix.js reconnects on its own. This needs a gateway
// of its own that it may stop, so it lives outside test/ and runs as a
// separate phase (conformance_test.go passes PHXGATE_PID).

import {test} from "node:test"
import assert from "node:assert/strict"
import {VSNS} from "../lib/codec.mjs"
import {connect, join, waitUntil} from "../lib/harness.mjs"

test("SIGTERM drains every socket with 1012 and phoenix.js reconnects", {timeout: 30000}, async t => {
  const pid = Number(process.env.PHXGATE_PID)
  assert.ok(pid > 0, "PHXGATE_PID must name the gateway this test may stop")
  const clients = []
  for (const vsn of VSNS) {
    const c = await connect(t, vsn, {reconnectAfterMs: () => 50}, {name: `drain ${vsn}`})
    const ch = c.socket.channel(c.topic)
    assert.equal((await join(ch)).status, "ok")
    clients.push({...c, ch})
  }
  process.kill(pid, "SIGTERM")
  for (const c of clients) {
    const close = await c.rec.waitEvent("close", {timeoutMs: 15000})
    assert.equal(close.code, 1012, `close code ${close.code} (want 1012, service restart)\n${c.rec.dump()}`)
    // phoenix.js errors the channel and tries to connect again by itself.
    await waitUntil(() => c.ch.state === "errored", {what: "the channel to be errored"})
    await c.rec.waitFor(e => e.dir === "event" && e.type === "connect" && e.seq > close.seq, {what: "a reconnect attempt"})
  }
})
