// The third-party `phoenix-channels` client (unchanged) against phxgate:
// connect, join, refused joins, echo, broadcasts, crash and rejoin, leave,
// duplicate joins and unmatched topics. Expected frames are what Phoenix
// 1.8.12 sends to this client (PROTOCOL.md §2.1, §3.1): it connects with
// vsn=1.0.0 and sends V1 objects with NO join_ref key, so server-side the
// channel's join_ref is nil and phx_close/phx_error carry "ref":null.

import {test} from "node:test"
import assert from "node:assert/strict"
import {
  connect, join, outcome, uniqueTopic, waitUntil, v1, v1Reply,
  assertExact, assertWellFormed, assertClientFrame,
} from "./lib/client.mjs"

test("connect: V1 upgrade URL with vsn=1.0.0 and the connect params, no subprotocol, no extensions", async t => {
  const {rec, socket} = await connect(t, {params: {hint: "abc", user_id: 7}})
  const [c] = rec.events("connect")
  const u = new URL(c.url)
  assert.equal(u.pathname, "/socket/websocket")
  assert.equal(u.search, "?hint=abc&user_id=7&vsn=1.0.0")
  const [open] = rec.events("open")
  assert.ok(!open.protocol, `no subprotocol was offered, none may be chosen: ${open.protocol}`)
  assert.equal(String(open.extensions ?? ""), "", "no extensions")
  assert.equal(socket.connectionState(), "open")
})

test("client close: disconnect() and disconnect(cb, 4000, reason) complete the closing handshake; no reconnect", async t => {
  // The websocket package stops reading once it has sent its own close
  // frame (WebSocketConnection.processReceivedData returns when
  // !connected), so the server's echoed close frame is invisible to this
  // client and the close event reports the client's own code. What this
  // client can see is that the server completes the close (TCP closed well
  // before the library's 5 s close timeout) and that it does not reconnect.
  // The echo itself (same code, empty reason) is checked by clients/js.
  for (const [code, reason] of [[undefined, undefined], [4000, "bye"]]) {
    const {socket, rec} = await connect(t)
    const started = Date.now()
    socket.disconnect(undefined, code, reason)
    const close = await rec.waitEvent("close")
    assert.equal(close.code, code ?? 1000)
    assert.ok(close.at - started < 4000, `close completed by the server, not by the client's close timer (${close.at - started} ms)`)
    assert.equal(rec.events("connect").length, 1, "no reconnect after a client-initiated close")
  }
})

test("join ok: exact reply, the client's channel is joined", async t => {
  const {socket, rec, topic} = await connect(t)
  const ch = socket.channel(topic, {hello: "world"})
  const res = await join(ch)
  assert.deepEqual(res, {status: "ok", response: {}})
  assert.equal(ch.state, "joined")

  const out = rec.topicFrames(topic, "out")
  assert.equal(out.length, 1)
  assertClientFrame(out[0])
  assert.equal(out[0].data, `{"topic":"${topic}","event":"phx_join","payload":{"hello":"world"},"ref":"${out[0].msg.ref}"}`)
  const [reply] = rec.topicFrames(topic)
  assertExact(reply, v1Reply(topic, out[0].msg.ref, "ok", {}), "join reply")
  assertWellFormed(rec)
})

test("join denied: error reply reaches receive('error'); this old client does not retry", async t => {
  const {socket, rec, topic} = await connect(t)
  const ch = socket.channel(topic, {deny: true})
  let scheduled = 0
  const orig = ch.rejoinTimer.scheduleTimeout.bind(ch.rejoinTimer)
  ch.rejoinTimer.scheduleTimeout = () => { scheduled++; orig() }

  const res = await join(ch)
  assert.deepEqual(res, {status: "error", response: {reason: "denied"}})
  const [out] = rec.topicFrames(topic, "out")
  assertExact(rec.topicFrames(topic)[0], v1Reply(topic, out.msg.ref, "error", {reason: "denied"}), "denied join reply")

  // phoenix.js 1.8 would go `errored` and retry forever (PROTOCOL.md §3.2).
  // This client registers no handler for an error join reply: the channel
  // stays `joining`, the join timeout is cancelled by the reply and no
  // rejoin is scheduled. Prove nothing else is sent for the topic by a
  // later round trip on the same connection (frames are FIFO).
  assert.equal(ch.state, "joining")
  assert.equal(ch.joinPush.timeoutTimer, null)
  assert.equal(scheduled, 0)
  const other = socket.channel(uniqueTopic(), {})
  assert.equal((await join(other)).status, "ok")
  assert.equal((await outcome(other.push("echo", {x: 1}))).status, "ok")
  assert.equal(rec.topicFrames(topic, "out").length, 1, `exactly one phx_join for the denied topic\n${rec.dump()}`)
  assert.equal(scheduled, 0)
  assertWellFormed(rec)
})

test("echo: the reply carries the push's ref and the payload as response, byte for byte", async t => {
  const {socket, rec, topic} = await connect(t)
  const ch = socket.channel(topic, {})
  assert.equal((await join(ch)).status, "ok")
  // Keys in sorted order so the exact bytes Phoenix (which re-encodes with
  // sorted keys) would send are also what a pass-through server sends.
  const payloads = [
    {},
    {a: 1, b: "x"},
    {a: [1, 2.5, {b: null}], n: -0.125, s: "héllo ☃ \"quoted\" / \\ \u0001", t: true},
    {deep: {deeper: {deepest: [[], {}, ""]}}},
  ]
  for (const p of payloads) {
    const from = rec.entries.length
    const push = ch.push("echo", p)
    const res = await outcome(push)
    assert.deepEqual(res, {status: "ok", response: p})
    const out = await rec.waitOut(m => m.topic === topic && m.event === "echo", {from})
    assertClientFrame(out)
    assert.equal(out.msg.ref, push.ref)
    const reply = await rec.waitIn(m => m.topic === topic && m.ref === push.ref, {from})
    assertExact(reply, v1Reply(topic, push.ref, "ok", p), "echo reply")
  }
  assertWellFormed(rec)
})

test("pushes made before the join reply are buffered by the client, sent after it, and answered", async t => {
  const {socket, rec, topic} = await connect(t)
  const ch = socket.channel(topic, {})
  const joined = join(ch)
  const early = outcome(ch.push("echo", {early: true}))
  assert.equal((await joined).status, "ok")
  assert.deepEqual(await early, {status: "ok", response: {early: true}})
  const events = rec.topicFrames(topic, "out").map(e => e.msg.event)
  assert.deepEqual(events, ["phx_join", "echo"])
  assertWellFormed(rec)
})

test("shout reaches two clients; the sender sees the broadcast before its own reply", async t => {
  const a = await connect(t, {}, {name: "A"})
  const b = await connect(t, {}, {name: "B"})
  const topic = a.topic
  const chA = a.socket.channel(topic, {})
  const chB = b.socket.channel(topic, {})
  assert.equal((await join(chA)).status, "ok")
  assert.equal((await join(chB)).status, "ok")

  const gotA = [], gotB = []
  chA.on("shout", p => gotA.push(p))
  chB.on("shout", p => gotB.push(p))
  const body = {from: "A", text: "hi"}
  const fromA = a.rec.entries.length, fromB = b.rec.entries.length
  const push = chA.push("shout", body)
  assert.deepEqual(await outcome(push), {status: "ok", response: {}})
  await waitUntil(() => gotB.length === 1, {what: "B's shout callback"})

  const broadcast = v1(topic, "shout", body, null)
  const inA = a.rec.topicFrames(topic, "in", fromA - 1)
  assert.equal(inA.length, 2, a.rec.dump(fromA))
  assertExact(inA[0], broadcast, "broadcast to the sender")
  assertExact(inA[1], v1Reply(topic, push.ref, "ok", {}), "reply to the sender")
  const inB = b.rec.topicFrames(topic, "in", fromB - 1)
  assert.equal(inB.length, 1, b.rec.dump(fromB))
  assertExact(inB[0], broadcast, "broadcast to the other client")
  assert.deepEqual(gotA, [body])
  assert.deepEqual(gotB, [body])
  assertWellFormed(a.rec)
  assertWellFormed(b.rec)
})

test("noreply: nothing comes back; the client's push times out and the channel keeps working", async t => {
  const {socket, rec, topic} = await connect(t)
  const ch = socket.channel(topic, {})
  assert.equal((await join(ch)).status, "ok")
  const silent = ch.push("noreply", {}, 300)
  assert.deepEqual(await outcome(silent), {status: "timeout", response: {}})
  const echo = ch.push("echo", {after: "noreply"})
  assert.equal((await outcome(echo)).status, "ok")
  // FIFO: had the server answered noreply, it would precede the echo reply.
  assert.deepEqual(rec.in.filter(e => e.msg.ref === silent.ref), [], "no reply to noreply")
  assert.equal(ch.state, "joined")
  assertWellFormed(rec)
})

test("crash → phx_error (ref null: the join had no join_ref) → onError, errored, automatic rejoin", async t => {
  const {socket, rec, topic} = await connect(t)
  const ch = socket.channel(topic, {})
  const errors = []
  ch.onError(reason => errors.push(reason))
  const [firstJoin] = [await join(ch)]
  assert.equal(firstJoin.status, "ok")
  const joinRef1 = ch.joinRef()

  const from = rec.entries.length
  ch.push("crash", {}, 1000)
  const err = await rec.waitIn(m => m.topic === topic && m.event === "phx_error", {from})
  // Phoenix: [J,J,T,"phx_error",{"reason":"channel_crash"}] with J the join
  // frame's join_ref, which this V1 client never sends: null.
  assertExact(err, v1(topic, "phx_error", {reason: "channel_crash"}, null), "phx_error")
  assert.deepEqual(errors, [{reason: "channel_crash"}])

  // The client rejoins with a new ref after reconnectAfterMs (20 ms here).
  const rejoin = await rec.waitOut(m => m.topic === topic && m.event === "phx_join", {from})
  assertClientFrame(rejoin)
  assert.notEqual(rejoin.msg.ref, joinRef1)
  const ok = await rec.waitIn(m => m.topic === topic && m.ref === rejoin.msg.ref, {from})
  assertExact(ok, v1Reply(topic, rejoin.msg.ref, "ok", {}), "rejoin reply")
  await waitUntil(() => ch.state === "joined", {what: "channel joined again"})
  assert.equal(ch.joinRef(), rejoin.msg.ref)
  // No reply was ever sent to the crash push.
  const crashOut = rec.out.find(e => e.msg.topic === topic && e.msg.event === "crash")
  assert.deepEqual(rec.in.filter(e => e.msg.ref === crashOut.msg.ref), [])

  assert.deepEqual(await outcome(ch.push("echo", {again: true})), {status: "ok", response: {again: true}})
  assertWellFormed(rec)
})

test("leave: ok reply then phx_close (ref null); onClose, channel removed; the topic is gone server-side", async t => {
  const {socket, rec, topic} = await connect(t)
  const ch = socket.channel(topic, {})
  assert.equal((await join(ch)).status, "ok")
  const closes = []
  ch.onClose(p => closes.push(p))

  const from = rec.entries.length
  const leave = ch.leave()
  assert.deepEqual(await outcome(leave, ["ok", "timeout"]), {status: "ok", response: {}})
  const close = await rec.waitIn(m => m.topic === topic && m.event === "phx_close", {from})
  const inb = rec.topicFrames(topic, "in", from - 1)
  assert.equal(inb.length, 2, rec.dump(from))
  assertExact(inb[0], v1Reply(topic, leave.ref, "ok", {}), "leave reply")
  assertExact(close, v1(topic, "phx_close", {}, null), "phx_close")
  assert.equal(inb[1], close)
  assert.equal(ch.state, "closed")
  assert.ok(!socket.channels.includes(ch))
  assert.deepEqual(closes, ["leave"], "onClose ran once, on the ok reply (the late phx_close finds no channel)")

  // A push on the topic now (through the socket; the channel object is
  // closed) gets "unmatched topic", as in Phoenix.
  const ref = socket.makeRef()
  const f2 = rec.entries.length
  socket.push({topic, event: "echo", payload: {}, ref})
  const r = await rec.waitIn(m => m.topic === topic && m.ref === ref, {from: f2})
  assertExact(r, v1Reply(topic, ref, "error", {reason: "unmatched topic"}), "push after leave")
  assertWellFormed(rec)
})

test("duplicate join on one socket: new join answered, then phx_close (ref null) for the old one; this client closes both instances", async t => {
  const {socket, rec, topic} = await connect(t)
  const first = socket.channel(topic, {})
  assert.equal((await join(first)).status, "ok")
  const closes = []
  first.onClose(() => closes.push("first"))

  // This old client does not leave an open instance of the topic before
  // joining it again (phoenix.js 1.8 does), so the server sees a duplicate.
  const from = rec.entries.length
  const second = socket.channel(topic, {})
  second.onClose(() => closes.push("second"))
  const res = join(second)
  assert.equal((await res).status, "ok")
  const close = await rec.waitIn(m => m.topic === topic && m.event === "phx_close", {from})
  const inb = rec.topicFrames(topic, "in", from - 1)
  assert.equal(inb.length, 2, rec.dump(from))
  assertExact(inb[0], v1Reply(topic, second.joinRef(), "ok", {}), "new join reply")
  assertExact(close, v1(topic, "phx_close", {}, null), "phx_close for the replaced channel")
  assert.equal(inb[1], close)
  // V1 frames carry no join_ref and this phx_close has a null ref, so the
  // client cannot tell which instance it is for: both close (Phoenix sends
  // the same frames, so the same happens against Phoenix).
  await waitUntil(() => closes.length === 2, {what: "both onClose callbacks"})
  assert.deepEqual(closes.sort(), ["first", "second"])

  // Server-side the new channel is still joined: a push on the topic is
  // answered by the backend, not with "unmatched topic".
  const ref = socket.makeRef()
  const f2 = rec.entries.length
  socket.push({topic, event: "echo", payload: {still: "joined"}, ref})
  const r = await rec.waitIn(m => m.topic === topic && m.ref === ref, {from: f2})
  assertExact(r, v1Reply(topic, ref, "ok", {still: "joined"}), "push after the duplicate join")
  assertWellFormed(rec)
})

test("unmatched topic: a join of an unrouted topic gets the reason with the join's ref; no retry; the connection stays open", async t => {
  const {socket, rec} = await connect(t)
  const topic = uniqueTopic("nowhere")
  const ch = socket.channel(topic, {})
  const res = await join(ch)
  assert.deepEqual(res, {status: "error", response: {reason: "unmatched topic"}})
  const [out] = rec.topicFrames(topic, "out")
  assertExact(rec.topicFrames(topic)[0], v1Reply(topic, out.msg.ref, "error", {reason: "unmatched topic"}), "unmatched join reply")

  // A push to a routed but unjoined topic (sent through the socket, since
  // the client refuses channel pushes before join()).
  const unjoined = uniqueTopic()
  const ref = socket.makeRef()
  const seen = []
  socket.onMessage(m => { if (m.topic === unjoined) seen.push(m) })
  socket.push({topic: unjoined, event: "echo", payload: {}, ref})
  const r = await rec.waitIn(m => m.topic === unjoined && m.ref === ref)
  assertExact(r, v1Reply(unjoined, ref, "error", {reason: "unmatched topic"}), "unjoined push reply")
  assert.deepEqual(seen, [JSON.parse(r.data)], "socket.onMessage saw it")

  // Still open and usable.
  const other = socket.channel(uniqueTopic(), {})
  assert.equal((await join(other)).status, "ok")
  assert.deepEqual(rec.events("close"), [])
  assert.equal(rec.events("connect").length, 1)
  assert.equal(rec.topicFrames(topic, "out").length, 1, "no retry of the unmatched join")
  assertWellFormed(rec)
})
