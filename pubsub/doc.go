// Package pubsub is phxgate's broker contract and its engines.
//
// A Broker orders the events of each topic (contiguous offsets from 1 within
// an epoch), delivers them live to this node's single handler per topic, and
// keeps a bounded history so a reconnecting client can be replayed what it
// missed (DESIGN.md §6). Memory is the single-node engine and the default
// when no Redis URL is configured.
//
// Goroutine safety: every Broker method is safe for concurrent use.
//
// What must not block: a Handler runs on the publisher's goroutine while
// that topic's delivery is serialized, so it must only queue work (for
// example hand shared frames to connection write queues). A Handler may call
// History and Subscribe/Unsubscribe on any topic, including its own, but
// must not call Publish: delivery of one topic would then wait on itself or,
// through another topic's handler, on a cycle.
//
// Events (the *Event values passed to handlers and returned by History) are
// shared by every reader and must be treated as immutable. Publish takes
// ownership of the payload slice: the caller must not modify it afterwards.
package pubsub
