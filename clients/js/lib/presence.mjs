// phoenix.js Presence helpers shared by the presence phases (presence/)
// and the long-poll features phase (longpoll-features/): a member is a
// socket of one player joined to a topic with a Presence object whose
// callbacks are recorded.

import assert from "node:assert/strict"
import {Presence} from "phoenix"
import {connect, join} from "./harness.mjs"
import {token} from "./jwt.mjs"

// member connects player to topic and tracks the topic's presence.
// longpoll (true/false) picks the socket's transport, whatever
// PHXGATE_TRANSPORT says.
export async function member(t, vsn, player, topic, name, {longpoll, opts = {}} = {}) {
  const c = await connect(t, vsn, {params: {token: token(player)}, ...opts}, {name, longpoll})
  const ch = c.socket.channel(topic, {})
  const presence = new Presence(ch)
  const events = {joins: [], leaves: [], syncs: 0}
  presence.onJoin((key, current, added) => events.joins.push({key, current: !!current, refs: added.metas.map(m => m.phx_ref)}))
  presence.onLeave((key, current, left) => events.leaves.push({key, remaining: current.metas.length, refs: left.metas.map(m => m.phx_ref)}))
  presence.onSync(() => events.syncs++)
  const diffs = []
  ch.on("presence_diff", d => diffs.push(d))
  const r = await join(ch)
  assert.equal(r.status, "ok", `${name} joins: ${JSON.stringify(r)}`)
  return {c, ch, presence, events, diffs, player}
}

// listed returns {key: [metas]} from presence.list().
export function listed(presence) {
  const out = {}
  presence.list((key, {metas}) => { out[key] = metas })
  return out
}

// counts returns {key: number of metas} from presence.list().
export function counts(presence) {
  const out = {}
  for (const [k, metas] of Object.entries(listed(presence))) out[k] = metas.length
  return out
}
