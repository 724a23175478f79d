// A deliberately tiny stand-in for phxgate, used only to check the
// conformance suite itself (`npm run selfcheck`): it lets the suite's own
// mechanics (recording, waiting, V1 codec, reconnect/outage simulation) be
// debugged while the real gateway is being built. It is written from
// PROTOCOL.md §3.1 and DESIGN.md §6/§8 and is NOT a reference for the
// protocol: when the suite and the real gateway disagree, PROTOCOL.md decides.
//
// Usage: node tools/mock-gateway.mjs   (prints ws://127.0.0.1:PORT/socket)

import http from "node:http"
import {WebSocketServer} from "ws"

const EPOCH = "e" + Date.now().toString(36)
const topics = new Map() // topic -> {subs: Set<{conn, chan}>, history: [{offset, event, payload}], offset}

function topicState(topic) {
  let s = topics.get(topic)
  if (!s) { s = {subs: new Set(), history: [], offset: 0}; topics.set(topic, s) }
  return s
}

const pos = off => `p:${EPOCH}:${off}`

function route(topic) {
  if (topic.startsWith("room:")) return "echo"
  if (topic.startsWith("bench:")) return "bench"
  return null
}

function frame(v1, join_ref, ref, topic, event, payload) {
  return v1 ? JSON.stringify({event, payload, ref, topic}) : JSON.stringify([join_ref, ref, topic, event, payload])
}

const enc = new TextEncoder()
function binFrame(kind, fields, payload) {
  const bs = fields.map(f => enc.encode(f ?? ""))
  return Buffer.concat([Buffer.from([kind, ...bs.map(b => b.length)]), ...bs.map(b => Buffer.from(b)), Buffer.from(payload)])
}

function decode(v1, data, isBinary) {
  if (isBinary) {
    const b = Buffer.from(data)
    if (b[0] !== 0) throw new Error("bad kind")
    const lens = [b[1], b[2], b[3], b[4]]
    let off = 5
    const [join_ref, ref, topic, event] = lens.map(l => { const s = b.subarray(off, off + l).toString(); off += l; return s })
    return {join_ref: join_ref || null, ref: ref || null, topic, event, payload: b.subarray(off), binary: true}
  }
  const v = JSON.parse(data.toString())
  if (v1) {
    for (const k of ["topic", "event", "payload", "ref"]) if (!(k in v)) throw new Error("missing " + k)
    return {join_ref: v.join_ref ?? null, ref: v.ref, topic: v.topic, event: v.event, payload: v.payload}
  }
  if (!Array.isArray(v) || v.length < 5) throw new Error("bad array")
  return {join_ref: v[0], ref: v[1], topic: v[2], event: v[3], payload: v[4]}
}

function publish(topic, event, payload) {
  const s = topicState(topic)
  s.offset++
  s.history.push({offset: s.offset, event, payload})
  if (s.history.length > 100) s.history.shift()
  for (const {conn, chan} of s.subs) {
    if (Buffer.isBuffer(payload)) { if (!conn.v1) conn.send(binFrame(2, [topic, event], payload)); continue }
    conn.send(frame(conn.v1, null, chan.opted ? pos(s.offset) : null, topic, event, payload))
  }
}

function handle(conn, m) {
  const {v1} = conn
  const send = (j, r, t, e, p) => conn.send(frame(v1, j, r, t, e, p))
  const reply = (j, r, t, status, response) => send(j, r, t, "phx_reply", {response, status})
  if (m.topic === "phoenix" && m.event === "heartbeat") return reply(null, m.ref, "phoenix", "ok", {})
  const chan = conn.chans.get(m.topic)
  if (m.event === "phx_join") {
    const backend = route(m.topic)
    if (!backend) return reply(null, m.ref, m.topic, "error", {reason: "unmatched topic"})
    const J = m.join_ref ?? m.ref
    let old = null
    if (chan) { old = chan; unsub(conn, m.topic) }
    const p = m.payload && typeof m.payload === "object" ? {...m.payload} : m.payload
    if (backend === "echo" && p && p.deny === true) {
      reply(J, m.ref, m.topic, "error", {reason: "denied"})
    } else {
      const s = topicState(m.topic)
      // joinRef names the channel for replies (join_ref || ref); closeRef is
      // what the socket keeps for phx_close/phx_error (the join_ref as sent).
      const c = {joinRef: J, closeRef: m.join_ref ?? null, backend, opted: false}
      let resp = {}
      let replay = []
      if (p && typeof p === "object" && "offset" in p) {
        c.opted = true
        resp = {position: pos(s.offset)}
        if (typeof p.offset === "string" && p.offset !== "") {
          const mm = /^p:([^:]+):(\d+)$/.exec(p.offset)
          const ok = mm && mm[1] === EPOCH && (s.history.length === 0 || Number(mm[2]) >= s.history[0].offset - 1)
          resp.recovered = !!ok
          if (ok) replay = s.history.filter(h => h.offset > Number(mm[2]))
        }
      }
      conn.chans.set(m.topic, c)
      s.subs.add({conn, chan: c})
      reply(J, m.ref, m.topic, "ok", resp)
      for (const h of replay) send(null, pos(h.offset), m.topic, h.event, h.payload)
    }
    if (old) send(old.closeRef, old.closeRef, m.topic, "phx_close", {})
    return
  }
  if (m.event === "phx_leave") {
    if (!chan) return reply(m.join_ref, m.ref, m.topic, "ok", {})
    if (m.join_ref != null && m.join_ref !== chan.closeRef) return
    unsub(conn, m.topic)
    reply(chan.joinRef, m.ref, m.topic, "ok", {})
    return send(chan.closeRef, chan.closeRef, m.topic, "phx_close", {})
  }
  if (!chan) return reply(null, m.ref, m.topic, "error", {reason: "unmatched topic"})
  if (m.join_ref != null && m.join_ref !== chan.closeRef) return
  if (chan.backend === "bench") {
    const body = m.payload && m.payload.body
    if (m.event === "echo") return reply(chan.joinRef, m.ref, m.topic, "ok", {type: "echo", body})
    if (m.event === "broadcast") {
      publish(m.topic, "broadcast", {type: "broadcast", body})
      return reply(chan.joinRef, m.ref, m.topic, "ok", {type: "broadcastResult", body})
    }
    return
  }
  switch (m.event) {
    case "echo":
      if (m.binary) return conn.send(binFrame(1, [chan.joinRef, m.ref, m.topic, "ok"], m.payload))
      return reply(chan.joinRef, m.ref, m.topic, "ok", m.payload)
    case "shout":
      publish(m.topic, "shout", m.payload)
      return reply(chan.joinRef, m.ref, m.topic, "ok", {})
    case "noreply": return
    case "crash":
      unsub(conn, m.topic)
      return send(chan.closeRef, chan.closeRef, m.topic, "phx_error", {reason: "channel_crash"})
  }
}

function unsub(conn, topic) {
  const chan = conn.chans.get(topic)
  conn.chans.delete(topic)
  const s = topics.get(topic)
  if (s) for (const sub of s.subs) if (sub.chan === chan) s.subs.delete(sub)
}

export function startMock(port = 0) {
  const server = http.createServer((_req, res) => { res.writeHead(404); res.end() })
  const wss = new WebSocketServer({noServer: true, perMessageDeflate: false,
    handleProtocols: protocols => protocols.has("phoenix") ? "phoenix" : false})
  server.on("upgrade", (req, socket, head) => {
    const u = new URL(req.url, "http://x")
    const vsn = u.searchParams.get("vsn")
    const badKey = [...u.searchParams.keys()].some(k => k.startsWith("vsn["))
    let v1
    if (badKey) v1 = undefined
    else if (vsn === null || /^1\.0\.\d+$/.test(vsn)) v1 = true
    else if (/^2\.0\.\d+$/.test(vsn)) v1 = false
    if (u.pathname !== "/socket/websocket" || v1 === undefined) {
      socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
      return
    }
    wss.handleUpgrade(req, socket, head, ws => {
      // Echo a client close with its code and an empty reason, as Bandit does.
      const close = ws.close.bind(ws)
      ws.close = (code) => close(code, "")
      const conn = {v1, chans: new Map(), send: d => ws.send(d)}
      ws.on("message", (data, isBinary) => {
        let m
        try { m = decode(v1, data, isBinary) } catch { ws.close(1011); return }
        handle(conn, m)
      })
      ws.on("close", code => {
        for (const t of [...conn.chans.keys()]) unsub(conn, t)
        void code
      })
    })
  })
  return new Promise(resolve => server.listen(port, "127.0.0.1", () => resolve(server)))
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const server = await startMock(Number(process.env.PORT || 0))
  console.log(`ws://127.0.0.1:${server.address().port}/socket`)
}
