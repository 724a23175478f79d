// A room whose presence_state is many times the gateway's write queue
// (write_queue_max_bytes 64 KiB in this phase: pieces of 8 KiB, where a
// whole state once had to fit 32 KiB) is joined by phoenix.js: the
// state comes as a presence_state and presence_diff pieces, and Presence
// ends with every player and the right metas, onSync fired, with the V2
// and V1 serializers, phoenix.js 1.6 and long-poll; players leaving,
// joining and updating while a joiner's pieces go out end in the right
// list.

import {test, after} from "node:test"
import assert from "node:assert/strict"
import WebSocket from "ws"
import {Socket} from "phoenix"
import * as phoenix16 from "phoenix-1-6"
import {gatewayURL, uniqueTopic, waitUntil} from "../lib/harness.mjs"
import {token, uniquePlayer} from "../lib/jwt.mjs"
import {member, listed} from "../lib/presence.mjs"

const FILL = Number(process.env.PHXGATE_BIGROOM || 300)
const PAD = 500
const T = {timeout: 120000}

// fill opens one socket per player and joins topic with them (metas {}
// from the echo backend), then gives each a meta of about PAD bytes
// through the Gateway API (Gateway.UpdatePresence), 25 at a time with a
// pause longer than the presence window between batches: a window's
// diffs all reach a socket at once, and more of them than its write
// queue holds would close it (1013).
async function fill(t, topic, n, prefix, watcher) {
  const players = Array.from({length: n}, (_, i) => `${prefix}-${i}`)
  const fillers = await Promise.all(players.map(p => new Promise((resolve, reject) => {
    const socket = new Socket(gatewayURL(), {transport: WebSocket, params: {token: token(p)}, reconnectAfterMs: () => 60000, heartbeatIntervalMs: 60000})
    socket.connect()
    const ch = socket.channel(topic, {})
    ch.join(30000).receive("ok", () => resolve({player: p, socket, ch})).receive("error", reject).receive("timeout", () => reject(new Error(`${p} join timeout`)))
  })))
  t.after(() => Promise.all(fillers.map(f => new Promise(r => f.socket.disconnect(r)))))
  for (let i = 0; i < n; i += 25) {
    await Promise.all(players.slice(i, i + 25).map((p, j) => setMeta(topic, p, {n: i + j, pad: "x".repeat(PAD)})))
    await waitUntil(() => players.slice(i, i + 25).every(p => watcher.presence.list((k, {metas}) => k === p && metas[0].pad).some(Boolean)),
      {what: `the watcher to see updates ${i}..${i + 24}`, timeoutMs: 10000})
    await new Promise(res => setTimeout(res, 60)) // the next batch in a later window
  }
  return fillers
}

async function setMeta(topic, player, meta) {
  const r = await fetch(`${process.env.PHXGATE_CONTROL}/update-presence`, {method: "POST", body: JSON.stringify({topic, player, meta})})
  assert.equal(r.status, 200, `update-presence ${player}: ${await r.text()}`)
}

// presenceFrames counts a member's presence frames (as its socket recorded
// them): the presence_state and the pieces sent as presence_diff.
function presenceFrames(m, topic) {
  let states = 0, diffs = 0, biggest = 0
  for (const e of m.c.rec.frames("in")) {
    if (e.binary || !e.data.includes(topic)) continue
    if (e.data.includes('"presence_state"')) states++
    if (e.data.includes('"presence_diff"')) diffs++
    biggest = Math.max(biggest, e.data.length)
  }
  return {states, diffs, biggest}
}

// summary is a member's list: keys and metas' refs.
function summary(presence) {
  return Object.entries(listed(presence)).map(([k, metas]) => `${k}:${metas.map(m => m.phx_ref).sort().join(",")}`).sort().join("|")
}

// The room outlives each test: its sockets close when the file is done.
const cleanups = []
const suite = {after: f => cleanups.push(f), diagnostic: () => {}}
after(() => Promise.all(cleanups.map(f => f())))

let room
async function bigRoom() {
  if (room) return room
  const t = suite
  const topic = uniqueTopic("room")
  const prefix = uniquePlayer("fill")
  // The watcher joins first and sees every change as a diff.
  const watcher = await member(t, "2.0.0", uniquePlayer("watcher"), topic, "watcher")
  const fillers = await fill(t, topic, FILL, prefix, watcher)
  room = {topic, prefix, fillers, watcher}
  return room
}

// checkList checks a joiner's list: every filler with its meta, the
// joiner, and (once the joiners of earlier tests have left) the
// watcher's list exactly.
async function checkList(presence, {topic, prefix, watcher}, extra) {
  const list = {}
  presence.list((k, {metas}) => { list[k] = metas })
  for (let i = 0; i < FILL; i++) {
    const metas = list[`${prefix}-${i}`]
    assert.ok(metas, `${prefix}-${i} listed`)
    assert.equal(metas.length, 1, `${prefix}-${i}: one meta`)
    assert.equal(metas[0].n, i)
    assert.equal(metas[0].pad.length, PAD)
  }
  for (const p of extra) assert.ok(list[p], `${p} listed (${topic})`)
  await waitUntil(() => summary(presence) === summary(watcher.presence), {what: "the joiner's list to be the watcher's", timeoutMs: 30000})
}

for (const [vsn, transport] of [["2.0.0", "websocket"], ["1.0.0", "websocket"], ["2.0.0", "longpoll"]]) {
  test(`a room of ${FILL} players with ${PAD}-byte metas is joined in pieces (vsn ${vsn}, ${transport})`, T, async t => {
    const r = await bigRoom()
    const me = uniquePlayer("joiner")
    const m = await member(t, vsn, me, r.topic, me, {longpoll: transport === "longpoll"})
    await waitUntil(() => Object.keys(listed(m.presence)).length >= FILL + 2, {what: `${me} to list the room`, timeoutMs: 30000})
    await checkList(m.presence, r, [me])
    assert.ok(m.events.syncs >= 1, "onSync fired")
    if (transport === "websocket") {
      const f = presenceFrames(m, r.topic)
      assert.equal(f.states, 1, "one presence_state")
      assert.ok(f.diffs >= 10, `the state came in pieces: ${f.diffs} presence_diff`)
      assert.ok(f.biggest < 9000, `every frame within an eighth of the write queue: ${f.biggest} bytes`)
    }
  })
}

test(`phoenix.js 1.6 joins the room of ${FILL} players`, T, async t => {
  const r = await bigRoom()
  const me = uniquePlayer("old")
  const socket = new phoenix16.Socket(gatewayURL(), {transport: WebSocket, params: {token: token(me)}, reconnectAfterMs: () => 20})
  socket.connect()
  t.after(() => new Promise(resolve => socket.disconnect(resolve)))
  const ch = socket.channel(r.topic, {})
  const presence = new phoenix16.Presence(ch)
  let syncs = 0
  presence.onSync(() => syncs++)
  await new Promise((resolve, reject) => ch.join().receive("ok", resolve).receive("error", reject))
  const count = () => { let n = 0; presence.list(() => { n++ }); return n }
  await waitUntil(() => count() >= FILL + 2, {what: "phoenix.js 1.6 to list the room", timeoutMs: 30000})
  await checkList(presence, r, [me])
  assert.ok(syncs >= 1)
})

// Players leave, join and update while joiners' pieces go out: each
// joiner ends with the list of a member joined before (which saw every
// change as a diff), and that list is what happened.
test("leaves, joins and updates while the pieces go out end in the right list", T, async t => {
  const r = await bigRoom()
  const watcher = r.watcher
  const joiners = []
  const left = []
  const joined = []
  for (let round = 0; round < 6; round++) {
    const me = uniquePlayer(`j${round}`)
    const pending = member(t, round % 2 ? "1.0.0" : "2.0.0", me, r.topic, me)
    // Changes at different moments of the join: at once, after a few ms,
    // and after the reply.
    if (round >= 2) await new Promise(res => setTimeout(res, round * 3))
    const f = r.fillers[FILL - 1 - round] // keys late in the state
    f.ch.leave()
    left.push(f.player)
    const newcomer = uniquePlayer(`n${round}`)
    const s = new Socket(gatewayURL(), {transport: WebSocket, params: {token: token(newcomer)}})
    s.connect()
    t.after(() => new Promise(res => s.disconnect(res)))
    s.channel(r.topic, {}).join()
    joined.push(newcomer)
    await setMeta(r.topic, r.fillers[round].player, {n: round, pad: "y".repeat(PAD)})
    joiners.push(await pending)
  }
  const expected = FILL + 1 /* watcher */ + joiners.length + joined.length - left.length
  // By content, not only by count: a leave still on its way and a join
  // not yet made add up to the same number.
  const settled = () => {
    const l = listed(watcher.presence)
    return Object.keys(l).length === expected && left.every(p => !l[p]) && joined.every(p => l[p])
  }
  await waitUntil(settled, {what: `the watcher to list ${expected}, without those who left, with those who joined`, timeoutMs: 30000})
  await waitUntil(() => joiners.every(j => summary(j.presence) === summary(watcher.presence)), {what: "every joiner's list to be the watcher's", timeoutMs: 30000})
  const list = listed(watcher.presence)
  for (const p of left) assert.equal(list[p], undefined, `${p} left`)
  for (const p of joined) assert.ok(list[p], `${p} joined`)
  for (let round = 0; round < 6; round++) {
    const metas = list[r.fillers[round].player]
    assert.equal(metas.length, 1)
    assert.equal(metas[0].pad[0], "y", "the update is listed")
  }
})
