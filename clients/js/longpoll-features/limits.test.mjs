// Limits with phoenix.js over LongPoll, answered as over WebSocket
// (DESIGN.md §5, README "Auth and limits", "Long-poll"): a join past
// joins_per_second gets {"reason":"rate_limited","retry_after_ms":N} and
// phoenix.js's retry gets in later; a push past its event class gets the
// same reply in its turn; limits.ip_max_conns counts long-poll sessions,
// the next session is refused with {"status":403} (counted in
// phxgate_longpoll_sessions_refused_total and
// phxgate_gateway_connect_refused_total), and an expired session gives its
// slot back.
//
// Gateways: the longpoll-features phase's main one (tokens, joins 5/s burst
// 20, chat 2/s burst 3, per player) and PHXGATE_CAP_URL (anonymous,
// ip_max_conns 3).

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import {reply} from "../lib/codec.mjs"
import {connect, join, outcome, waitUntil, assertExact, assertWellFormed} from "../lib/harness.mjs"
import {token, uniquePlayer} from "../lib/jwt.mjs"
import {refusedLongPoll, metric, env} from "../lib/longpoll.mjs"

const T_OPTS = {timeout: 30000}
const VSN = "2.0.0"

// The phase's limits (longpoll_features_test.go).
const CHAT_BURST = 3
const CHAT_PER_SECOND = 2
const JOIN_BURST = 20
const JOINS_PER_SECOND = 5
const IP_MAX_CONNS = 3

function suffix() { return randomBytes(6).toString("hex") }

function isReply(topic, ref) {
  return m => m.topic === topic && m.event === "phx_reply" && m.ref === ref
}

describe("rate limits over long-poll", () => {
  test("joins past the burst get rate_limited; phoenix.js's rejoin gets in later", T_OPTS, async t => {
    const c = await connect(t, VSN, {params: {token: token(uniquePlayer())}, rejoinAfterMs: () => 100}, {longpoll: true})
    const s = suffix()
    // All joins leave in one tick, so in one POST.
    const chans = Array.from({length: JOIN_BURST + 1}, (_, i) => c.socket.channel(`room:jl${s}-${i}`))
    const first = await Promise.all(chans.map(ch => join(ch)))
    assert.deepEqual(first.slice(0, JOIN_BURST), Array(JOIN_BURST).fill({status: "ok", response: {}}), c.rec.dump())
    const last = chans[JOIN_BURST]
    const res = first[JOIN_BURST]
    const N = res.response?.retry_after_ms
    assert.ok(res.status === "error" && res.response.reason === "rate_limited" && Number.isInteger(N) && N > 0 && N <= Math.ceil(1000 / JOINS_PER_SECOND),
      `join #${JOIN_BURST + 1}: ${JSON.stringify(res)}\n${c.rec.dump()}`)
    const out = await c.rec.waitOut(m => m.topic === last.topic && m.event === "phx_join")
    const J = out.msg.ref
    const r = await c.rec.waitIn(isReply(last.topic, J))
    assertExact(r, reply(c.codec, J, J, last.topic, "error", {reason: "rate_limited", retry_after_ms: N}), "refused join")
    // phoenix.js retries every 100 ms; once a token has refilled it is in.
    await waitUntil(() => last.state === "joined", {timeoutMs: 5000, what: `phoenix.js to join ${last.topic} on a retry\n${c.rec.dump()}`})
    assert.deepEqual(c.rec.events("close"), [], "the session stays up")
    assertWellFormed(c.rec)
  })

  test("a chat burst: the pushes past the class's burst get rate_limited, in push order", T_OPTS, async t => {
    const c = await connect(t, VSN, {params: {token: token(uniquePlayer())}}, {longpoll: true})
    const topic = `room:rl${suffix()}`
    const ch = c.socket.channel(topic, {})
    assert.deepEqual(await join(ch), {status: "ok", response: {}})
    const J = ch.joinRef()
    // echo is in the route's default class, chat in `chat` (burst 3, 2/s);
    // one tick, so one POST of eight lines.
    const pushes = [{event: "echo", payload: {n: 0}}]
    for (let i = 1; i <= 2 * CHAT_BURST; i++) pushes.push({event: "chat", payload: {n: i}})
    pushes.push({event: "echo", payload: {n: 99}})
    const sent = pushes.map(p => ({...p, push: ch.push(p.event, p.payload)}))
    const outcomes = await Promise.all(sent.map(p => outcome(p.push)))
    const refs = sent.map(p => p.push.ref)
    const replies = await Promise.all(refs.map(R => c.rec.waitIn(isReply(topic, R), {what: `reply ${R}`})))
    const order = c.rec.in.filter(e => e.msg.event === "phx_reply" && refs.includes(e.msg.ref)).map(e => e.msg.ref)
    assert.deepEqual(order, refs, `replies in push order\n${c.rec.dump()}`)
    let chat = 0
    for (const [i, p] of sent.entries()) {
      const R = refs[i]
      if (p.event === "echo") {
        assertExact(replies[i], reply(c.codec, J, R, topic, "ok", p.payload), `echo ${R}`)
        continue
      }
      chat++
      if (chat <= CHAT_BURST) {
        // Let through to the echo backend, which has no `chat` event.
        assertExact(replies[i], reply(c.codec, J, R, topic, "error", {reason: "unknown event"}), `chat #${chat} (within the burst)`)
        continue
      }
      const N = replies[i].msg.payload?.response?.retry_after_ms
      assert.ok(Number.isInteger(N) && N > 0 && N <= Math.ceil(1000 * CHAT_BURST / CHAT_PER_SECOND), `chat #${chat}: ${replies[i].data}`)
      assertExact(replies[i], reply(c.codec, J, R, topic, "error", {reason: "rate_limited", retry_after_ms: N}), `chat #${chat} (over the burst)`)
      assert.deepEqual(outcomes[i], {status: "error", response: {reason: "rate_limited", retry_after_ms: N}})
    }
    assert.equal(ch.state, "joined", "a refusal is a reply, not a channel error")
    assert.deepEqual(c.rec.events("close"), [], "the session stays up")
    assertWellFormed(c.rec)
  })
})

describe("connection caps over long-poll", () => {
  test(`limits.ip_max_conns (${IP_MAX_CONNS}) counts sessions: the next is refused with 403 until one expires`, T_OPTS, async t => {
    const url = env("PHXGATE_CAP_URL"), admin = env("PHXGATE_CAP_ADMIN")
    const refusedLP = () => metric(admin, "phxgate_longpoll_sessions_refused_total", {reason: "admission"})
    const refusedIP = () => metric(admin, "phxgate_gateway_connect_refused_total", {reason: "ip_conn_limit"})
    const before = {lp: await refusedLP(), ip: await refusedIP()}
    const held = []
    for (let i = 0; i < IP_MAX_CONNS; i++) {
      const c = await connect(t, VSN, {}, {name: `held ${i}`, longpoll: true, url})
      assert.equal((await join(c.socket.channel(`room:cap${suffix()}`, {}))).status, "ok")
      held.push(c)
    }
    // The fourth session, from the same address, is refused.
    const attempts = 3
    const c = await refusedLongPoll(t, {reconnectAfterMs: () => 100}, "over the cap", {attempts, url})
    const after = {lp: await refusedLP(), ip: await refusedIP()}
    assert.ok(after.lp - before.lp >= attempts, `sessions_refused_total{reason="admission"}: ${before.lp} → ${after.lp}`)
    assert.ok(after.ip - before.ip >= attempts, `connect_refused_total{reason="ip_conn_limit"}: ${before.ip} → ${after.ip}`)
    // Sessions and sockets share the cap: a WebSocket is refused too (429).
    const ws = await connect(t, VSN, {reconnectAfterMs: () => 60000}, {name: "websocket", waitOpen: false, longpoll: false, url})
    const wsRefused = await ws.rec.waitFor(e => e.dir === "event" && (e.type === "unexpected-response" || e.type === "open"), {what: "the WebSocket's answer"})
    assert.deepEqual([wsRefused.type, wsRefused.status], ["unexpected-response", 429], ws.rec.dump())
    ws.socket.disconnect()
    // A held session disconnects. phoenix.js tells the server nothing over
    // long-poll, so its slot comes back when the session expires (1.5
    // windows without a poll); then the refused one gets in.
    await new Promise(resolve => held[0].socket.disconnect(resolve))
    const opened = await c.rec.waitEvent("open", {timeoutMs: 10000})
    assert.ok(opened.conn >= attempts, c.rec.dump())
    const ch = c.socket.channel(`room:cap${suffix()}`, {})
    assert.equal((await join(ch)).status, "ok")
    assert.deepEqual(await outcome(ch.push("echo", {in: true})), {status: "ok", response: {in: true}})
    for (const h of held.slice(1)) assert.deepEqual(h.rec.events("close"), [], `${h.rec.name} was not disturbed`)
  })
})
