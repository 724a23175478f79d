// phoenix.js `Presence` over the LongPoll transport (PROTOCOL.md §1.2, §4):
// onJoin/onLeave/onSync and list() as over WebSocket; a session the server
// ended (no poll for 1.5 windows) is a leave for the others, and phoenix.js
// comes back (410 → close 3410 → reconnect → rejoin) with a fresh
// presence_state; a room of WebSocket and long-poll members agrees on one
// list.
//
// Gateway: conformance_test.go's longpoll-features phase (tokens, lobby:*
// with presence, a 1 s long-poll window).

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {waitUntil, uniqueTopic, assertWellFormed} from "../lib/harness.mjs"
import {uniquePlayer} from "../lib/jwt.mjs"
import {member, listed, counts} from "../lib/presence.mjs"

const T_OPTS = {timeout: 60000}
const VSN = "2.0.0" // phoenix.js cannot speak V1 over long-poll (harness.mjs transportVsns)

function windowMs() {
  const w = Number(process.env.PHXGATE_LONGPOLL_WINDOW_MS)
  assert.ok(w > 0, "PHXGATE_LONGPOLL_WINDOW_MS is not set; run through `go test ./clients/js`")
  return w
}

// loseSession stops m's long-poll transport from polling (its requests are
// aborted, as when a laptop sleeps) until the server has expired the
// session, then lets it poll again. Returns once it polls again.
async function loseSession(m, untilGone) {
  const tr = m.c.socket.conn
  assert.equal(tr.constructor.name, "RecordingLongPoll", "a long-poll member")
  const poll = tr.poll
  tr.poll = () => {}
  for (const {req} of tr.reqs) req && req.abort()
  tr.reqs.clear()
  await untilGone()
  tr.poll = poll
  tr.poll()
}

const same = (a, b) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort())

describe("presence over long-poll", () => {
  test("joins, a second tab, leaves, and a lost session: callbacks and list() as over WebSocket", T_OPTS, async t => {
    const topic = uniqueTopic("lobby")
    const alice = uniquePlayer("alice"), bob = uniquePlayer("bob")
    const a = await member(t, VSN, alice, topic, "alice", {longpoll: true})
    await waitUntil(() => counts(a.presence)[alice] === 1, {what: "alice sees herself"})
    assert.ok(a.events.syncs >= 1, "onSync after presence_state")
    const b = await member(t, VSN, bob, topic, "bob", {longpoll: true})
    const both = {[alice]: 1, [bob]: 1}
    await waitUntil(() => same(counts(a.presence), both), {what: "alice sees bob"})
    // list() right after the join: bob's presence_state already holds both.
    await waitUntil(() => same(counts(b.presence), both), {what: "bob sees alice and himself"})
    assert.ok(a.events.joins.some(j => j.key === bob && !j.current), `onJoin(bob, undefined, …): ${JSON.stringify(a.events.joins)}`)
    for (const metas of Object.values(listed(a.presence))) {
      assert.match(metas[0].phx_ref, /^[A-Za-z0-9_-]{16}$/, "phx_ref: 16 url-safe characters")
    }

    // A second tab of bob's: one key, two metas, onJoin with a current.
    const b2 = await member(t, VSN, bob, topic, "bob tab 2", {longpoll: true})
    await waitUntil(() => counts(a.presence)[bob] === 2, {what: "bob's two metas"})
    assert.ok(a.events.joins.some(j => j.key === bob && j.current), "onJoin(bob, current, …) for the second tab")
    assert.equal(new Set(listed(a.presence)[bob].map(m => m.phx_ref)).size, 2, "each session has its own phx_ref")

    // The tab leaves: one meta left, onLeave with a current.
    const leaving = listed(b2.presence)[bob].map(m => m.phx_ref)
    await new Promise(resolve => b2.ch.leave().receive("ok", resolve))
    await waitUntil(() => counts(a.presence)[bob] === 1, {what: "bob back to one meta"})
    const left = a.events.leaves.find(l => l.key === bob)
    assert.ok(left && left.remaining === 1, `onLeave(bob, current with 1 meta, …): ${JSON.stringify(a.events.leaves)}`)
    assert.ok(leaving.includes(left.refs[0]), "the tab's meta left")

    // Bob's session is lost: the server ends it after 1.5 windows without
    // a poll, which is a leave for alice; bob's next poll gets 410, and
    // phoenix.js closes with 3410, reconnects and rejoins, and gets a new
    // presence_state.
    const bobRef = listed(a.presence)[bob][0].phx_ref
    const syncs = b.events.syncs
    const oldJoin = b.ch.joinRef()
    const leavesBefore = a.events.leaves.length
    await loseSession(b, () => waitUntil(() => counts(a.presence)[bob] === undefined,
      {what: "alice sees bob's expired session leave", timeoutMs: 5 * windowMs() + 5000}))
    const gone = a.events.leaves.slice(leavesBefore).find(l => l.key === bob)
    assert.ok(gone && gone.remaining === 0 && gone.refs[0] === bobRef, `onLeave(bob, no metas, bob's meta): ${JSON.stringify(a.events.leaves)}`)
    const closed = await b.c.rec.waitEvent("close", {timeoutMs: 10000})
    assert.equal(closed.code, 3410, `phoenix.js closes a lost session with 3410 session_gone\n${b.c.rec.dump()}`)
    await waitUntil(() => b.ch.state === "joined" && b.ch.joinRef() !== oldJoin && b.events.syncs > syncs,
      {what: "bob's rejoin and its presence_state", timeoutMs: 10000})
    const state = await b.c.rec.waitIn(m => m.event === "presence_state" && m.topic === topic && m.join_ref === b.ch.joinRef(),
      {what: "presence_state for the rejoin"})
    assert.ok(state.seq > closed.seq, "the presence_state came after the 3410")
    assert.deepEqual(Object.keys(state.msg.payload).sort(), [alice, bob].sort(), `a fresh presence_state with both: ${state.data}`)
    assert.notEqual(state.msg.payload[bob].metas[0].phx_ref, bobRef, "bob's new session has a new phx_ref")
    await waitUntil(() => same(counts(b.presence), both), {what: "bob's list after the rejoin"})
    await waitUntil(() => same(counts(a.presence), both), {what: "alice sees bob again"})
    assert.equal(listed(a.presence)[bob][0].phx_ref, state.msg.payload[bob].metas[0].phx_ref, "alice and bob agree on bob's new meta")
    assert.deepEqual(a.c.rec.events("close"), [], "alice's session was never interrupted")
    for (const m of [a, b]) assertWellFormed(m.c.rec)
  })

  test("a room of WebSocket and long-poll members: everyone sees the same list", T_OPTS, async t => {
    const topic = uniqueTopic("lobby")
    const specs = [
      {name: "ws-1", longpoll: false}, {name: "lp-1", longpoll: true},
      {name: "ws-2", longpoll: false}, {name: "lp-2", longpoll: true},
    ]
    const members = []
    for (const s of specs) {
      members.push(await member(t, VSN, uniquePlayer(s.name), topic, s.name, {longpoll: s.longpoll}))
    }
    for (const m of members) {
      assert.equal(m.c.socket.conn.constructor.name, m.c.rec.name.startsWith("lp") ? "RecordingLongPoll" : "RecordingWebSocket", m.c.rec.name)
    }
    const want = Object.fromEntries(members.map(m => [m.player, 1]))
    // Everyone sees all four, with the same metas (phx_refs included).
    await waitUntil(() => members.every(m => same(counts(m.presence), want)), {what: "four members everywhere"})
    const refs = m => JSON.stringify(Object.entries(listed(m.presence)).map(([k, ms]) => [k, ms.map(x => x.phx_ref)]).sort())
    for (const m of members.slice(1)) assert.equal(refs(m), refs(members[0]), `${m.c.rec.name} and ws-1 agree`)

    // A long-poll member and a WebSocket member leave; the two left agree.
    const [ws1, lp1, ws2, lp2] = members
    await new Promise(resolve => lp1.ch.leave().receive("ok", resolve))
    await new Promise(resolve => ws2.ch.leave().receive("ok", resolve))
    const rest = {[ws1.player]: 1, [lp2.player]: 1}
    await waitUntil(() => same(counts(ws1.presence), rest) && same(counts(lp2.presence), rest), {what: "the two leaves everywhere"})
    assert.equal(refs(ws1), refs(lp2))
    for (const m of [ws1, lp2]) {
      const leftKeys = m.events.leaves.map(l => l.key).sort()
      assert.deepEqual(leftKeys, [lp1.player, ws2.player].sort(), `${m.c.rec.name}'s onLeave calls: ${JSON.stringify(m.events.leaves)}`)
    }
    for (const m of members) assertWellFormed(m.c.rec)
  })
})
