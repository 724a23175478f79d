// Heartbeats of the third-party phoenix-channels client. It sends
// {"topic":"phoenix","event":"heartbeat","payload":{},"ref":R} every
// heartbeatIntervalMs and, if the previous one is still unanswered when the
// next is due, closes the socket with 1000 "hearbeat timeout" (sic) and
// reconnects. The server answers every heartbeat, joined channels or not
// (PROTOCOL.md §3.1), and never pings.
//
// The idle tests need a gateway with a short idle_timeout; the Go test runs
// this file a second time against one, with PHXGATE_IDLE_TIMEOUT_MS set.

import {test} from "node:test"
import assert from "node:assert/strict"
import {connect, join, outcome, waitUntil, v1Reply, assertExact, assertWellFormed, assertClientFrame} from "./lib/client.mjs"

// heartbeatReplies pairs every heartbeat sent with the reply that carries
// its ref, checking the exact bytes and that each reply came before the
// next heartbeat (otherwise the client would have closed the socket).
function heartbeatReplies(rec) {
  const beats = rec.out.filter(e => e.msg && e.msg.topic === "phoenix" && e.msg.event === "heartbeat")
  const pairs = []
  for (const [i, hb] of beats.entries()) {
    assertClientFrame(hb)
    assert.equal(hb.data, `{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"${hb.msg.ref}"}`)
    const reply = rec.in.find(e => e.msg && e.msg.topic === "phoenix" && e.msg.ref === hb.msg.ref)
    if (!reply) continue
    assertExact(reply, v1Reply("phoenix", hb.msg.ref, "ok", {}), "heartbeat reply")
    if (beats[i + 1]) assert.ok(reply.seq < beats[i + 1].seq, `heartbeat ${hb.msg.ref} answered after the next one was sent\n${rec.dump()}`)
    pairs.push({hb, reply})
  }
  return pairs
}

test("heartbeat: a short interval with no channels, every heartbeat answered in time, the socket stays up", async t => {
  // The interval is also the client's reply timeout: leave room for a loaded
  // CI machine running a -race gateway.
  const {socket, rec} = await connect(t, {heartbeatIntervalMs: 700})
  await waitUntil(() => heartbeatReplies(rec).length >= 4, {timeoutMs: 20000, what: "4 answered heartbeats"})
  assert.deepEqual(rec.events("client-close"), [], `the client never timed a heartbeat out\n${rec.dump()}`)
  assert.deepEqual(rec.events("close"), [])
  assert.equal(rec.events("connect").length, 1)
  assert.equal(socket.isConnected(), true)
  assertWellFormed(rec)
})

test("heartbeat: interleaved with a joined channel's traffic", async t => {
  // One echo per heartbeat, not a flood: phxgate rate-limits events per
  // player, and anonymous sockets share their IP's bucket (50/s, burst 250
  // by default), which every socket of this suite (all on 127.0.0.1) uses.
  const {socket, rec, topic} = await connect(t, {heartbeatIntervalMs: 700})
  const ch = socket.channel(topic, {})
  assert.equal((await join(ch)).status, "ok")
  for (let n = 0; n < 6; n++) {
    const from = rec.entries.length
    assert.deepEqual(await outcome(ch.push("echo", {n})), {status: "ok", response: {n}})
    await rec.waitIn(m => m.topic === "phoenix" && m.event === "phx_reply", {from, what: "the next heartbeat reply"})
  }
  assert.ok(heartbeatReplies(rec).length >= 6)
  assert.deepEqual(rec.events("client-close"), [])
  assert.deepEqual(rec.events("close"), [])
  assert.equal(ch.state, "joined")
  assertWellFormed(rec)
})

const idleMs = Number(process.env.PHXGATE_IDLE_TIMEOUT_MS || 0)
const idleSkip = idleMs > 0 ? false : "needs a gateway with a short idle_timeout (PHXGATE_IDLE_TIMEOUT_MS); the Go test runs it"

test("idle timeout: heartbeats keep the socket alive well past the server's idle timeout", {skip: idleSkip}, async t => {
  const {socket, rec, topic} = await connect(t, {heartbeatIntervalMs: Math.max(50, Math.floor(idleMs / 2))})
  const ch = socket.channel(topic, {})
  assert.equal((await join(ch)).status, "ok")
  const start = rec.events("open")[0].at
  // Condition: answered heartbeats spanning three idle timeouts.
  await waitUntil(() => {
    const p = heartbeatReplies(rec)
    return p.length > 0 && p[p.length - 1].reply.at - start > 3 * idleMs
  }, {timeoutMs: 3 * idleMs + 10000, every: 50, what: `heartbeats spanning ${3 * idleMs} ms`})
  assert.deepEqual(rec.events("close"), [], `the server closed a socket that heartbeats\n${rec.dump()}`)
  assert.equal(rec.events("connect").length, 1)
  assert.deepEqual(await outcome(ch.push("echo", {alive: true})), {status: "ok", response: {alive: true}})
  assertWellFormed(rec)
})

test("idle timeout: without heartbeats the server closes with 1002; this client reconnects and rejoins", {skip: idleSkip}, async t => {
  // 2e9 ms: effectively no heartbeat (setInterval's limit is 2^31-1).
  const {socket, rec, topic} = await connect(t, {heartbeatIntervalMs: 2e9})
  const ch = socket.channel(topic, {})
  assert.equal((await join(ch)).status, "ok")
  const errors = []
  ch.onError(r => errors.push(r))
  const close = await rec.waitEvent("close", {timeoutMs: idleMs + 10000})
  // Bandit closes an idle socket with 1002 (PROTOCOL.md §1.1).
  const frame = rec.events("server-close-frame").find(e => e.conn === 0)
  t.diagnostic(`idle close frame: ${JSON.stringify(frame)}`)
  assert.ok(frame, `the server sent a close frame\n${rec.dump()}`)
  assert.equal(frame.code, 1002, `idle close code (reason ${JSON.stringify(frame.reason)})`)
  assert.equal(close.code, 1002)
  assert.equal(close.conn, 0)
  assert.ok(close.at - rec.events("open")[0].at >= idleMs - 50, "not closed before the idle timeout")
  assert.deepEqual(rec.events("client-close"), [])
  // This client reconnects after every close it did not initiate itself.
  await rec.waitFor(e => e.dir === "event" && e.type === "open" && e.conn === 1, {what: "a reconnect"})
  const rejoin = await rec.waitOut(m => m.topic === topic && m.event === "phx_join", {from: close.seq})
  const ok = await rec.waitIn(m => m.topic === topic && m.ref === rejoin.msg.ref, {from: close.seq})
  assertExact(ok, v1Reply(topic, rejoin.msg.ref, "ok", {}), "rejoin reply")
  await waitUntil(() => ch.state === "joined", {what: "rejoined"})
  assert.ok(errors.length >= 1, "onError ran for the dropped connection")
  assertWellFormed(rec)
})
