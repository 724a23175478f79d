// Channel scenarios of PROTOCOL.md §3.1, driven by the unmodified phoenix.js
// client, for both serializers. Every test asserts on the recorded frames in
// both directions: exact bytes where Phoenix fixes them, plus the phoenix.js
// channel state that results.

import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {VSNS, reply, binaryClientPush, binaryReply, binaryBroadcast, hex} from "../lib/codec.mjs"
import {connect, join, outcome, waitUntil, assertExact, assertWellFormed, isDecimalRef, topicFrames, transportVsns, wsOnly, LONGPOLL} from "../lib/harness.mjs"

const T_OPTS = {timeout: 30000}

// rawSend writes a frame phoenix.js would not produce on its own through the
// same recorded transport, with a ref from phoenix.js's own counter.
function rawSend(c, join_ref, topic, event, payload, ref = c.socket.makeRef()) {
  c.socket.conn.send(c.codec.clientFrame(join_ref, ref, topic, event, payload))
  return ref
}

function isReply(topic, ref) {
  return m => m.topic === topic && m.event === "phx_reply" && m.ref === ref
}

// Over long-poll (PHXGATE_TRANSPORT=longpoll) these run with V2 only (see
// transportVsns); the exceptions are marked where they are.
for (const vsn of transportVsns) {
  describe(`channels vsn=${vsn}`, () => {
    test("join ok", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const ch = socket.channel(topic, {})
      const res = await join(ch)
      const J = ch.joinRef()
      assert.deepEqual(res, {status: "ok", response: {}})
      assert.ok(isDecimalRef(J), `phoenix.js join_ref ${J}`)
      const out = await rec.waitOut(m => m.topic === topic && m.event === "phx_join")
      assertExact(out, codec.clientFrame(J, J, topic, "phx_join", {}), "phoenix.js join frame")
      const r = await rec.waitIn(isReply(topic, J))
      assertExact(r, reply(codec, J, J, topic, "ok", {}), "join reply")
      assert.ok(r.seq > out.seq)
      assert.equal(ch.state, "joined")
      assertWellFormed(rec)
    })

    test("join denied, then phoenix.js retries the join", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const ch = socket.channel(topic, {deny: true})
      const res = await join(ch)
      const J = ch.joinRef()
      assert.deepEqual(res, {status: "error", response: {reason: "denied"}})
      assert.equal(ch.state, "errored")
      const r = await rec.waitIn(isReply(topic, J))
      assertExact(r, reply(codec, J, J, topic, "error", {reason: "denied"}), "denied join reply")
      // An error reply schedules a rejoin (rejoinAfterMs, 50 ms here) with a new join_ref.
      const again = await rec.waitOut(m => m.topic === topic && m.event === "phx_join" && m.ref !== J, {what: "the rejoin"})
      const J2 = again.msg.ref
      assertExact(again, codec.clientFrame(J2, J2, topic, "phx_join", {deny: true}), "rejoin frame")
      const r2 = await rec.waitIn(isReply(topic, J2))
      assertExact(r2, reply(codec, J2, J2, topic, "error", {reason: "denied"}), "second denied reply")
      assert.notEqual(ch.state, "joined")
      assertWellFormed(rec)
    })

    test("echo reply echoes ref and join_ref exactly", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const ch = socket.channel(topic)
      assert.equal((await join(ch)).status, "ok")
      const J = ch.joinRef()
      // Keys sorted so the bytes are the same whether the server passes the
      // payload through or re-encodes it the way Phoenix does.
      const payload = {a: 1, b: "two/é", c: [1, null, true], d: {e: 2.5}}
      const p = ch.push("echo", payload)
      const res = await outcome(p)
      assert.deepEqual(res, {status: "ok", response: payload})
      const R = p.ref
      const out = await rec.waitOut(m => m.topic === topic && m.event === "echo")
      assertExact(out, codec.clientFrame(J, R, topic, "echo", payload), "phoenix.js push frame")
      const r = await rec.waitIn(isReply(topic, R))
      assertExact(r, reply(codec, J, R, topic, "ok", payload), "echo reply")
      assertWellFormed(rec)
    })

    test("opaque refs are echoed with their JSON type", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const ch = socket.channel(topic)
      assert.equal((await join(ch)).status, "ok")
      const J = ch.joinRef()
      for (const ref of ["ref-é-not-decimal", 42]) {
        rawSend(c, J, topic, "echo", {k: 1}, ref)
        const r = await rec.waitIn(m => m.topic === topic && m.event === "phx_reply" && m.ref === ref, {what: `reply with ref ${JSON.stringify(ref)}`})
        assertExact(r, reply(codec, J, ref, topic, "ok", {k: 1}), `reply to ref ${JSON.stringify(ref)}`)
      }
      assertWellFormed(rec)
    })

    test("shout reaches both sockets, and the sender before its reply", T_OPTS, async t => {
      const a = await connect(t, vsn, {}, {name: "A"})
      const b = await connect(t, vsn, {}, {name: "B"})
      const topic = a.topic
      const chA = a.socket.channel(topic)
      const chB = b.socket.channel(topic)
      const seenA = []
      const seenB = []
      chA.on("shout", (payload, ref) => seenA.push({payload, ref}))
      chB.on("shout", (payload, ref) => seenB.push({payload, ref}))
      assert.equal((await join(chA)).status, "ok")
      assert.equal((await join(chB)).status, "ok")
      const payload = {body: "hi", n: 1}
      const p = chA.push("shout", payload)
      assert.deepEqual(await outcome(p), {status: "ok", response: {}})
      const want = a.codec.frame(null, null, topic, "shout", payload)
      const rA = await a.rec.waitIn(isReply(topic, p.ref))
      assertExact(rA, reply(a.codec, chA.joinRef(), p.ref, topic, "ok", {}), "shout reply")
      const bA = await a.rec.waitIn(m => m.topic === topic && m.event === "shout")
      assertExact(bA, want, "broadcast to the sender")
      assert.ok(bA.seq < rA.seq, `the sender's broadcast (#${bA.seq}) must arrive before its reply (#${rA.seq})\n${a.rec.dump()}`)
      const bB = await b.rec.waitIn(m => m.topic === topic && m.event === "shout")
      assertExact(bB, want, "broadcast to the other socket")
      await waitUntil(() => seenB.length === 1, {what: "phoenix.js to dispatch the shout on B"})
      assert.deepEqual(seenA, [{payload, ref: null}])
      assert.deepEqual(seenB, [{payload, ref: null}])
      assertWellFormed(a.rec)
      assertWellFormed(b.rec)
    })

    test("noreply: the push times out client-side and no reply ever comes", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const ch = socket.channel(topic)
      assert.equal((await join(ch)).status, "ok")
      const p = ch.push("noreply", {x: 1}, 300)
      assert.deepEqual(await outcome(p), {status: "timeout", response: {}})
      const silentRef = p.ref
      // Barrier: a later push on the same channel is answered in order, so a
      // reply to the noreply push would have arrived before this one.
      const e = ch.push("echo", {y: 2})
      assert.equal((await outcome(e)).status, "ok")
      const r = await rec.waitIn(isReply(topic, e.ref))
      assertExact(r, reply(codec, ch.joinRef(), e.ref, topic, "ok", {y: 2}))
      const stray = rec.in.filter(x => x.msg.ref === silentRef)
      assert.deepEqual(stray.map(x => x.data), [], "no frame may answer the noreply push")
      assertWellFormed(rec)
    })

    // Phoenix answers a channel's pushes from one process mailbox, so replies
    // come back in request order and every push gets one. phxgate queues up
    // to ChannelQueue (256) calls per channel, so a burst of 200 is served
    // whole; past that, refusals still take their turn in the channel's FIFO.
    test("a burst of pushes on one channel is answered in request order", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, topic} = c
      const ch = socket.channel(topic)
      assert.equal((await join(ch)).status, "ok")
      const N = 200
      const pushes = []
      for (let i = 0; i < N; i++) pushes.push(ch.push("echo", {i}))
      const results = await Promise.all(pushes.map(p => outcome(p)))
      const refs = new Set(pushes.map(p => p.ref))
      const order = rec.in.filter(e => e.msg.event === "phx_reply" && refs.has(e.msg.ref)).map(e => e.msg.ref)
      assert.equal(order.length, N, "one reply per push")
      const statuses = results.map(r => r.status === "ok" ? "ok" : JSON.stringify(r))
      assert.deepEqual(order, pushes.map(p => p.ref), `replies out of request order; statuses: ${[...new Set(statuses)].join(", ")}`)
      assert.deepEqual(statuses, Array(N).fill("ok"), "every push answered ok, as Phoenix would")
    })

    test("crash sends phx_error and phoenix.js rejoins", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const ch = socket.channel(topic)
      const errors = []
      ch.onError(reason => errors.push(reason))
      assert.equal((await join(ch)).status, "ok")
      const J = ch.joinRef()
      const mark = rec.entries.length - 1
      const p = ch.push("crash", {})
      const err = await rec.waitIn(m => m.topic === topic && m.event === "phx_error", {from: mark})
      assertExact(err, codec.frame(J, J, topic, "phx_error", {reason: "channel_crash"}), "phx_error")
      const before = topicFrames(rec, topic, mark).filter(x => x.seq < err.seq)
      assert.deepEqual(before.map(x => x.data), [], `nothing for the topic before phx_error (the crash push ${p.ref} gets no reply)`)
      const rejoin = await rec.waitOut(m => m.topic === topic && m.event === "phx_join", {from: err.seq, what: "the automatic rejoin"})
      const J2 = rejoin.msg.ref
      assert.notEqual(J2, J)
      assertExact(rejoin, codec.clientFrame(J2, J2, topic, "phx_join", {}), "rejoin frame")
      const r = await rec.waitIn(isReply(topic, J2))
      assertExact(r, reply(codec, J2, J2, topic, "ok", {}), "rejoin reply")
      await waitUntil(() => ch.state === "joined" && ch.joinRef() === J2, {what: "the channel to be joined again"})
      assert.deepEqual(errors[0], {reason: "channel_crash"})
      // The rejoined channel works.
      assert.deepEqual(await outcome(ch.push("echo", {again: true})), {status: "ok", response: {again: true}})
      assertWellFormed(rec)
    })

    test("leave: ok reply, then phx_close", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const ch = socket.channel(topic)
      assert.equal((await join(ch)).status, "ok")
      const J = ch.joinRef()
      const lp = ch.leave()
      assert.deepEqual(await outcome(lp), {status: "ok", response: {}})
      const R = lp.ref
      const out = await rec.waitOut(m => m.topic === topic && m.event === "phx_leave")
      assertExact(out, codec.clientFrame(J, R, topic, "phx_leave", {}), "phoenix.js leave frame")
      const r = await rec.waitIn(isReply(topic, R))
      assertExact(r, reply(codec, J, R, topic, "ok", {}), "leave reply")
      const close = await rec.waitIn(m => m.topic === topic && m.event === "phx_close")
      assertExact(close, codec.frame(J, J, topic, "phx_close", {}), "phx_close")
      assert.ok(close.seq > r.seq, "phx_close comes after the leave reply")
      assert.equal(ch.state, "closed")
      // Left means left: a push now is an unmatched topic.
      const R2 = rawSend(c, J, topic, "echo", {})
      const u = await rec.waitIn(isReply(topic, R2))
      assertExact(u, reply(codec, null, R2, topic, "error", {reason: "unmatched topic"}), "push after leave")
      assertWellFormed(rec)
    })

    test("leave with a stale join_ref is ignored, with a null join_ref it is honoured", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const ch = socket.channel(topic)
      assert.equal((await join(ch)).status, "ok")
      const J = ch.joinRef()
      const mark = rec.entries.length - 1
      const Rs = rawSend(c, String(Number(J) + 1000), topic, "phx_leave", {})
      // Barrier: still joined, so an echo is answered, and nothing for Rs came first.
      assert.equal((await outcome(ch.push("echo", {still: "joined"}))).status, "ok")
      assert.deepEqual(rec.in.filter(x => x.seq > mark && (x.msg.ref === Rs || x.msg.event === "phx_close")).map(x => x.data), [],
        "a leave with a stale join_ref gets nothing back and does not close the channel")
      const Rn = rawSend(c, null, topic, "phx_leave", {})
      const r = await rec.waitIn(isReply(topic, Rn))
      // The reply comes from the channel process, so it carries the channel's join_ref.
      assertExact(r, reply(codec, J, Rn, topic, "ok", {}), "reply to a null join_ref leave")
      const close = await rec.waitIn(m => m.topic === topic && m.event === "phx_close", {from: mark})
      assertExact(close, codec.frame(J, J, topic, "phx_close", {}), "phx_close after a null join_ref leave")
      assert.ok(close.seq > r.seq)
      await waitUntil(() => ch.state === "closed", {what: "phoenix.js to close the channel on phx_close"})
      assertWellFormed(rec)
    })

    test("duplicate join: new reply, then phx_close for the old join_ref", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const ch = socket.channel(topic)
      assert.equal((await join(ch)).status, "ok")
      const J1 = ch.joinRef()
      const mark = rec.entries.length - 1
      // phoenix.js never sends this itself (it leaves the open topic first),
      // so the second join goes out raw on the same connection.
      const J2 = c.socket.makeRef()
      rawSend(c, J2, topic, "phx_join", {}, J2)
      const r = await rec.waitIn(isReply(topic, J2), {from: mark})
      assertExact(r, reply(codec, J2, J2, topic, "ok", {}), "second join reply")
      const close = await rec.waitIn(m => m.topic === topic && (m.event === "phx_close" || m.event === "phx_error"), {from: mark})
      assertExact(close, codec.frame(J1, J1, topic, "phx_close", {}), "close of the old join")
      assert.ok(close.seq > r.seq, "the old join's phx_close comes after the new join's reply")
      // The new join is live: a push with J2 is answered.
      const R = rawSend(c, J2, topic, "echo", {n: 3})
      const er = await rec.waitIn(isReply(topic, R))
      assertExact(er, reply(codec, J2, R, topic, "ok", {n: 3}), "echo on the new join")
      const errs = topicFrames(rec, topic, mark).filter(x => x.msg.event === "phx_error")
      assert.deepEqual(errs.map(x => x.data), [], "a duplicate join never produces phx_error")
      assertWellFormed(rec)
    })

    test("push to an unjoined or unrouted topic: unmatched topic, connection stays open", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      const cases = [
        {name: "unjoined, with a join_ref", join_ref: "77", topic, event: "echo"},
        {name: "unjoined, null join_ref", join_ref: null, topic, event: "echo"},
        {name: "unrouted topic join", join_ref: "78", topic: "nope:" + topic.slice(5), event: "phx_join"},
      ]
      for (const k of cases) {
        const R = rawSend(c, k.join_ref, k.topic, k.event, {})
        const r = await rec.waitIn(isReply(k.topic, R), {what: k.name})
        assertExact(r, reply(codec, null, R, k.topic, "error", {reason: "unmatched topic"}), k.name)
      }
      // Leaving a topic that is not joined is simply acknowledged.
      const RL = rawSend(c, "79", topic, "phx_leave", {})
      const rl = await rec.waitIn(isReply(topic, RL))
      assertExact(rl, reply(codec, "79", RL, topic, "ok", {}), "leave of an unjoined topic")
      // phoenix.js's own join of an unrouted topic sees the error.
      const ch = socket.channel("nope:" + topic.slice(5) + "x")
      assert.deepEqual(await join(ch), {status: "error", response: {reason: "unmatched topic"}})
      // Still open: a heartbeat round trip works and nothing closed.
      const rtt = await new Promise(resolve => socket.ping(resolve))
      assert.equal(typeof rtt, "number")
      assert.deepEqual(rec.events("close"), [])
      assert.equal(socket.connectionState(), "open")
      assertWellFormed(rec)
    })

    test("stale join_ref is ignored, null join_ref is accepted", T_OPTS, async t => {
      const c = await connect(t, vsn)
      const {socket, rec, codec, topic} = c
      // A genuinely old join_ref: join, leave, join again on the same socket.
      const old = socket.channel(topic)
      assert.equal((await join(old)).status, "ok")
      const Jold = old.joinRef()
      assert.equal((await outcome(old.leave())).status, "ok")
      // Wait for the old join's phx_close first: V1 frames carry no join_ref,
      // so phoenix.js would apply a late one to the new channel and close it.
      await rec.waitIn(m => m.topic === topic && m.event === "phx_close")
      const ch = socket.channel(topic)
      assert.equal((await join(ch)).status, "ok")
      const J = ch.joinRef()
      assert.notEqual(J, Jold)
      const mark = rec.entries.length - 1
      const Rs = rawSend(c, Jold, topic, "echo", {stale: true})
      const Rs2 = rawSend(c, String(Number(J) + 1000), topic, "echo", {stale: 2})
      const Rn = rawSend(c, null, topic, "echo", {fresh: 1})
      const rn = await rec.waitIn(isReply(topic, Rn))
      // Phoenix replies from the channel process with the channel's join_ref
      // (Channel.Server handle_reply uses socket.join_ref), not the null the
      // push carried.
      assertExact(rn, reply(codec, J, Rn, topic, "ok", {fresh: 1}), "reply to a null join_ref push")
      if (vsn.startsWith("1.")) {
        // V1 clients may omit join_ref altogether.
        const Ra = rawSend(c, undefined, topic, "echo", {absent: 1})
        const ra = await rec.waitIn(isReply(topic, Ra))
        assertExact(ra, reply(codec, J, Ra, topic, "ok", {absent: 1}), "reply to a push without join_ref")
      }
      // Barrier through phoenix.js itself, with the current join_ref.
      const e = ch.push("echo", {last: 1})
      assert.equal((await outcome(e)).status, "ok")
      const stray = rec.in.filter(x => x.seq > mark && (x.msg.ref === Rs || x.msg.ref === Rs2))
      assert.deepEqual(stray.map(x => x.data), [], "a push with a stale join_ref gets no reply")
      assert.equal(ch.state, "joined")
      assertWellFormed(rec)
    })

    // phoenix.js sends no heartbeats over long-poll (skipHeartbeat); a
    // heartbeat it is asked for (socket.ping) is answered, as the unmatched
    // topic test shows.
    test("heartbeat is answered, even with no channels", wsOnly("phoenix.js sends no heartbeats over long-poll", T_OPTS), async t => {
      // Short enough to see two heartbeats quickly; phoenix.js also uses it as
      // the reply timeout, so it leaves room for a loaded CI machine running
      // a -race gateway (tests never bet on wall-clock speed).
      const c = await connect(t, vsn, {heartbeatIntervalMs: 1500})
      const {rec, codec} = c
      let from = 0
      for (let i = 0; i < 2; i++) {
        const hb = await rec.waitOut(m => m.event === "heartbeat", {from, what: `heartbeat #${i + 1}`})
        const R = hb.msg.ref
        assert.ok(isDecimalRef(R))
        assertExact(hb, codec.clientFrame(undefined, R, "phoenix", "heartbeat", {}), "phoenix.js heartbeat")
        const r = await rec.waitIn(isReply("phoenix", R), {from: hb.seq})
        assertExact(r, reply(codec, null, R, "phoenix", "ok", {}), "heartbeat reply")
        from = r.seq + 1
      }
      assert.deepEqual(rec.events("client-close"), [], "phoenix.js must not hit its heartbeat timeout")
      assertWellFormed(rec)
    })

    // Binary over long-poll: phoenix.js sends a binary push as a base64
    // line, which phxgate dispatches; but a long-poll client only reads JSON
    // strings, so binary replies and broadcasts are dropped (and counted in
    // phxgate_longpoll_messages_dropped_total{reason="binary"}). The tests
    // below show that instead of the WebSocket ones.
    if (LONGPOLL) {
      test("long-poll binary push: dispatched, its binary reply dropped, so the push times out", T_OPTS, async t => {
        const c = await connect(t, vsn)
        const {socket, rec, topic} = c
        const ch = socket.channel(topic)
        assert.equal((await join(ch)).status, "ok")
        const bytes = Uint8Array.from([0, 1, 2, 0x7b, 0x22, 0xff, 0xfe, 10, 13, 0])
        const p = ch.push("echo", bytes.buffer.slice(0), 1500)
        const out = await rec.waitOut(m => m.binary && m.topic === topic)
        assert.equal(hex(out.data), hex(binaryClientPush(ch.joinRef(), p.ref, topic, "echo", bytes)), "phoenix.js binary push bytes")
        assert.equal((await outcome(p)).status, "timeout")
        // The session is still up: a text push right after is answered.
        assert.deepEqual(await outcome(ch.push("echo", {after: true})), {status: "ok", response: {after: true}})
        assert.deepEqual(rec.events("close"), [])
        assertWellFormed(rec)
      })

      test("long-poll binary shout: the text reply comes, the kind 2 broadcast is dropped", T_OPTS, async t => {
        const a = await connect(t, vsn, {}, {name: "A"})
        const chA = a.socket.channel(a.topic)
        const seen = []
        chA.on("shout", p => seen.push(p))
        assert.equal((await join(chA)).status, "ok")
        const p = chA.push("shout", Uint8Array.from([9, 8, 7]).buffer)
        assert.deepEqual(await outcome(p), {status: "ok", response: {}})
        // Messages arrive in order: once the text shout sent after it is
        // here, the binary one was dropped, not late.
        assert.deepEqual(await outcome(chA.push("shout", {text: 1})), {status: "ok", response: {}})
        await waitUntil(() => seen.length >= 1, {what: "the text shout"})
        assert.deepEqual(seen, [{text: 1}])
        assert.equal(a.rec.in.filter(e => e.binary).length, 0)
      })
    }
    if (vsn.startsWith("2.") && !LONGPOLL) {
      test("binary push and binary reply (kind 0 out, kind 1 back)", T_OPTS, async t => {
        const c = await connect(t, vsn)
        const {socket, rec, topic} = c
        const ch = socket.channel(topic)
        assert.equal((await join(ch)).status, "ok")
        const J = ch.joinRef()
        const bytes = Uint8Array.from([0, 1, 2, 0x7b, 0x22, 0xff, 0xfe, 10, 13, 0])
        const p = ch.push("echo", bytes.buffer.slice(0))
        const res = await outcome(p)
        assert.equal(res.status, "ok")
        assert.ok(res.response instanceof ArrayBuffer, "phoenix.js hands the binary response over as an ArrayBuffer")
        assert.equal(hex(new Uint8Array(res.response)), hex(bytes))
        const R = p.ref
        const out = await rec.waitOut(m => m.binary && m.topic === topic)
        assert.equal(hex(out.data), hex(binaryClientPush(J, R, topic, "echo", bytes)), "phoenix.js binary push bytes")
        const r = await rec.waitFor(e => e.dir === "in" && e.binary && e.msg.ref === R)
        assert.equal(hex(r.data), hex(binaryReply(J, R, topic, "ok", bytes)), "binary reply bytes (kind 1)")
        assertWellFormed(rec)
      })

      test("binary shout: kind 2 broadcast to every V2 socket, text reply", T_OPTS, async t => {
        const a = await connect(t, vsn, {}, {name: "A"})
        const b = await connect(t, vsn, {}, {name: "B"})
        const topic = a.topic
        const chA = a.socket.channel(topic)
        const chB = b.socket.channel(topic)
        const seenB = []
        chB.on("shout", (payload, ref) => seenB.push({payload, ref}))
        assert.equal((await join(chA)).status, "ok")
        assert.equal((await join(chB)).status, "ok")
        const bytes = Uint8Array.from([9, 8, 7, 0, 255])
        const p = chA.push("shout", bytes.buffer.slice(0))
        assert.deepEqual(await outcome(p), {status: "ok", response: {}})
        const r = await a.rec.waitIn(isReply(topic, p.ref))
        assertExact(r, reply(a.codec, chA.joinRef(), p.ref, topic, "ok", {}), "binary shout reply (JSON, response {})")
        const want = hex(binaryBroadcast(topic, "shout", bytes))
        const ba = await a.rec.waitFor(e => e.dir === "in" && e.binary && e.msg.event === "shout")
        assert.equal(hex(ba.data), want, "kind 2 broadcast bytes to the sender")
        assert.ok(ba.seq < r.seq, "the sender's broadcast precedes its reply")
        const bb = await b.rec.waitFor(e => e.dir === "in" && e.binary && e.msg.event === "shout")
        assert.equal(hex(bb.data), want, "kind 2 broadcast bytes to the other socket")
        await waitUntil(() => seenB.length === 1, {what: "phoenix.js to dispatch the binary shout"})
        assert.equal(hex(new Uint8Array(seenB[0].payload)), hex(bytes))
        assert.equal(seenB[0].ref, null)
      })
    }
  })
}
