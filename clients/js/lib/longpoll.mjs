// Helpers for phoenix.js over LongPoll against gateways that refuse it
// (longpoll-features/): a refused session, and the gateway's metrics.

import assert from "node:assert/strict"
import {connect} from "./harness.mjs"

// refusedLongPoll starts a phoenix.js socket over LongPoll that the gateway
// must refuse: every session start is answered {"status":403}, phoenix.js
// reports error 403 and closes with 1008 "forbidden", then retries. It
// waits for `attempts` such refusals, checks the socket never opened and
// returns the connection (still retrying; the test's cleanup disconnects).
export async function refusedLongPoll(t, opts, name, {attempts = 3, url} = {}) {
  const c = await connect(t, "2.0.0", {reconnectAfterMs: () => 50, ...opts}, {name, waitOpen: false, longpoll: true, url})
  for (let i = 0; i < attempts; i++) {
    const e = await c.rec.waitFor(x => x.dir === "event" && (x.type === "close" || x.type === "open") && x.conn === i,
      {what: `the end of attempt ${i + 1}`})
    assert.equal(e.type, "close", `${name}: attempt ${i + 1} must be refused\n${c.rec.dump()}`)
    assert.deepEqual({code: e.code, reason: e.reason}, {code: 1008, reason: "forbidden"}, `${name}: attempt ${i + 1}\n${c.rec.dump()}`)
    const err = c.rec.entries.find(x => x.dir === "event" && x.type === "error" && x.conn === i)
    assert.equal(err?.message, "403", `${name}: phoenix.js saw {"status":403}\n${c.rec.dump()}`)
  }
  assert.deepEqual(c.rec.events("open"), [], `${name}: the socket must never open\n${c.rec.dump()}`)
  assert.equal(c.socket.isConnected(), false)
  return c
}

// metric reads one sample from a gateway's Prometheus endpoint (admin is
// http://host:port); labels must match exactly the ones given. 0 when the
// series does not exist yet.
export async function metric(admin, name, labels = {}) {
  const res = await fetch(`${admin}/metrics`)
  assert.equal(res.status, 200)
  const text = await res.text()
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`)
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue
    const m = line.match(/^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/)
    if (!m || m[1] !== name) continue
    const have = m[2] ? m[2].split(",") : []
    if (want.every(w => have.includes(w))) return Number(m[3])
  }
  return 0
}

export function env(name) {
  const v = process.env[name]
  if (!v) throw new Error(`${name} is not set; run the longpoll-features phase through \`go test ./clients/js\``)
  return v.replace(/\/+$/, "")
}
