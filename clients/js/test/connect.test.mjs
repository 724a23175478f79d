// Connect-time behaviour (PROTOCOL.md §1.1): the URL phoenix.js builds,
// connect params, the authToken subprotocol, permessage-deflate, and vsn
// negotiation including the HTTP 403 refusal.

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import WebSocket from "ws"
import {V1, V2, reply} from "../lib/codec.mjs"
import {Recorder, recordingTransport} from "../lib/recorder.mjs"
import {connect, gatewayURL, assertExact, assertWellFormed, transportVsns, wsOnly, LONGPOLL} from "../lib/harness.mjs"

// Over long-poll (PHXGATE_TRANSPORT=longpoll) the phoenix.js scenarios run
// with V2 only (transportVsns); the upgrade-specific and raw WebSocket
// tests say why they are skipped.
const RAW = "a raw WebSocket probe; the long-poll ones are raw HTTP probes in gateway/longpoll_test.go (TestLongPollProbes, TestLongPollPhoenixSession)"

const T_OPTS = {timeout: 30000}

for (const vsn of transportVsns) {
  describe(`connect vsn=${vsn}`, () => {
    test("connect params are serialized into the upgrade URL and accepted", T_OPTS, async t => {
      const c = await connect(t, vsn, {params: {token: "abc", user: {id: 1}}})
      const [connectEv] = c.rec.events("connect")
      assert.equal(connectEv.url, `${gatewayURL()}/websocket?token=abc&user%5Bid%5D=1&vsn=${vsn}`)
      assert.equal(connectEv.protocols, null, "no subprotocol offered without authToken")
      const [open] = c.rec.events("open")
      assert.equal(open.protocol, "")
      // Accepted for real: a channel joins over it.
      const ch = c.socket.channel(c.topic)
      const res = await new Promise(resolve => ch.join().receive("ok", r => resolve({ok: r})).receive("error", r => resolve({error: r})))
      assert.deepEqual(res, {ok: {}})
      assertWellFormed(c.rec)
    })

    test("authToken: offered as a subprotocol, answered with `phoenix`", T_OPTS, async t => {
      const c = await connect(t, vsn, {authToken: "1234"})
      const [connectEv] = c.rec.events("connect")
      assert.deepEqual(connectEv.protocols, ["phoenix", "base64url.bearer.phx.MTIzNA"])
      if (LONGPOLL) {
        // LongPoll takes the token from the subprotocol list and sends it
        // as X-Phoenix-AuthToken on every GET; no upgrade to answer.
        assert.equal(c.socket.conn.authToken, "1234")
        const rtt = await new Promise(resolve => c.socket.ping(resolve))
        assert.equal(typeof rtt, "number")
        assertWellFormed(c.rec)
        return
      }
      const [up] = c.rec.events("upgrade")
      assert.equal(up.protocolHeader, "phoenix", "Sec-WebSocket-Protocol answer")
      assert.equal(c.socket.conn.protocol, "phoenix", "ws.protocol on the transport")
      const rtt = await new Promise(resolve => c.socket.ping(resolve))
      assert.equal(typeof rtt, "number")
      assertWellFormed(c.rec)
    })

    test("permessage-deflate offered by the client is declined", wsOnly("no WebSocket extensions over HTTP", T_OPTS), async t => {
      const c = await connect(t, vsn)
      const [up] = c.rec.events("upgrade")
      assert.equal(up.extensionsHeader, null, "no Sec-WebSocket-Extensions in the answer")
      assert.equal(c.socket.conn.extensions, "")
    })
  })
}

// rawOpen connects without phoenix.js to /websocket with the given query and
// resolves with the recorder once it opens or is refused.
async function rawOpen(t, query, codec = V2) {
  const rec = new Recorder(codec, `raw ?${query}`)
  const WS = recordingTransport(rec)
  const url = `${gatewayURL()}/websocket${query === null ? "" : "?" + query}`
  const ws = new WS(url)
  ws.binaryType = "arraybuffer"
  t.after(() => ws.terminate())
  const ev = await rec.waitFor(e => e.dir === "event" && (e.type === "open" || e.type === "unexpected-response" || e.type === "error"), {what: "open or refusal"})
  return {rec, ws, ev}
}

describe("vsn negotiation", () => {
  const accepted = [
    {query: null, codec: V1, name: "missing vsn → V1"},
    {query: "vsn=1.0.0", codec: V1, name: "1.0.0 → V1"},
    {query: "vsn=2.0.0", codec: V2, name: "2.0.0 → V2"},
    // Phoenix matches "~> 1.0.0" and "~> 2.0.0": any patch level.
    {query: "vsn=1.0.7", codec: V1, name: "1.0.7 → V1"},
    {query: "vsn=2.0.3", codec: V2, name: "2.0.3 → V2"},
  ]
  for (const k of accepted) {
    test(`accepted: ${k.name}`, wsOnly(RAW, T_OPTS), async t => {
      const {rec, ws, ev} = await rawOpen(t, k.query, k.codec)
      assert.equal(ev.type, "open", rec.dump())
      // The serializer chosen shows in the heartbeat reply's framing.
      ws.send(k.codec.clientFrame(undefined, "5", "phoenix", "heartbeat", {}))
      const r = await rec.waitIn(m => m.ref === "5")
      assertExact(r, reply(k.codec, null, "5", "phoenix", "ok", {}), "heartbeat reply in the negotiated serializer")
      assertWellFormed(rec)
    })
  }

  for (const query of ["vsn=2.1.0", "vsn=abc", "vsn=3.0.0", "vsn=1.1.0", "vsn[]=x"]) {
    test(`refused with HTTP 403 and an empty body: ${query}`, wsOnly(RAW, T_OPTS), async t => {
      const res = await new Promise((resolve, reject) => {
        const ws = new WebSocket(`${gatewayURL()}/websocket?${query}`)
        t.after(() => ws.terminate())
        ws.on("open", () => reject(new Error(`${query}: the upgrade succeeded, want HTTP 403`)))
        ws.on("unexpected-response", (_req, r) => {
          let body = ""
          r.setEncoding("utf8")
          r.on("data", d => { body += d })
          r.on("end", () => resolve({status: r.statusCode, body}))
        })
        ws.on("error", () => { /* reported through unexpected-response or open */ })
      })
      assert.deepEqual(res, {status: 403, body: ""})
    })
  }
})

describe("malformed input and closes", () => {
  const cases = [
    {name: "V2 bad JSON", query: "vsn=2.0.0", codec: V2, send: "{not json"},
    {name: "V2 array shorter than 5", query: "vsn=2.0.0", codec: V2, send: '[null,"1","phoenix","heartbeat"]'},
    {name: "V2 unknown binary kind", query: "vsn=2.0.0", codec: V2, send: Uint8Array.from([7, 0, 0, 0, 0])},
    {name: "V1 object without ref", query: "vsn=1.0.0", codec: V1, send: '{"topic":"phoenix","event":"heartbeat","payload":{}}'},
    {name: "V1 non-object", query: "vsn=1.0.0", codec: V1, send: '[null,"1","phoenix","heartbeat",{}]'},
  ]
  for (const k of cases) {
    test(`${k.name} closes the socket with 1011 and an empty reason`, wsOnly(RAW, T_OPTS), async t => {
      const {rec, ws, ev} = await rawOpen(t, k.query, k.codec)
      assert.equal(ev.type, "open", rec.dump())
      ws.send(k.send)
      const close = await rec.waitEvent("close")
      assert.deepEqual({code: close.code, reason: close.reason}, {code: 1011, reason: ""}, rec.dump())
    })
  }

  for (const code of [1000, 4001]) {
    test(`a client close ${code} is echoed with the same code and an empty reason`, wsOnly("close codes are WebSocket frames; a long-poll client just stops polling", T_OPTS), async t => {
      const {rec, ws, ev} = await rawOpen(t, "vsn=2.0.0", V2)
      assert.equal(ev.type, "open", rec.dump())
      ws.close(code, "bye")
      const close = await rec.waitEvent("close")
      assert.deepEqual({code: close.code, reason: close.reason}, {code, reason: ""}, rec.dump())
    })
  }
})
