// Package presence tracks who is on a topic, Phoenix-compatible, across
// nodes (PROTOCOL.md §4, DESIGN.md §7).
//
// A route with presence on tracks every joined player under key = player
// id, one meta per connection (the backend's join-reply presence meta, {}
// by default, plus a cluster-unique phx_ref). A channel gets
// presence_state after every join and rejoin; every change reaches every
// subscriber as presence_diff ({"joins":…,"leaves":…}, both keys always
// there). An update is one diff: the old meta in leaves, the new one with
// phx_ref_prev in joins.
//
// Tracker is the node's side: it stores changes in a Store, batches a
// topic's changes into one diff per Config.Window, and publishes each diff
// as an ephemeral event of the room, which every node fans out to its own
// subscribers. Memory is the Store of one node; Redis keeps each topic's
// presences in a hash shared by the nodes, with node liveness keys: a node
// that dies (kill -9) has its presences removed by another node, which
// publishes their leaves, within RedisDeadAfter; a node that drains removes
// its own at once; a node restarted under the same id removes what its
// earlier life left, under the node's reap lock (after any reaper of that
// life); a reaper removes only the boot it took for dead (recorded at
// Start) and keeps the lists of a node alive again. A reaper reads a
// topic in HSCAN steps, each step's presences removed by one script of
// those fields; an update reads the player's fields only (the owner
// node's tags of the key) and counts the player's presences from the
// topic's counts: neither holds Redis for a whole topic. With a
// BatchAdder store, the Tracks of a topic queued while another holds it
// are stored together by the next holder (group commit), each with its
// own answer; a queued Track whose ctx ends before a holder takes it
// tries nothing (ErrBusy), one taken waits for the holder's store call.
//
// Limits (Config): meta size, metas per key, presences per topic. Past one
// the presence is refused — counted (phxgate_presence_refused_total) and
// logged — while the join itself succeeds.
//
// Goroutine safety: Tracker and every Store are safe for concurrent use.
// Track, Untrack and Update block on the store (each call bounded by
// Config.Timeout from the moment the topic's lock is held, after waiting
// for the topic's earlier changes on this node: a Track only while its
// ctx lasts, then ErrBusy with nothing tried), never on publishing a
// diff.
//
// Repairs: a failed Untrack is retried (and still gives the leave when
// the first attempt was applied but its answer lost); the Redis store
// takes a presence whose Remove failed out of what it restores and
// retries its removal while the node runs, publishing the leave; a failed
// Add is undone by its tag (never a read of the topic's whole hash), and
// when that fails too, later (past a bound of tags marked, by HSCAN of
// the topic in steps), and whatever an undo removes leaves (a State read
// may have listed it meanwhile; the store's restore loop hands the
// leaves to onLeave, off every lock); a diff the broker refuses is held and sent
// again, first, when the broker answers (later changes wait behind it);
// past the bound of held diffs (per topic, and the node's held bytes)
// they are dropped and every node of the topic, once the broker answers,
// sends its subscribers the whole presence_state (a control event); a
// node taken for dead while alive puts its presences back, after the
// reaper that took it for dead has finished (the node's reap lock), on
// its own goroutine (never delaying the liveness refresh), topic by
// topic under the Redis store's topic lock, from what it holds then
// (latest meta; nothing removed meanwhile), each under a fresh phx_ref,
// announced as one change (the join of the new ref, the leave of the
// old) queued behind what the node had not yet published: clients end
// with the new ref whether the reaper's leave of the old one reaches
// them before or after a held join of it; a Track or update whose
// store write such a restore announced before its change was queued
// queues no join of the ref it wrote; an update that finds the node's
// presences reaped updates what the node holds, which the restore puts
// back. Drain waits for Tracks in flight and drains until
// nothing is left. On several nodes an Update is routed to the nodes
// owning the presences (a control event through the topic,
// ControlEvent), each updating its own under the topic's lock, so an
// update is ordered with that connection's join and leave; HandleControl
// only queues it (it runs on the broker's delivery path).
//
// Lock order: Tracker's topic lock, then the Redis store's topic lock,
// then Tracker.mu or the store's mu. The store calls Tracker.Restored
// under its topic lock (Restored takes only Tracker.mu).
package presence
