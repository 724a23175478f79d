// Presence across three nodes on one Redis, with phoenix.js Presence:
// clients on every node see the same list; a player joining on node A
// appears for a client on node C; kill -9 of a node makes its players leave
// for everyone within 10 s; a graceful stop makes them leave at once.
//
// conformance_test.go's presence-cluster phase starts the nodes
// (PHXGATE_URLS, PHXGATE_PIDS) with tokens and room:* tracking presence,
// and afterwards restarts the stopped nodes under the same ids for
// presence-restart/. The topic is PHXGATE_TOPIC, shared with that phase.

import {test} from "node:test"
import assert from "node:assert/strict"
import {Presence} from "phoenix"
import {connect, join, waitUntil} from "../lib/harness.mjs"
import {token} from "../lib/jwt.mjs"

const T_OPTS = {timeout: 60000}
const VSN = "2.0.0"

function env(name) {
  const v = process.env[name]
  assert.ok(v, `${name} is not set; run through \`go test ./clients/js\``)
  return v
}

async function member(t, url, player, topic) {
  const c = await connect(t, VSN, {params: {token: token(player)}, reconnectAfterMs: () => 60000}, {name: `${player}`, url})
  const ch = c.socket.channel(topic, {})
  const presence = new Presence(ch)
  const r = await join(ch)
  assert.equal(r.status, "ok", `${player} joins: ${JSON.stringify(r)}`)
  return {c, ch, presence, player}
}

function keys(presence) {
  const out = []
  presence.list((key, {metas}) => { out.push(`${key}×${metas.length}`) })
  return out.sort()
}

test("one list across three nodes; kill -9 and graceful stop make the nodes' players leave", T_OPTS, async t => {
  const urls = env("PHXGATE_URLS").split(",")
  const pids = env("PHXGATE_PIDS").split(",").map(Number)
  const topic = env("PHXGATE_TOPIC")
  // Two players on each node; the observer on node 0 stays to the end.
  const members = []
  for (const [i, url] of urls.entries()) {
    for (const n of [0, 1]) members.push(await member(t, url, `p${i}${n}`, topic))
  }
  const all = members.map(m => `${m.player}×1`).sort()
  for (const m of members) {
    await waitUntil(() => JSON.stringify(keys(m.presence)) === JSON.stringify(all), {what: `${m.player} to see all six`, timeoutMs: 10000})
  }
  // A player joining on node 0 appears for a client on node 2.
  const late = await member(t, urls[0], "late", topic)
  await waitUntil(() => keys(members[5].presence).includes("late×1"), {what: "the player joined on node 0, seen on node 2"})
  await new Promise(resolve => late.ch.leave().receive("ok", resolve))
  await waitUntil(() => !keys(members[5].presence).includes("late×1"), {what: "its leave, seen on node 2"})

  // kill -9 of node 2: its players leave for everyone within 10 s.
  const killed = Date.now()
  process.kill(pids[2], "SIGKILL")
  const after2 = all.filter(k => !k.startsWith("p2"))
  for (const m of members.slice(0, 4)) {
    await waitUntil(() => JSON.stringify(keys(m.presence)) === JSON.stringify(after2), {what: `${m.player}: node 2's players gone`, timeoutMs: 12000})
  }
  const took = Date.now() - killed
  t.diagnostic(`node 2 killed: its players left for everyone after ${took} ms`)
  assert.ok(took <= 10000, `leaves of a killed node took ${took} ms, want ≤ 10 s`)

  // Graceful stop of node 1: its players leave at once (the drain removes
  // them before closing any socket).
  const stopped = Date.now()
  process.kill(pids[1], "SIGTERM")
  const after1 = after2.filter(k => !k.startsWith("p1"))
  for (const m of members.slice(0, 2)) {
    await waitUntil(() => JSON.stringify(keys(m.presence)) === JSON.stringify(after1), {what: `${m.player}: node 1's players gone`, timeoutMs: 5000})
  }
  t.diagnostic(`node 1 drained: its players left after ${Date.now() - stopped} ms`)
  assert.ok(Date.now() - stopped < 3000, "a drained node's players leave at once, not after a timeout")
})
