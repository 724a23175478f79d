// Package pubsub is phxgate's broker contract and its engines.
//
// A Broker orders the events of each topic (contiguous offsets from 1 within
// an epoch), delivers them live to this node's single handler per topic, and
// keeps a bounded history so a reconnecting client can be replayed what it
// missed (DESIGN.md §6). The contract, with what it promises and what it
// does not, is on the Broker interface. Two engines fulfil it and pass the
// same conformance suite (pubsub/brokertest):
//
//   - Memory, one node, the default when no Redis is configured: a ring
//     buffer per topic, delivery on the publisher's goroutine before Publish
//     returns.
//   - Redis, any number of nodes: a Redis Stream per topic written by one Lua
//     script per publish (single server or Cluster), live delivery over a few
//     pub/sub connections, Resync after any connection loss.
//
// Sequencer is the subscriber's half of the contract: it turns an engine's
// live deliveries into each event exactly once and in order, filling gaps
// from History and reporting what it cannot fill (a continuity loss).
//
// Goroutine safety: every Broker method is safe for concurrent use; a
// Sequencer is used by one topic's delivery path at a time.
//
// What must not block: Handler methods run on the engine's delivery
// goroutine (the publisher's, for Memory) while that topic's delivery is
// serialized, so they must only queue work, or read History to fill a gap.
// A Handler may call History and Subscribe/Unsubscribe on any topic,
// including its own, but must not call Publish: delivery of one topic would
// then wait on itself or, through another topic's handler, on a cycle.
//
// Every Redis call is bounded by RedisConfig.Timeout: while Redis is
// unreachable, Publish, History and Subscribe fail within it and Ping
// reports the failure; handlers stay installed and the engine recovers by
// itself.
//
// Events (the *Event values passed to handlers and returned by History) are
// shared by every reader and must be treated as immutable. Publish takes
// ownership of the payload slice: the caller must not modify it afterwards.
package pubsub
