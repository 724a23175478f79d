// Package channels is the Phoenix Channels protocol layer of phxgate: the
// serializers (V1 JSON objects, V2 JSON arrays, V2 binary frames), the
// per-socket state machine (heartbeats, joins, leaves, events, replies,
// phx_close/phx_error), the topic router, the worker pool that runs backend
// calls, and the topic hub that fans broadcasts out to local subscribers.
// PROTOCOL.md is the wire contract; this package follows Phoenix 1.8.12.
//
// # Concurrency
//
// Router is immutable and safe for concurrent use. Server is safe for
// concurrent use. A Socket's HandleText and HandleBinary are called by the
// gateway on a poller goroutine, one at a time per socket; they never block
// and never call a backend: joins and events are queued on the socket's
// channel (a per-topic FIFO) and run by a bounded worker pool, one call at
// a time per channel, different channels in parallel. Terminate may be
// called from any goroutine and is idempotent.
//
// # Order and overload
//
// Replies on one topic go out in the order the client sent the messages,
// as from a Phoenix channel's mailbox, refusals included: a message answered
// without a backend call (backend_overloaded past Config.ChannelQueue, any
// other refusal made with Socket.rejectInOrder, and the replies to leaves
// and events on a topic whose slot is not joined but still busy, made with
// Socket.replyInOrder) takes its turn in the channel's FIFO as a small task
// holding only its refs. Only a channel with
// nothing running or queued answers at once (the pool queue being full),
// which is in order too. Past Config.ChannelQueueHard tasks on one channel
// the client is flooding and the socket is closed with 1013 (overloaded).
//
// Frames handed to Conn.Send are complete WebSocket frames. Broadcast
// frames are shared by every subscriber and must never be modified.
//
// # Callbacks that must not block
//
// Conn.Send and Conn.Close (called from pollers, workers and broker
// delivery goroutines, sometimes while a topic lock is held). The
// pubsub.Handler installed by the hub takes the topic's sequencing lock,
// appends to its lanes' pending lists (or, without a Fanout, calls
// Conn.Send), and only to fill a gap reads the broker's History.
//
// # Bytes
//
// Frame data passed to HandleText/HandleBinary is valid only until the call
// returns; everything kept (refs, topic, payload) is copied. Refs are
// kept until their reply is sent, so a ref (or a non-join message's
// join_ref) over Config.MaxRefBytes closes the socket with 1011. Payload bytes
// are passed to backends untouched, except that the join payload keys
// "offset" and "token" are removed.
//
// # Auth and limits
//
// Config.Limiter (nil: none) limits joins and events (by class: the route's
// RateLimits map an event to a limits.classes entry) per rate key
// (ConnectInfo.RateKey: the player id, or the client's IP prefix for
// anonymous sockets), and heartbeats per connection (a bucket held in the
// Socket). An over-limit join or push is answered
// {"reason":"rate_limited","retry_after_ms":N} in its turn among the
// channel's replies (rejectInOrder) and never reaches the backend. A player
// refused continuously for the abuse window gets the socket that hit the
// limit closed with 1008 (its other sockets follow on their next refusal,
// since the streak is per player).
//
// An over-limit heartbeat gets no reply, and only its own connection is
// affected: clients take an unanswered heartbeat for a dead connection, so
// the heartbeats of sockets sharing a rate key (a NAT's anonymous sockets, a
// player's tabs) must not drain each other. A connection refused
// continuously for the abuse window is closed with 1008; its streak is its
// own.
//
// A join is authorized on the worker, before the backend's Join: the
// join-payload "token" (verified with Config.Verifier; nil means auth is
// off and the token is ignored) or else the connect identity must allow the
// topic (topics claim); otherwise the reply is {"reason":"unauthorized"}
// and the backend is not called. A join token's identity applies to that
// channel only (its player and claims go to that channel's backend calls,
// its player keys that channel's event limits) and is checked when the
// join happens: its exp does not end the channel later (the connect
// token's exp closes the whole socket, in the gateway). A forbidden topic
// without a route is also answered unauthorized (not "unmatched topic"),
// so the answer does not reveal the routes.
//
// # Serializer notes
//
// V1 sockets are text only: a binary frame from a V1 client closes the
// socket with 1011 (malformed), and binary payloads (pushes, broadcasts) are
// never sent to V1 sockets (they are dropped and counted); a binary reply
// response is replaced by {} on V1. Binary broadcasts (kind 2) have no ref
// slot, so they carry no stream position even to opted-in channels. Strings
// longer than 255 bytes cannot be written in a binary frame; such frames are
// dropped and counted (phxgate_dropped_frames_total).
//
// # Positions (DESIGN.md §6)
//
// A join payload with the key "offset" opts the channel in: its broadcasts
// carry "p:<epoch>:<offset>" in the ref slot, the join reply carries
// "position" (and "recovered" when resuming), and a resuming join gets the
// events it missed after the reply and before any live event: at most
// Config.MaxReplay events and Config.ReplayBytes payload bytes, past which
// the join answers recovered=false (so a replay never overflows the write
// queue and closes the socket on every reconnect).
//
// Each topic's live events pass through a pubsub.Sequencer first: an event
// at or below the last one delivered is dropped, a gap is filled from
// History, and what cannot be filled (epoch change, history gone, broker
// down) is a continuity loss: every channel of the topic holding positions
// stops getting events at once and is ended with phx_error by its worker,
// so its client rejoins with its position and is replayed or told
// recovered=false, never left with a silent gap. Plain channels carry on.
//
// A push whose reply broadcasts to its own topic is answered only once the
// broadcast has been handed to this node's subscribers (at most 1 s), so
// the sender gets its broadcast before its reply with any engine (the
// Redis one delivers after Publish returns). Reply broadcasts carry an
// idempotency key derived from the call's, so a publish retried after a
// lost answer is published once.
//
// The join of an opted-in channel never holds the topic lock across a broker
// call: it registers the subscriber in catch-up mode (live events for it are
// buffered, at most Config.ResumeBuffer), reads History without locks, then,
// under the topic lock, sends the reply, the replayed events and the buffered
// events newer than the last one replayed, and switches to live. This keeps
// the no-gap/no-duplicate guarantee without ever blocking live delivery of a
// topic on a (possibly remote) History call, and cannot deadlock with a
// broker that delivers while holding its own locks.
//
// # Locks
//
// Socket.mu guards a socket's channel slots and their queues; it is never
// held while calling a backend, the broker or another lock's owner, except
// that Terminate and the Handle methods schedule work (non-blocking) under
// it. In the hub the orders are topicHub.subMu → hub.mu and topicHub.seqMu
// → hubLane.mu; a lane's mu is held alone otherwise, and never across a
// broker call. A continuity loss collects the channels to end under the
// lanes' locks and takes Socket.mu only after letting them go.
package channels
