// Three phxgate nodes on one Redis (PHXGATE_URLS, comma-separated), with
// the unmodified phoenix.js client: a room spread over the nodes gets every
// broadcast, in one order, with the same positions everywhere; a client that
// drops from one node and comes back on another with its last position is
// replayed exactly what it missed; positions too old for the history, or
// resumes past max_replay, are told recovered=false.
//
// The gateways run with room:* (echo, history 100), small:* (echo, history
// 5) and max_replay 20, set by clients/js/conformance_test.go.

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {VSNS} from "../lib/codec.mjs"
import {connect, join, outcome, waitUntil, uniqueTopic, assertWellFormed} from "../lib/harness.mjs"

const T_OPTS = {timeout: 60000}
const POSITION = /^p:([^:]+):([0-9]+)$/
const MAX_REPLAY = 20
const SMALL_HISTORY = 5

function nodes() {
  const urls = (process.env.PHXGATE_URLS || "").split(",").filter(Boolean)
  assert.ok(urls.length >= 3, `PHXGATE_URLS must list three gateways, got ${JSON.stringify(process.env.PHXGATE_URLS)}`)
  return urls
}

function parsePosition(p) {
  const m = POSITION.exec(p)
  assert.ok(m, `position ${JSON.stringify(p)} should look like "p:<epoch>:<offset>"`)
  return {epoch: m[1], offset: Number(m[2])}
}

// shout pushes one shout and waits for its ok.
async function shout(channel, n) {
  const r = await outcome(channel.push("shout", {n}))
  assert.deepEqual(r, {status: "ok", response: {}}, `shout ${n}`)
}

for (const vsn of VSNS) {
  describe(`cluster vsn=${vsn}`, () => {
    test("every node delivers every broadcast, in one order, with the same positions", T_OPTS, async t => {
      const urls = nodes()
      const topic = uniqueTopic()
      // Two opted-in members and one plain member per node.
      const members = []
      for (const [i, url] of urls.entries()) {
        for (const kind of ["pos", "pos", "plain"]) {
          const c = await connect(t, vsn, {}, {name: `node${i}-${kind}`, url})
          const ch = c.socket.channel(topic, kind === "pos" ? {offset: null} : {})
          const got = []
          ch.on("shout", (payload, ref) => got.push({n: payload.n, ref}))
          const r = await join(ch)
          assert.equal(r.status, "ok", `join on node ${i}: ${JSON.stringify(r)}`)
          members.push({c, ch, got, kind, node: i, start: r.response && r.response.position})
        }
      }
      const starts = new Set(members.filter(m => m.kind === "pos").map(m => m.start))
      assert.equal(starts.size, 1, `every node reports one position before the first shout: ${[...starts]}`)
      // Publishers on every node shout at once: the order is the cluster's,
      // not any one node's.
      const PER_NODE = 20
      const pubs = members.filter(m => m.kind === "plain")
      await Promise.all(pubs.map(async (p, i) => {
        for (let k = 0; k < PER_NODE; k++) await shout(p.ch, i * 1000 + k)
      }))
      const total = PER_NODE * pubs.length
      await waitUntil(() => members.every(m => m.got.length >= total), {what: `${total} shouts on every member`, timeoutMs: 20000})
      const order = members[0].got.map(g => g.n)
      assert.equal(new Set(order).size, total, "no duplicates")
      const start = parsePosition([...starts][0])
      for (const m of members) {
        assert.equal(m.got.length, total, `member on node ${m.node} got ${m.got.length}`)
        assert.deepEqual(m.got.map(g => g.n), order, `member on node ${m.node} (${m.kind}) sees the same order`)
        if (m.kind === "pos") {
          assert.deepEqual(m.got.map(g => g.ref), order.map((_, i) => `p:${start.epoch}:${start.offset + i + 1}`),
            `member on node ${m.node}: contiguous positions, the same on every node`)
        } else {
          assert.deepEqual(m.got.map(g => g.ref), Array(total).fill(null), "plain members get null refs")
        }
      }
      // Each publisher's shouts keep its own order.
      for (let i = 0; i < pubs.length; i++) {
        const mine = order.filter(n => Math.floor(n / 1000) === i)
        assert.deepEqual(mine, Array.from({length: PER_NODE}, (_, k) => i * 1000 + k))
      }
      for (const m of members) assertWellFormed(m.c.rec)
    })

    test("a client that drops from node A is replayed on node C what node B published meanwhile", T_OPTS, async t => {
      const [A, B, C] = nodes()
      const topic = uniqueTopic()
      const pub = await connect(t, vsn, {}, {name: "publisher on B", url: B})
      const chP = pub.socket.channel(topic)
      assert.equal((await join(chP)).status, "ok")

      let last = null
      const got = []
      const onShout = (payload, ref) => { got.push({n: payload.n, ref}); last = ref }
      const a = await connect(t, vsn, {}, {name: "resumer on A", url: A})
      const chA = a.socket.channel(topic, () => ({offset: last}))
      chA.on("shout", onShout)
      assert.equal((await join(chA)).status, "ok")
      for (let n = 1; n <= 3; n++) await shout(chP, n)
      await waitUntil(() => got.length === 3, {what: "3 live shouts on A"})
      // A goes away for good; B publishes what the client will miss.
      await new Promise(resolve => a.socket.disconnect(resolve))
      const MISSED = 10
      for (let n = 4; n < 4 + MISSED; n++) await shout(chP, n)

      const c = await connect(t, vsn, {}, {name: "resumer on C", url: C})
      const chC = c.socket.channel(topic, () => ({offset: last}))
      chC.on("shout", onShout)
      const r = await join(chC)
      assert.equal(r.status, "ok")
      assert.equal(r.response.recovered, true, `resume on another node: ${JSON.stringify(r.response)}`)
      await waitUntil(() => got.length >= 3 + MISSED, {what: `${MISSED} replayed shouts on C`, timeoutMs: 10000})
      for (let n = 4 + MISSED; n < 7 + MISSED; n++) await shout(chP, n)
      const total = 6 + MISSED
      await waitUntil(() => got.length >= total, {what: "the live shouts on C"})
      assert.deepEqual(got.map(g => g.n), Array.from({length: total}, (_, i) => i + 1), "every shout exactly once, in order")
      const p0 = parsePosition(got[0].ref)
      assert.deepEqual(got.map(g => g.ref), got.map((_, i) => `p:${p0.epoch}:${p0.offset + i}`), "contiguous positions")
      assertWellFormed(c.rec)
    })

    test("a position older than the history, and a resume past max_replay, are not recovered", T_OPTS, async t => {
      const [A, B, C] = nodes()
      const pub = await connect(t, vsn, {}, {name: "publisher on A", url: A})
      // small:* keeps 5 events: resuming from the first of 10 cannot work.
      const small = uniqueTopic("small")
      const chS = pub.socket.channel(small, {offset: null})
      const s0 = await join(chS)
      assert.equal(s0.status, "ok")
      const first = s0.response.position
      for (let n = 1; n <= 2 * SMALL_HISTORY; n++) await shout(chS, n)
      const old = await connect(t, vsn, {}, {name: "too old on B", url: B})
      const gotOld = []
      const chOld = old.socket.channel(small, {offset: first})
      chOld.on("shout", p => gotOld.push(p.n))
      const rOld = await join(chOld)
      assert.equal(rOld.status, "ok")
      assert.equal(rOld.response.recovered, false, `older than the history: ${JSON.stringify(rOld.response)}`)

      // room:* keeps 100 but replays at most 20: missing 30 is not recovered,
      // missing 20 is.
      const room = uniqueTopic()
      const chR = pub.socket.channel(room, {offset: null})
      const r0 = await join(chR)
      const start = r0.response.position
      for (let n = 1; n <= MAX_REPLAY + 10; n++) await shout(chR, n)
      const far = await connect(t, vsn, {}, {name: "past max_replay on C", url: C})
      const gotFar = []
      const chFar = far.socket.channel(room, {offset: start})
      chFar.on("shout", p => gotFar.push(p.n))
      const rFar = await join(chFar)
      assert.equal(rFar.status, "ok")
      assert.equal(rFar.response.recovered, false, `past max_replay: ${JSON.stringify(rFar.response)}`)
      const p = parsePosition(start)
      const near = await connect(t, vsn, {}, {name: "within max_replay on C", url: C})
      const gotNear = []
      const chNear = near.socket.channel(room, {offset: `p:${p.epoch}:${p.offset + 10}`})
      chNear.on("shout", q => gotNear.push(q.n))
      const rNear = await join(chNear)
      assert.equal(rNear.response.recovered, true, `exactly max_replay missed: ${JSON.stringify(rNear.response)}`)
      await waitUntil(() => gotNear.length >= MAX_REPLAY, {what: `${MAX_REPLAY} replayed`})

      // One live shout: the unrecovered channels get only it.
      await shout(chR, 999)
      await shout(chS, 999)
      await waitUntil(() => gotFar.length >= 1 && gotOld.length >= 1 && gotNear.length >= MAX_REPLAY + 1, {what: "the live shouts"})
      assert.deepEqual(gotFar, [999], "no replay when not recovered")
      assert.deepEqual(gotOld, [999], "no replay when not recovered")
      assert.deepEqual(gotNear, [...Array.from({length: MAX_REPLAY}, (_, i) => i + 11), 999])
    })
  })
}
