// phxgate's opt-in stream positions and resume (DESIGN.md §6) with the
// unmodified phoenix.js client: channel params are a function returning
// {offset: lastPosition}, so every rejoin phoenix.js makes after a reconnect
// sends the position of the last broadcast it saw.

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {connect, join, outcome, waitUntil, assertExact, assertWellFormed, transportVsns} from "../lib/harness.mjs"

const T_OPTS = {timeout: 60000}
const POSITION = /^p:([^:]+):([0-9]+)$/

// shoutWithRetry pushes one shout, retrying when phxgate answers
// rate_limited (after its retry_after_ms) or backend_overloaded.
async function shoutWithRetry(channel, payload) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const r = await outcome(channel.push("shout", payload))
    if (r.status === "ok") return
    const reason = r.response && r.response.reason
    assert.ok(r.status === "error" && (reason === "rate_limited" || reason === "backend_overloaded"), `shout ${JSON.stringify(payload)}: ${JSON.stringify(r)}`)
    const wait = reason === "rate_limited" ? Number(r.response.retry_after_ms) || 50 : 20
    await new Promise(resolve => setTimeout(resolve, wait))
  }
  assert.fail(`shout ${JSON.stringify(payload)} kept being refused`)
}

function parsePosition(p) {
  const m = POSITION.exec(p)
  assert.ok(m, `position ${JSON.stringify(p)} should look like "p:<epoch>:<offset>" and never like a decimal ref`)
  return {epoch: m[1], offset: Number(m[2])}
}

for (const vsn of transportVsns) {
  describe(`resume vsn=${vsn}`, () => {
    test("missed broadcasts are replayed exactly once, in order, after the rejoin reply", T_OPTS, async t => {
      const a = await connect(t, vsn, {}, {name: "resumer"})
      const b = await connect(t, vsn, {}, {name: "publisher"})
      const topic = a.topic

      let lastPosition = null
      const joinPayloads = []
      const chA = a.socket.channel(topic, () => {
        joinPayloads.push({offset: lastPosition})
        return {offset: lastPosition}
      })
      const got = [] // every shout phoenix.js dispatched on A, with its ref
      chA.on("shout", (payload, ref) => {
        got.push({payload, ref})
        lastPosition = ref
      })
      const joinReplies = []
      // phoenix.js reuses the join push on rejoin, so this hook sees every join reply.
      chA.joinPush.receive("ok", resp => joinReplies.push(resp))

      const first = await join(chA)
      assert.equal(first.status, "ok")
      assert.equal(typeof first.response.position, "string", `join reply ${JSON.stringify(first.response)} carries position`)
      const start = parsePosition(first.response.position)
      // DESIGN.md §6 sends `recovered` only when resuming from a position.
      assert.notEqual(first.response.recovered, true, "a join from null cannot have recovered anything")

      // A plain (not opted-in) channel on the publisher's socket.
      const chB = b.socket.channel(topic)
      const plainRefs = []
      chB.on("shout", (_p, ref) => plainRefs.push(ref))
      assert.equal((await join(chB)).status, "ok")

      const shout = async n => {
        const p = chB.push("shout", {n})
        assert.deepEqual(await outcome(p), {status: "ok", response: {}}, `shout ${n}`)
      }

      // Live phase.
      for (let n = 1; n <= 3; n++) await shout(n)
      await waitUntil(() => got.length >= 3, {what: "3 live shouts on the opted-in channel"})

      // Outage: the connection drops (no disconnect(), so phoenix.js
      // reconnects) and every reconnect attempt is refused until we allow it.
      a.rec.offline = true
      const dropMark = a.rec.entries.length - 1
      a.socket.conn.terminate()
      await a.rec.waitEvent("close", {from: dropMark})
      await waitUntil(() => chA.state === "errored", {what: "the channel to error after the drop"})
      const MISSED = 5
      for (let n = 4; n < 4 + MISSED; n++) await shout(n)
      // Let it reconnect; phoenix.js retries every 20 ms here.
      a.rec.offline = false
      const joinOut = await a.rec.waitOut(m => m.topic === topic && m.event === "phx_join", {from: dropMark, timeoutMs: 10000, what: "the rejoin after reconnect"})
      const J2 = joinOut.msg.ref
      assert.deepEqual(joinOut.msg.payload, {offset: got[2].ref}, "phoenix.js rejoins with the last position it saw")
      const rr = await a.rec.waitIn(m => m.topic === topic && m.event === "phx_reply" && m.ref === J2)
      assert.equal(rr.msg.payload.status, "ok", a.rec.dump(dropMark))
      assert.equal(rr.msg.payload.response.recovered, true, `rejoin reply ${rr.data}`)
      assert.equal(typeof rr.msg.payload.response.position, "string")

      await waitUntil(() => got.length >= 3 + MISSED, {what: `${MISSED} replayed shouts`, timeoutMs: 10000})
      // Replayed frames come after the rejoin reply, on the new connection.
      const replayed = a.rec.in.filter(e => e.seq > dropMark && e.msg.topic === topic && e.msg.event === "shout")
      assert.equal(replayed.length, MISSED, a.rec.dump(dropMark))
      for (const e of replayed) {
        assert.ok(e.seq > rr.seq, `replayed #${e.seq} must follow the rejoin reply #${rr.seq}`)
        assert.ok(e.msg.join_ref === null || e.msg.join_ref === undefined || e.msg.join_ref === J2,
          `replayed frame join_ref ${JSON.stringify(e.msg.join_ref)} should be null or the new join_ref ${J2}`)
        assert.equal(a.codec.frame(e.msg.join_ref, e.msg.ref, topic, "shout", e.msg.payload), e.data, "replayed frame bytes")
      }

      // Live again.
      for (let n = 4 + MISSED; n < 6 + MISSED; n++) await shout(n)
      const total = 5 + MISSED
      await waitUntil(() => got.length >= total, {what: "the live shouts after resume"})

      assert.deepEqual(got.map(g => g.payload.n), Array.from({length: total}, (_, i) => i + 1), "every shout once, in order")
      const offs = got.map(g => parsePosition(g.ref))
      for (let i = 0; i < offs.length; i++) {
        assert.equal(offs[i].epoch, start.epoch, "one epoch throughout")
        assert.equal(offs[i].offset, start.offset + i + 1, `contiguous offsets: ${got.map(g => g.ref)}`)
      }
      assert.deepEqual(joinPayloads[0], {offset: null})
      assert.ok(joinReplies.length >= 2)
      // The plain channel saw every shout with a null ref.
      await waitUntil(() => plainRefs.length >= total, {what: "all shouts on the plain channel"})
      assert.deepEqual(plainRefs, Array(total).fill(null))
      for (const e of b.rec.in.filter(x => x.msg.event === "shout")) {
        assertExact(e, b.codec.frame(null, null, topic, "shout", e.msg.payload), "plain broadcast")
      }
      assertWellFormed(a.rec)
      assertWellFormed(b.rec)
    })

    test("resume boundaries: history 100 replays the last 100, older or foreign positions are not recovered", T_OPTS, async t => {
      const pub = await connect(t, vsn, {}, {name: "publisher"})
      const topic = pub.topic
      // An opted-in observer gives the epoch and the starting offset.
      const obs = pub.socket.channel(topic, {offset: null})
      const first = await join(obs)
      assert.equal(first.status, "ok")
      const start = parsePosition(first.response.position)
      const HISTORY = 100
      const TOTAL = HISTORY + 5
      // One shout at a time; the gateway's per-player rate limit and
      // bounded per-channel queue may push back, and then we do what a
      // well-behaved client does: wait as told and retry.
      for (let n = 1; n <= TOTAL; n++) await shoutWithRetry(obs, {n})
      const at = n => `p:${start.epoch}:${start.offset + n}`

      // Resume after event 5: events 6..105 are exactly the 100 kept.
      const ok = await connect(t, vsn, {}, {name: "resume-after-5"})
      const got = []
      const chOk = ok.socket.channel(topic, {offset: at(5)})
      chOk.on("shout", (payload, ref) => got.push({n: payload.n, ref}))
      const rOk = await join(chOk)
      assert.equal(rOk.status, "ok")
      assert.equal(rOk.response.recovered, true, `resuming inside the history: ${JSON.stringify(rOk.response)}`)
      await waitUntil(() => got.length >= HISTORY, {what: `${HISTORY} replayed shouts`, timeoutMs: 10000})

      // Resume after event 4: event 5 is gone, so nothing is recovered.
      const old = await connect(t, vsn, {}, {name: "resume-after-4"})
      const gotOld = []
      const chOld = old.socket.channel(topic, {offset: at(4)})
      chOld.on("shout", (payload, ref) => gotOld.push({n: payload.n, ref}))
      const rOld = await join(chOld)
      assert.equal(rOld.status, "ok")
      assert.equal(rOld.response.recovered, false, `resuming before the history: ${JSON.stringify(rOld.response)}`)
      assert.equal(typeof rOld.response.position, "string")

      // A position from another epoch is not recovered either.
      const foreign = await connect(t, vsn, {}, {name: "foreign-epoch"})
      const gotForeign = []
      const chF = foreign.socket.channel(topic, {offset: "p:not-this-epoch:3"})
      chF.on("shout", (payload, ref) => gotForeign.push({n: payload.n, ref}))
      const rF = await join(chF)
      assert.equal(rF.status, "ok")
      assert.equal(rF.response.recovered, false, `foreign epoch: ${JSON.stringify(rF.response)}`)

      // One live shout: the unrecovered channels see it first and only it.
      assert.equal((await outcome(obs.push("shout", {n: TOTAL + 1}))).status, "ok")
      await waitUntil(() => got.length >= HISTORY + 1 && gotOld.length >= 1 && gotForeign.length >= 1, {what: "the live shout everywhere"})
      assert.deepEqual(got.map(g => g.n), Array.from({length: HISTORY + 1}, (_, i) => i + 6), "replay of exactly the kept events, then live")
      assert.deepEqual(got.map(g => g.ref), Array.from({length: HISTORY + 1}, (_, i) => at(i + 6)))
      assert.deepEqual(gotOld, [{n: TOTAL + 1, ref: at(TOTAL + 1)}], "no replay when not recovered")
      assert.deepEqual(gotForeign, [{n: TOTAL + 1, ref: at(TOTAL + 1)}], "no replay for a foreign epoch")
      for (const c of [pub, ok, old, foreign]) assertWellFormed(c.rec)
    })
  })
}
