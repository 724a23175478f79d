// Presence with the unmodified phoenix.js `Presence` object (PROTOCOL.md §4):
// onJoin/onLeave/onSync fire as against Phoenix and list() is right after
// joins, leaves, an update and a client rejoin; a reconnect within a route's
// leave_grace makes no diff, an expired grace exactly one leave.
//
// The gateway (conformance_test.go's presence phase) runs with tokens
// (sub = player id), room:* (echo, presence) and grace:* (echo, presence,
// leave_grace 1s). PHXGATE_CONTROL is a helper of the Go test that calls the
// Gateway API's UpdatePresence.

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {VSNS} from "../lib/codec.mjs"
import {waitUntil, uniqueTopic, assertWellFormed} from "../lib/harness.mjs"
import {uniquePlayer} from "../lib/jwt.mjs"
import {member, listed, counts} from "../lib/presence.mjs"

const T_OPTS = {timeout: 60000}
const GRACE_MS = 1000

async function control(path, body) {
  const base = process.env.PHXGATE_CONTROL
  assert.ok(base, "PHXGATE_CONTROL is not set; run the presence phase through `go test ./clients/js`")
  const res = await fetch(base + path, {method: "POST", body: JSON.stringify(body)})
  assert.equal(res.status, 200, `control ${path}: ${res.status} ${await res.text()}`)
}

for (const vsn of VSNS) {
  describe(`presence vsn=${vsn}`, () => {
    test("joins, a second tab, leaves, an update and a rejoin: callbacks and list() as against Phoenix", T_OPTS, async t => {
      const topic = uniqueTopic()
      const alice = uniquePlayer("alice"), bob = uniquePlayer("bob")
      const a = await member(t, vsn, alice, topic, "alice")
      await waitUntil(() => counts(a.presence)[alice] === 1, {what: "alice sees herself"})
      assert.ok(a.events.syncs >= 1, "onSync after presence_state")
      const b = await member(t, vsn, bob, topic, "bob")
      const both = {[alice]: 1, [bob]: 1}
      await waitUntil(() => JSON.stringify(counts(a.presence)) === JSON.stringify(both), {what: "alice sees bob"})
      await waitUntil(() => JSON.stringify(counts(b.presence)) === JSON.stringify(both), {what: "bob sees alice and himself"})
      assert.ok(a.events.joins.some(j => j.key === bob && !j.current), `onJoin(bob, undefined, …): ${JSON.stringify(a.events.joins)}`)
      for (const metas of Object.values(listed(a.presence))) {
        assert.match(metas[0].phx_ref, /^[A-Za-z0-9_-]{16}$/, "phx_ref: 16 url-safe characters")
      }

      // Bob opens a second tab: one key, two metas; onJoin with a current.
      const b2 = await member(t, vsn, bob, topic, "bob tab 2")
      await waitUntil(() => counts(a.presence)[bob] === 2, {what: "bob's two metas"})
      assert.ok(a.events.joins.some(j => j.key === bob && j.current), "onJoin(bob, current, …) for the second tab")
      const refs = listed(a.presence)[bob].map(m => m.phx_ref)
      assert.equal(new Set(refs).size, 2, "each connection has its own phx_ref")

      // The second tab leaves: one meta left, onLeave with a current.
      const leaving = listed(b2.presence)[bob].map(m => m.phx_ref)
      await new Promise(resolve => b2.ch.leave().receive("ok", resolve))
      await waitUntil(() => counts(a.presence)[bob] === 1, {what: "bob back to one meta"})
      const left = a.events.leaves.find(l => l.key === bob)
      assert.ok(left && left.remaining === 1, `onLeave(bob, current with 1 meta, …): ${JSON.stringify(a.events.leaves)}`)
      assert.ok(leaving.includes(left.refs[0]))

      // An update (Gateway.UpdatePresence): one diff, old meta left, new
      // meta with phx_ref_prev joined.
      const before = listed(a.presence)[alice][0]
      const diffsBefore = a.diffs.length
      await control("/update-presence", {topic, player: alice, meta: {status: "away"}})
      await waitUntil(() => listed(a.presence)[alice]?.[0]?.status === "away", {what: "alice's new meta"})
      const after = listed(a.presence)[alice]
      assert.equal(after.length, 1)
      assert.notEqual(after[0].phx_ref, before.phx_ref)
      assert.equal(after[0].phx_ref_prev, before.phx_ref)
      const upd = a.diffs.slice(diffsBefore).find(d => d.joins[alice])
      assert.ok(upd && upd.leaves[alice], `one diff with alice in joins and leaves: ${JSON.stringify(a.diffs.slice(diffsBefore))}`)
      assert.equal(upd.leaves[alice].metas[0].phx_ref, before.phx_ref)

      // Bob's connection drops; phoenix.js reconnects and rejoins, gets
      // presence_state again, and its list is right (alice away, bob once).
      const syncs = b.events.syncs
      b.c.socket.conn.close()
      await waitUntil(() => b.events.syncs > syncs && b.ch.state === "joined", {what: "bob's rejoin and new presence_state", timeoutMs: 10000})
      await waitUntil(() => {
        const l = listed(b.presence)
        return l[alice]?.length === 1 && l[alice][0].status === "away" && l[bob]?.length === 1
      }, {what: "bob's list after the rejoin", timeoutMs: 10000})
      await waitUntil(() => counts(a.presence)[bob] === 1, {what: "alice still sees bob once"})
      for (const m of [a, b]) assertWellFormed(m.c.rec)
    })

    test("a reconnect within leave_grace makes no diff; an expired grace makes exactly one leave", T_OPTS, async t => {
      const topic = uniqueTopic("grace")
      const watcher = uniquePlayer("watcher"), carol = uniquePlayer("carol")
      const w = await member(t, vsn, watcher, topic, "watcher")
      const c = await member(t, vsn, carol, topic, "carol")
      await waitUntil(() => counts(w.presence)[carol] === 1, {what: "carol present"})
      const about = () => w.diffs.filter(d => d.joins[carol] || d.leaves[carol])
      assert.equal(about().length, 1, "carol's join")

      // A dropped connection, back within the grace: no diff.
      c.c.socket.conn.close()
      await waitUntil(() => c.ch.state === "joined" && c.events.syncs >= 2, {what: "carol's rejoin", timeoutMs: 10000})
      await new Promise(r => setTimeout(r, GRACE_MS + 500)) // past the grace the seat would have left
      assert.deepEqual(about().length, 1, `no diff about carol for a reconnect within the grace: ${JSON.stringify(about())}`)
      assert.equal(counts(w.presence)[carol], 1)

      // Gone for good: one leave, once the grace has passed.
      const gone = Date.now()
      c.c.socket.disconnect()
      await waitUntil(() => counts(w.presence)[carol] === undefined, {what: "carol's leave", timeoutMs: 10000})
      assert.ok(Date.now() - gone >= GRACE_MS - 100, `the leave waited for the grace (${Date.now() - gone} ms)`)
      await new Promise(r => setTimeout(r, 300))
      const leaves = about().filter(d => d.leaves[carol])
      assert.equal(leaves.length, 1, `exactly one leave: ${JSON.stringify(about())}`)
    })
  })
}
