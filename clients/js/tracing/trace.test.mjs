// Tracing across phxgate and the dice game (tracing_test.go starts both
// exporting to an in-process OTLP receiver and checks the spans). Here:
// join a table, place one bet carrying the client's own W3C traceparent
// (PHXGATE_TRACEPARENT, a top-level "traceparent" key of the push payload)
// and one without.

import {test} from "node:test"
import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import {connect, join, outcome} from "../lib/harness.mjs"
import {token, uniquePlayer} from "../lib/jwt.mjs"

test("a traced bet and an untraced one", {timeout: 60000}, async t => {
  const traceparent = process.env.PHXGATE_TRACEPARENT
  assert.ok(traceparent, "PHXGATE_TRACEPARENT is not set; run through `go test ./clients/js -run Tracing`")
  const table = `table:${randomBytes(6).toString("hex")}`
  const s = await connect(t, "2.0.0", {params: {token: token(uniquePlayer("tracer"))}}, {name: "tracer"})
  const ch = s.socket.channel(table, {})
  const j = await join(ch)
  assert.equal(j.status, "ok", JSON.stringify(j))

  async function bet(payload) {
    for (;;) {
      const r = await outcome(ch.push("bet", payload))
      if (r.status === "error" && r.response.reason === "betting_closed") continue
      return r
    }
  }
  const traced = await bet({amount: 10, pick: "high", traceparent, tracestate: "phxgate=test"})
  assert.equal(traced.status, "ok", JSON.stringify(traced))
  const plain = await bet({amount: 20, pick: "low"})
  assert.equal(plain.status, "ok", JSON.stringify(plain))
})
