// After presence-cluster/: nodes 1 (drained) and 2 (killed) were restarted
// under the same ids. Their earlier players are gone for good: the list is
// exactly who is connected now, with no duplicate and no ghost.

import {test} from "node:test"
import assert from "node:assert/strict"
import {Presence} from "phoenix"
import {connect, join, waitUntil} from "../lib/harness.mjs"
import {token} from "../lib/jwt.mjs"

test("nodes restarted under the same ids show no ghosts and no duplicates", {timeout: 30000}, async t => {
  const urls = process.env.PHXGATE_URLS.split(",")
  const topic = process.env.PHXGATE_TOPIC
  const members = []
  for (const [i, url] of urls.entries()) {
    const c = await connect(t, "2.0.0", {params: {token: token(`again${i}`)}}, {name: `again${i}`, url})
    const ch = c.socket.channel(topic, {})
    const presence = new Presence(ch)
    assert.equal((await join(ch)).status, "ok")
    members.push({presence})
  }
  const want = ["again0×1", "again1×1", "again2×1"]
  for (const [i, m] of members.entries()) {
    await waitUntil(() => {
      const out = []
      m.presence.list((key, {metas}) => { out.push(`${key}×${metas.length}`) })
      return JSON.stringify(out.sort()) === JSON.stringify(want)
    }, {what: `node ${i}'s client to see exactly the three connected players`, timeoutMs: 10000})
  }
})
