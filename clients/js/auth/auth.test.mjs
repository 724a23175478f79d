// Auth and rate limits with the unmodified phoenix.js client (DESIGN.md §5).
// Runs against a gateway of its own with auth.required and an HS256 secret
// (conformance_test.go's auth phase passes PHXGATE_URL and
// PHXGATE_AUTH_SECRET), so it lives outside test/.
//
// Token facts under test: `sub` is the player id, `exp` is required, a
// `topics` claim (patterns, trailing `*` = any suffix) limits joins; a token
// comes in the connect params (`token`), the phoenix.js `authToken` option
// (the Sec-WebSocket-Protocol "base64url.bearer.phx.<b64url>" entry), or the
// join payload key `token`. A refused connect is an HTTP 401 (no token) or
// 403 (bad token) before the upgrade. Rate limits are per player (sub), so
// every test signs for its own player.

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import {VSNS, reply} from "../lib/codec.mjs"
import {connect, join, outcome, waitUntil, assertExact, assertWellFormed, gatewayURL} from "../lib/harness.mjs"
import {signHS256, token, uniquePlayer, nowSeconds, authSecret} from "../lib/jwt.mjs"

const T_OPTS = {timeout: 30000}

// The auth phase's limits (conformance_test.go).
const CHAT_BURST = 3
const CHAT_PER_SECOND = 2
const JOIN_BURST = 20
const JOINS_PER_SECOND = 5
const ABUSE_WINDOW_MS = 2000

function suffix() {
  return randomBytes(6).toString("hex")
}

function isReply(topic, ref) {
  return m => m.topic === topic && m.event === "phx_reply" && m.ref === ref
}

// joinExpect joins topic on c and checks the exact reply frame and the
// phoenix.js outcome. Returns the channel.
async function joinExpect(c, topic, status, response, payload = {}) {
  const ch = c.socket.channel(topic, payload)
  const res = await join(ch)
  const J = ch.joinRef()
  assert.deepEqual(res, {status, response}, `join ${topic}\n${c.rec.dump()}`)
  const r = await c.rec.waitIn(isReply(topic, J), {what: `the join reply for ${topic}`})
  assertExact(r, reply(c.codec, J, J, topic, status, response), `join reply for ${topic}`)
  return {ch, J, r}
}

const UNAUTHORIZED = {reason: "unauthorized"}

// forbiddenJoin: a join the topics claim does not allow gets exactly
// {"response":{"reason":"unauthorized"},"status":"error"}; the socket stays
// open, phoenix.js retries the join (and is refused again), and other
// channels on the socket are unaffected.
async function forbiddenJoin(c, topic) {
  const {ch, J} = await joinExpect(c, topic, "error", UNAUTHORIZED)
  assert.equal(ch.state, "errored")
  const again = await c.rec.waitOut(m => m.topic === topic && m.event === "phx_join" && m.ref !== J, {what: "phoenix.js's rejoin"})
  const J2 = again.msg.ref
  const r2 = await c.rec.waitIn(isReply(topic, J2), {what: "the reply to the rejoin"})
  assertExact(r2, reply(c.codec, J2, J2, topic, "error", UNAUTHORIZED), "rejoin reply")
  ch.leave() // stops the rejoin timer; no frame, the channel is not joined
  assert.deepEqual(c.rec.events("close"), [], `the socket must stay open\n${c.rec.dump()}`)
}

// echoOk proves a joined channel still works.
async function echoOk(c, ch, topic) {
  const p = ch.push("echo", {k: 1})
  assert.deepEqual(await outcome(p), {status: "ok", response: {k: 1}})
  const r = await c.rec.waitIn(isReply(topic, p.ref))
  assertExact(r, reply(c.codec, ch.joinRef(), p.ref, topic, "ok", {k: 1}), "echo reply")
}

for (const vsn of VSNS) {
  describe(`auth vsn=${vsn}`, () => {
    test("token in the connect params: topics claim allows room:a*, refuses room:b", T_OPTS, async t => {
      const s = suffix()
      const tok = token(uniquePlayer(), {topics: ["room:a*", `room:x${s}`]})
      const c = await connect(t, vsn, {params: {token: tok}})
      const [connectEv] = c.rec.events("connect")
      assert.equal(connectEv.url, `${gatewayURL()}/websocket?token=${tok}&vsn=${vsn}`)
      const a = `room:a${s}`
      const {ch} = await joinExpect(c, a, "ok", {})
      await forbiddenJoin(c, `room:b${s}`)
      // An exact pattern matches only itself.
      await joinExpect(c, `room:x${s}`, "ok", {})
      await forbiddenJoin(c, `room:x${s}y`)
      // "room:a*" is a prefix, not a glob over the whole string.
      await forbiddenJoin(c, `lobby:room:a${s}`)
      await echoOk(c, ch, a)
      assertWellFormed(c.rec)
    })

    test("token as authToken (subprotocol): same topics rules", T_OPTS, async t => {
      const s = suffix()
      const tok = token(uniquePlayer(), {topics: ["room:a*"]})
      const c = await connect(t, vsn, {authToken: tok})
      const [connectEv] = c.rec.events("connect")
      assert.deepEqual(connectEv.protocols, ["phoenix", `base64url.bearer.phx.${Buffer.from(tok).toString("base64url")}`])
      assert.ok(!connectEv.url.includes("token="), connectEv.url)
      const [up] = c.rec.events("upgrade")
      assert.equal(up.protocolHeader, "phoenix", "Sec-WebSocket-Protocol answer")
      const a = `room:a${s}`
      const {ch} = await joinExpect(c, a, "ok", {})
      await forbiddenJoin(c, `room:b${s}`)
      await echoOk(c, ch, a)
      assertWellFormed(c.rec)
    })

    test("the same token as param and authToken is accepted", T_OPTS, async t => {
      const tok = token(uniquePlayer(), {topics: ["room:a*"]})
      const c = await connect(t, vsn, {params: {token: tok}, authToken: tok})
      await joinExpect(c, `room:a${suffix()}`, "ok", {})
      assertWellFormed(c.rec)
    })

    test("unrouted topics: unauthorized when the claim forbids them, else unmatched topic", T_OPTS, async t => {
      const s = suffix()
      const c = await connect(t, vsn, {params: {token: token(uniquePlayer(), {topics: ["room:a*", `nowhere:a${s}`]})}})
      // Neither is routed; the claim allows only the second.
      await forbiddenJoinWith(c, `nowhere:b${s}`, {})
      const ch = c.socket.channel(`nowhere:a${s}`)
      assert.deepEqual(await join(ch), {status: "error", response: {reason: "unmatched topic"}})
      // (the main suite owns the unmatched-topic frame's exact bytes)
      const r = await c.rec.waitIn(isReply(`nowhere:a${s}`, ch.joinRef()))
      assert.deepEqual(r.msg.payload, {response: {reason: "unmatched topic"}, status: "error"})
      ch.leave()
      assertWellFormed(c.rec)
    })

    test("no topics claim: any routed topic may be joined", T_OPTS, async t => {
      const s = suffix()
      const c = await connect(t, vsn, {params: {token: token(uniquePlayer())}})
      await joinExpect(c, `room:a${s}`, "ok", {})
      await joinExpect(c, `room:zz${s}`, "ok", {})
      assertWellFormed(c.rec)
    })

    test("empty topics claim: every join is unauthorized", T_OPTS, async t => {
      const s = suffix()
      const c = await connect(t, vsn, {params: {token: token(uniquePlayer(), {topics: []})}})
      await forbiddenJoin(c, `room:a${s}`)
      assertWellFormed(c.rec)
    })

    test("rate limit: a burst of chat pushes, the overflow gets rate_limited in ref order", T_OPTS, async t => {
      const c = await connect(t, vsn, {params: {token: token(uniquePlayer())}})
      const topic = `room:rl${suffix()}`
      const {ch} = await joinExpect(c, topic, "ok", {})
      const J = ch.joinRef()
      // echo is in the route's default class, chat in the `chat` class
      // (burst 3, 2/s). All pushes leave in one tick.
      const pushes = [{event: "echo", payload: {n: 0}}]
      for (let i = 1; i <= 2 * CHAT_BURST; i++) pushes.push({event: "chat", payload: {n: i}})
      pushes.push({event: "echo", payload: {n: 99}})
      const sent = pushes.map(p => ({...p, push: ch.push(p.event, p.payload)}))
      const outcomes = await Promise.all(sent.map(p => outcome(p.push)))
      const refs = sent.map(p => p.push.ref)
      const replies = await Promise.all(refs.map(R => c.rec.waitIn(isReply(topic, R), {what: `reply ${R}`})))
      // In ref order, interleaved correctly with the backend's own replies:
      // a refusal must not overtake the replies queued before it.
      const order = c.rec.in.filter(e => e.msg.event === "phx_reply" && refs.includes(e.msg.ref)).map(e => e.msg.ref)
      assert.deepEqual(order, refs, `replies must arrive in push order\n${c.rec.dump()}`)
      let chat = 0
      for (const [i, p] of sent.entries()) {
        const R = refs[i]
        if (p.event === "echo") {
          assert.deepEqual(outcomes[i], {status: "ok", response: p.payload})
          assertExact(replies[i], reply(c.codec, J, R, topic, "ok", p.payload), `echo ${R}`)
          continue
        }
        chat++
        if (chat <= CHAT_BURST) {
          // Let through to the echo backend, which has no `chat` event: its
          // own "unknown event" error is the proof the limiter allowed it.
          assertExact(replies[i], reply(c.codec, J, R, topic, "error", {reason: "unknown event"}), `chat #${chat} (within the burst)`)
          continue
        }
        const resp = replies[i].msg.payload?.response
        const N = resp?.retry_after_ms
        assert.ok(Number.isInteger(N) && N > 0, `chat #${chat}: retry_after_ms must be a positive integer, got ${replies[i].data}`)
        assert.ok(N <= Math.ceil(1000 * CHAT_BURST / CHAT_PER_SECOND), `chat #${chat}: retry_after_ms ${N} exceeds a full bucket refill`)
        assertExact(replies[i], reply(c.codec, J, R, topic, "error", {reason: "rate_limited", retry_after_ms: N}), `chat #${chat} (over the burst)`)
        assert.deepEqual(outcomes[i], {status: "error", response: {reason: "rate_limited", retry_after_ms: N}})
      }
      // A refusal is a reply, not a channel error: still joined.
      assert.equal(ch.state, "joined")
      assert.deepEqual(c.rec.in.filter(e => e.msg.event === "phx_error" || e.msg.event === "phx_close"), [])
      // Honouring retry_after_ms gets the next chat through.
      const last = replies[replies.length - 2].msg.payload.response.retry_after_ms
      await new Promise(r => setTimeout(r, last)) // the server-stated wait, not a guess
      const p = ch.push("chat", {n: "after"})
      assert.deepEqual(await outcome(p), {status: "error", response: {reason: "unknown event"}}, c.rec.dump())
      assertWellFormed(c.rec)
    })
  })
}

// chatBurst pushes n chat events on ch at once and returns the replies'
// payloads in push order (after checking they came in that order).
async function chatBurst(c, ch, topic, n) {
  const pushes = Array.from({length: n}, (_, i) => ch.push("chat", {n: i}))
  await Promise.all(pushes.map(p => outcome(p)))
  const refs = pushes.map(p => p.ref)
  const replies = await Promise.all(refs.map(R => c.rec.waitIn(isReply(topic, R), {what: `reply ${R}`})))
  return replies.map(r => r.msg.payload)
}

const ALLOWED_CHAT = {response: {reason: "unknown event"}, status: "error"} // the echo backend's answer

function isRateLimited(p) {
  return p.status === "error" && p.response?.reason === "rate_limited" && Number.isInteger(p.response?.retry_after_ms) && p.response.retry_after_ms > 0
}

for (const vsn of VSNS) {
  // A join payload `token` (channels/guard.go): verified on the worker;
  // when present it replaces the connect token's identity for that join
  // only (its topics claim decides, its player keys the channel's event
  // limits); a present but invalid one (garbage, expired, "" or a
  // non-string) is unauthorized, with no fallback to the connect token;
  // `token: null` counts as absent. The key is stripped before the backend.
  describe(`join payload token vsn=${vsn}`, () => {
    test("a join token grants what the connect token does not, for that join only", T_OPTS, async t => {
      const s = suffix()
      const player = uniquePlayer()
      // The connect token allows no topic at all.
      const c = await connect(t, vsn, {params: {token: token(player, {topics: []})}})
      const joinTok = token(player, {topics: [`room:a${s}*`]})
      const {ch} = await joinExpect(c, `room:a${s}`, "ok", {}, {token: joinTok})
      // phoenix.js sent the token in the join frame; the gateway took it out
      // (the echo backend's join reply is {} either way).
      const out = await c.rec.waitOut(m => m.topic === `room:a${s}` && m.event === "phx_join")
      assert.deepEqual(out.msg.payload, {token: joinTok})
      await echoOk(c, ch, `room:a${s}`)
      // The join token's topics claim decides for its join…
      await forbiddenJoinWith(c, `room:b${s}`, {token: joinTok})
      // …and a join without one falls back to the connect token (no topics).
      await forbiddenJoinWith(c, `room:a${s}-2`, {})
      await forbiddenJoinWith(c, `room:a${s}-3`, {token: null})
      assertWellFormed(c.rec)
    })

    test("an invalid join token is unauthorized, with no fallback to the connect token", T_OPTS, async t => {
      const s = suffix()
      const player = uniquePlayer()
      // The connect token alone would allow every topic.
      const c = await connect(t, vsn, {params: {token: token(player)}})
      const bad = [
        {name: "garbage", token: "not-a-jwt"},
        {name: "expired", token: token(player, {exp: nowSeconds() - 60})},
        {name: "other secret", token: token(player, {}, authSecret() + "-other")},
        {name: "empty string", token: ""},
        {name: "a number", token: 42},
      ]
      for (const [i, b] of bad.entries()) {
        await forbiddenJoinWith(c, `room:j${s}-${i}`, {token: b.token}, b.name)
      }
      // null is no token: the connect token's (unrestricted) identity applies.
      await joinExpect(c, `room:j${s}-null`, "ok", {}, {token: null})
      assertWellFormed(c.rec)
    })

    test("a join token's player keys that channel's event limits", T_OPTS, async t => {
      const s = suffix()
      const p1 = uniquePlayer("p1")
      const p2 = uniquePlayer("p2")
      const c = await connect(t, vsn, {params: {token: token(p1)}})
      // Channel A runs as p2 (join token), channel B as p1 (connect token).
      const a = `room:ja${s}`
      const b = `room:jb${s}`
      const {ch: chA} = await joinExpect(c, a, "ok", {}, {token: token(p2)})
      const {ch: chB} = await joinExpect(c, b, "ok", {})
      const onA = await chatBurst(c, chA, a, CHAT_BURST + 1)
      assert.deepEqual(onA.slice(0, CHAT_BURST), Array(CHAT_BURST).fill(ALLOWED_CHAT), c.rec.dump())
      assert.ok(isRateLimited(onA[CHAT_BURST]), `chat #${CHAT_BURST + 1} on A: ${JSON.stringify(onA[CHAT_BURST])}`)
      // p1's bucket is untouched.
      const onB = await chatBurst(c, chB, b, 1)
      assert.deepEqual(onB, [ALLOWED_CHAT], c.rec.dump())
      // Buckets are per player, not per socket: p2 connecting on its own
      // finds its chat bucket already drained.
      const c2 = await connect(t, vsn, {params: {token: token(p2)}}, {name: "p2"})
      const cc = `room:jc${s}`
      const {ch: chC} = await joinExpect(c2, cc, "ok", {})
      const onC = await chatBurst(c2, chC, cc, 1)
      assert.ok(isRateLimited(onC[0]), `p2's chat on its own socket: ${JSON.stringify(onC[0])}\n${c2.rec.dump()}`)
      assertWellFormed(c.rec)
      assertWellFormed(c2.rec)
    })
  })
}

// forbiddenJoinWith: an unauthorized join with this payload, exact reply,
// the channel left afterwards (phoenix.js would keep retrying it).
async function forbiddenJoinWith(c, topic, payload, what = "") {
  const ch = c.socket.channel(topic, payload)
  const res = await join(ch)
  const J = ch.joinRef()
  assert.deepEqual(res, {status: "error", response: UNAUTHORIZED}, `join ${topic} ${what}\n${c.rec.dump()}`)
  const r = await c.rec.waitIn(isReply(topic, J), {what: `the join reply for ${topic}`})
  assertExact(r, reply(c.codec, J, J, topic, "error", UNAUTHORIZED), `join reply for ${topic} ${what}`)
  ch.leave()
}

describe("join and abuse limits", () => {
  for (const vsn of VSNS) {
    test(`vsn=${vsn}: joins past the burst get rate_limited; phoenix.js's rejoin gets in later`, T_OPTS, async t => {
      const c = await connect(t, vsn, {params: {token: token(uniquePlayer())}, rejoinAfterMs: () => 100})
      const s = suffix()
      const chans = Array.from({length: JOIN_BURST + 1}, (_, i) => c.socket.channel(`room:jl${s}-${i}`))
      const first = await Promise.all(chans.map(ch => join(ch)))
      assert.deepEqual(first.slice(0, JOIN_BURST), Array(JOIN_BURST).fill({status: "ok", response: {}}), c.rec.dump())
      const last = chans[JOIN_BURST]
      const topic = last.topic
      const res = first[JOIN_BURST]
      const N = res.response?.retry_after_ms
      assert.ok(res.status === "error" && Number.isInteger(N) && N > 0 && N <= Math.ceil(1000 / JOINS_PER_SECOND),
        `join #${JOIN_BURST + 1}: ${JSON.stringify(res)}\n${c.rec.dump()}`)
      // The reply frame of the refused join (the first phx_join for topic).
      const out = await c.rec.waitOut(m => m.topic === topic && m.event === "phx_join")
      const J = out.msg.ref
      const r = await c.rec.waitIn(isReply(topic, J))
      assertExact(r, reply(c.codec, J, J, topic, "error", {reason: "rate_limited", retry_after_ms: N}), "refused join")
      // phoenix.js treats it like any join error and retries every 100 ms;
      // once a join token has refilled, a retry is let in.
      await waitUntil(() => last.state === "joined", {timeoutMs: 5000, what: `phoenix.js to join ${topic} on a retry\n${c.rec.dump()}`})
      assert.deepEqual(c.rec.events("close"), [])
      assertWellFormed(c.rec)
    })
  }

  test("pushing on past rate_limited for the abuse window closes the socket with 1008", T_OPTS, async t => {
    const c = await connect(t, "2.0.0", {params: {token: token(uniquePlayer())}, reconnectAfterMs: () => 200})
    const topic = `room:abuse${suffix()}`
    const {ch} = await joinExpect(c, topic, "ok", {})
    const started = Date.now()
    // A client ignoring retry_after_ms: a chat every 100 ms (the refusal
    // streak never pauses for abuse_quiet), until the gateway closes.
    const pushes = []
    const timer = setInterval(() => pushes.push(ch.push("chat", {n: pushes.length})), 100)
    t.after(() => clearInterval(timer))
    const close = await c.rec.waitEvent("close", {timeoutMs: ABUSE_WINDOW_MS + 5000})
    clearInterval(timer)
    const elapsed = Date.now() - started
    assert.equal(close.code, 1008, `close code (want 1008 policy violation)\n${c.rec.dump()}`)
    assert.ok(elapsed >= ABUSE_WINDOW_MS, `closed after ${elapsed} ms, before the ${ABUSE_WINDOW_MS} ms abuse window`)
    // Every reply before the close was an in-order allowed or rate_limited one.
    const replies = c.rec.in.filter(e => e.msg.topic === topic && e.msg.event === "phx_reply" && e.seq < close.seq && e.msg.ref !== ch.joinRef())
    const refs = replies.map(e => Number(e.msg.ref))
    assert.deepEqual(refs, [...refs].sort((a, b) => a - b), "replies in push order")
    const limited = replies.filter(e => isRateLimited(e.msg.payload))
    assert.ok(limited.length > 0, c.rec.dump())
    for (const e of replies) {
      assert.ok(isRateLimited(e.msg.payload) || JSON.stringify(e.msg.payload) === JSON.stringify(ALLOWED_CHAT), `unexpected reply ${e.data}`)
    }
    // phoenix.js reconnects on its own (the token is still valid).
    await c.rec.waitEvent("open", {from: close.seq, timeoutMs: 5000})
  })
})

// refusedConnect starts a phoenix.js socket that the gateway must refuse
// before the upgrade: it never opens, every attempt gets `status`, and
// phoenix.js keeps retrying (at least `attempts` attempts are seen).
async function refusedConnect(t, opts, status, name, attempts = 3) {
  const c = await connect(t, "2.0.0", {reconnectAfterMs: () => 20, ...opts}, {name, waitOpen: false})
  const seen = []
  for (let i = 0; i < attempts; i++) {
    const e = await c.rec.waitFor(x => x.dir === "event" && (x.type === "unexpected-response" || x.type === "open") && x.conn === i,
      {what: `refusal of attempt ${i + 1}`})
    assert.equal(e.type, "unexpected-response", `${name}: attempt ${i + 1} must be refused before the upgrade\n${c.rec.dump()}`)
    seen.push(e.status)
    assert.equal(e.contentLength, "0", `${name}: a refusal has an empty body, as the vsn 403 does\n${c.rec.dump()}`)
    // phoenix.js sees error + close (1006) and schedules the next attempt.
    await c.rec.waitFor(x => x.dir === "event" && x.type === "close" && x.conn === i, {what: `close of attempt ${i + 1}`})
  }
  assert.deepEqual(seen, Array(attempts).fill(status), c.rec.dump())
  assert.deepEqual(c.rec.events("open"), [], `${name}: the socket must never open\n${c.rec.dump()}`)
  assert.deepEqual(c.rec.events("upgrade"), [], `${name}: no 101\n${c.rec.dump()}`)
  assert.equal(c.socket.isConnected(), false)
  return c
}

describe("refused connects (HTTP status before the upgrade)", () => {
  const player = () => uniquePlayer("refused")
  const cases = [
    {name: "no token → 401", opts: () => ({}), status: 401},
    {name: "empty token param → 401", opts: () => ({params: {token: ""}}), status: 401},
    {name: "garbage token param → 403", opts: () => ({params: {token: "not-a-jwt"}}), status: 403},
    {name: "garbage authToken → 403", opts: () => ({authToken: "not-a-jwt"}), status: 403},
    {name: "expired token → 403", opts: () => ({params: {token: token(player(), {exp: nowSeconds() - 60})}}), status: 403},
    {name: "expired authToken → 403", opts: () => ({authToken: token(player(), {exp: nowSeconds() - 60})}), status: 403},
    {name: "token without exp → 403", opts: () => ({params: {token: signHS256({sub: player()}, authSecret())}}), status: 403},
    {name: "token without sub → 403", opts: () => ({params: {token: signHS256({exp: nowSeconds() + 600}, authSecret())}}), status: 403},
    {name: "token signed with another secret → 403", opts: () => ({params: {token: token(player(), {}, authSecret() + "-other")}}), status: 403},
    {name: "alg none → 403", opts: () => ({params: {token: unsignedToken(player())}}), status: 403},
    {name: "token param and a different authToken → 403", opts: () => ({params: {token: token(player())}, authToken: token(player())}), status: 403},
    {name: "non-string token param → 403", opts: () => ({params: {token: {a: "b"}}}), status: 403},
  ]
  for (const k of cases) {
    test(k.name, T_OPTS, async t => {
      await refusedConnect(t, k.opts(), k.status, k.name)
    })
  }
})

function unsignedToken(player) {
  const b = o => Buffer.from(JSON.stringify(o)).toString("base64url")
  return `${b({alg: "none", typ: "JWT"})}.${b({sub: player, exp: nowSeconds() + 600})}.`
}

describe("token expiry", () => {
  test("a socket whose token expires is closed with 1008; the reconnect with the same token is refused", T_OPTS, async t => {
    // exp in ~2 s, plus the phase's 1 s leeway.
    const tok = token(uniquePlayer(), {exp: nowSeconds() + 2})
    const c = await connect(t, "2.0.0", {params: {token: tok}, reconnectAfterMs: () => 100})
    const topic = `room:exp${suffix()}`
    await joinExpect(c, topic, "ok", {})
    const close = await c.rec.waitEvent("close", {timeoutMs: 10000})
    assert.equal(close.code, 1008, `close code (want 1008 policy violation)\n${c.rec.dump()}`)
    await waitUntil(() => c.socket.channels[0]?.state === "errored", {what: "the channel to be errored"})
    const refused = await c.rec.waitFor(e => e.dir === "event" && e.type === "unexpected-response" && e.seq > close.seq, {what: "the refused reconnect"})
    assert.equal(refused.status, 403, c.rec.dump())
  })
})

describe("connection caps", () => {
  test("a player's third socket is refused with 429 (limits.player_max_conns: 2) until one closes", T_OPTS, async t => {
    const player = uniquePlayer("capped")
    const a = await connect(t, "2.0.0", {params: {token: token(player)}}, {name: "A"})
    await connect(t, "2.0.0", {authToken: token(player)}, {name: "B"})
    // Slow retries: every attempt also spends the per-IP handshake budget
    // that all the suite's sockets (one loopback address) share.
    const c = await connect(t, "2.0.0", {params: {token: token(player)}, reconnectAfterMs: () => 200}, {name: "C", waitOpen: false})
    const refused = await c.rec.waitFor(e => e.dir === "event" && (e.type === "unexpected-response" || e.type === "open"), {what: "C's first attempt"})
    assert.equal(refused.type, "unexpected-response", `a third socket for one player must be refused\n${c.rec.dump()}`)
    assert.equal(refused.status, 429, c.rec.dump())
    assert.equal(refused.contentLength, "0", c.rec.dump())
    // Another player is not affected.
    await connect(t, "2.0.0", {params: {token: token(uniquePlayer())}}, {name: "D"})
    // A closes; phoenix.js's next attempt for C gets in.
    await new Promise(resolve => a.socket.disconnect(resolve))
    await a.rec.waitEvent("close")
    const open = await c.rec.waitEvent("open", {timeoutMs: 10000})
    assert.equal(c.rec.events("upgrade").length, 1)
    assert.ok(open.conn >= 1, c.rec.dump())
  })
})
