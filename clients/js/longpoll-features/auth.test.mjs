// Auth with phoenix.js over LongPoll (PROTOCOL.md §1.2, DESIGN.md §5): a
// token in the socket params or as `authToken` (phoenix.js sends it as the
// header X-Phoenix-AuthToken on every GET) connects the player, and its
// topics claim decides the joins; a missing or bad token is refused with
// {"status":403} (phoenix.js closes with 1008 and retries, never joining);
// an expired token ends the session, and phoenix.js gets back in with fresh
// params.
//
// Gateway: conformance_test.go's longpoll-features phase (auth.required,
// HS256 with PHXGATE_AUTH_SECRET, leeway 1 s).

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import {reply} from "../lib/codec.mjs"
import {connect, join, outcome, waitUntil, assertExact, assertWellFormed, gatewayURL} from "../lib/harness.mjs"
import {signHS256, token, uniquePlayer, nowSeconds, authSecret} from "../lib/jwt.mjs"
import {refusedLongPoll, metric, env} from "../lib/longpoll.mjs"

const T_OPTS = {timeout: 30000}
const VSN = "2.0.0"
const UNAUTHORIZED = {reason: "unauthorized"}

function suffix() { return randomBytes(6).toString("hex") }

function isReply(topic, ref) {
  return m => m.topic === topic && m.event === "phx_reply" && m.ref === ref
}

// joinExpect joins topic on c and checks the reply frame's exact bytes.
async function joinExpect(c, topic, status, response) {
  const ch = c.socket.channel(topic, {})
  const res = await join(ch)
  const J = ch.joinRef()
  assert.deepEqual(res, {status, response}, `join ${topic}\n${c.rec.dump()}`)
  const r = await c.rec.waitIn(isReply(topic, J), {what: `the join reply for ${topic}`})
  assertExact(r, reply(c.codec, J, J, topic, status, response), `join reply for ${topic}`)
  if (status === "error") ch.leave() // stops phoenix.js's rejoin timer
  return ch
}

async function echoOk(c, ch) {
  const p = ch.push("echo", {k: 1})
  assert.deepEqual(await outcome(p), {status: "ok", response: {k: 1}})
  const r = await c.rec.waitIn(isReply(ch.topic, p.ref))
  assertExact(r, reply(c.codec, ch.joinRef(), p.ref, ch.topic, "ok", {k: 1}), "echo reply")
}

// spyFetch records the method, URL and headers of every long-poll request
// phoenix.js makes (its Ajax uses the global fetch in Node) until the test
// ends.
function spyFetch(t) {
  const seen = []
  const orig = globalThis.fetch
  globalThis.fetch = (input, init = {}) => {
    const u = String(input)
    if (u.includes("/longpoll")) seen.push({method: init.method, url: u, headers: {...init.headers}})
    return orig(input, init)
  }
  t.after(() => { globalThis.fetch = orig })
  return seen
}

describe("auth over long-poll", () => {
  test("token in the socket params: the player connects, its topics claim decides the joins", T_OPTS, async t => {
    const s = suffix()
    const tok = token(uniquePlayer(), {topics: [`room:a${s}*`]})
    const c = await connect(t, VSN, {params: {token: tok}}, {longpoll: true})
    const [ev] = c.rec.events("connect")
    assert.equal(ev.url, `${gatewayURL()}/websocket?token=${tok}&vsn=${VSN}`)
    assert.equal(c.socket.conn.constructor.name, "RecordingLongPoll")
    const ch = await joinExpect(c, `room:a${s}`, "ok", {})
    await joinExpect(c, `room:b${s}`, "error", UNAUTHORIZED)
    await echoOk(c, ch)
    assertWellFormed(c.rec)
  })

  test("authToken: sent as X-Phoenix-AuthToken on every GET, never in the URL; its topics claim applies", T_OPTS, async t => {
    const s = suffix()
    const seen = spyFetch(t)
    const tok = token(uniquePlayer(), {topics: [`room:a${s}*`]})
    const c = await connect(t, VSN, {authToken: tok}, {longpoll: true})
    const ch = await joinExpect(c, `room:a${s}`, "ok", {})
    // Without the header the session would have been refused (auth is
    // required); with another identity room:b would not be unauthorized.
    await joinExpect(c, `room:b${s}`, "error", UNAUTHORIZED)
    await echoOk(c, ch)
    const gets = seen.filter(r => r.method === "GET")
    assert.ok(gets.length >= 2, `the session start and at least one poll: ${JSON.stringify(seen)}`)
    for (const g of gets) {
      assert.equal(g.headers["X-Phoenix-AuthToken"], tok, `GET ${g.url}`)
      assert.ok(!g.url.includes(tok), `the token must not be in the URL: ${g.url}`)
    }
    assertWellFormed(c.rec)
  })

  describe("a missing or bad token: {\"status\":403}, phoenix.js closes 1008 and retries, never joins", () => {
    const player = () => uniquePlayer("refused")
    const cases = [
      {name: "no token", opts: () => ({})},
      {name: "garbage token param", opts: () => ({params: {token: "not-a-jwt"}})},
      {name: "garbage authToken", opts: () => ({authToken: "not-a-jwt"})},
      {name: "expired token", opts: () => ({params: {token: token(player(), {exp: nowSeconds() - 60})}})},
      {name: "expired authToken", opts: () => ({authToken: token(player(), {exp: nowSeconds() - 60})})},
      {name: "token signed with another secret", opts: () => ({params: {token: token(player(), {}, authSecret() + "-other")}})},
      {name: "token without exp", opts: () => ({params: {token: signHS256({sub: player()}, authSecret())}})},
      {name: "token param and a different authToken", opts: () => ({params: {token: token(player())}, authToken: token(player())})},
    ]
    for (const k of cases) {
      test(k.name, T_OPTS, async t => {
        const admin = env("PHXGATE_ADMIN")
        const before = await metric(admin, "phxgate_longpoll_sessions_refused_total", {reason: "admission"})
        const attempts = 3
        const c = await refusedLongPoll(t, k.opts(), k.name, {attempts})
        // A join asked for meanwhile is never sent: the socket never opened.
        const ch = c.socket.channel(`room:never${suffix()}`, {})
        ch.join()
        await c.rec.waitFor(x => x.dir === "event" && x.type === "close" && x.conn === attempts, {what: "one more refusal"})
        assert.notEqual(ch.state, "joined")
        assert.deepEqual(c.rec.out, [], `nothing may be sent on a refused session\n${c.rec.dump()}`)
        const after = await metric(admin, "phxgate_longpoll_sessions_refused_total", {reason: "admission"})
        assert.ok(after - before >= attempts, `sessions_refused_total{reason="admission"} went ${before} → ${after}`)
      })
    }
  })

  test("an expired token ends the session; phoenix.js is refused until its params give a fresh token", T_OPTS, async t => {
    const player = uniquePlayer("expiring")
    // exp in 2 s, plus the phase's 1 s leeway.
    let current = token(player, {exp: nowSeconds() + 2})
    const c = await connect(t, VSN, {params: () => ({token: current}), reconnectAfterMs: () => 100}, {longpoll: true})
    const ch = await joinExpect(c, `room:exp${suffix()}`, "ok", {})
    const admin = env("PHXGATE_ADMIN")
    const expired = () => metric(admin, "phxgate_longpoll_sessions_closed_total", {reason: "token_expired"})
    const before = await expired()
    // The session ends at exp + leeway: phoenix.js's next poll finds it
    // gone, a new session with the same (expired) token is refused.
    const closed = await c.rec.waitEvent("close", {timeoutMs: 10000})
    assert.equal(closed.code, 1008, `the expired session's next start is refused\n${c.rec.dump()}`)
    assert.ok(await expired() > before, "the gateway ended the session for its token's exp")
    await waitUntil(() => ch.state === "errored", {what: "the channel to be errored"})
    await c.rec.waitFor(e => e.dir === "event" && e.type === "close" && e.seq > closed.seq && e.code === 1008, {what: "a second refusal"})
    assert.equal(c.rec.events("open").length, 1, `no new session with the expired token\n${c.rec.dump()}`)
    // The app hands phoenix.js a fresh token: the next attempt gets in and
    // the channel rejoins.
    current = token(player)
    const opened = await c.rec.waitFor(e => e.dir === "event" && e.type === "open" && e.seq > closed.seq, {what: "the session with the fresh token", timeoutMs: 10000})
    assert.ok(opened.conn > closed.conn)
    await waitUntil(() => ch.state === "joined", {what: "the rejoin"})
    await echoOk(c, ch)
    assertWellFormed(c.rec)
  })
})
