package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Position is a point in a topic's event stream. Offsets are contiguous per
// topic (1, 2, 3 …); Epoch changes whenever the topic's history is lost, so a
// position from an older epoch is detected as stale instead of silently
// skipping events. The zero Position means "no position" (from now).
type Position struct {
	Epoch  string
	Offset uint64
}

// IsZero reports whether p is the zero Position.
func (p Position) IsZero() bool { return p.Epoch == "" && p.Offset == 0 }

// positionPrefix starts the wire form so that a position never looks like a
// decimal number and so can never equal a phoenix.js ref.
const positionPrefix = "p:"

// String returns the opaque wire form "p:<epoch>:<offset>".
func (p Position) String() string {
	return positionPrefix + p.Epoch + ":" + strconv.FormatUint(p.Offset, 10)
}

// AppendTo appends the wire form of p to b without allocating.
func (p Position) AppendTo(b []byte) []byte {
	b = append(b, positionPrefix...)
	b = append(b, p.Epoch...)
	b = append(b, ':')
	return strconv.AppendUint(b, p.Offset, 10)
}

// ErrBadPosition is returned by ParsePosition for anything that is not a
// position produced by Position.String.
var ErrBadPosition = errors.New("pubsub: malformed position")

// ParsePosition parses the wire form produced by Position.String.
func ParsePosition(s string) (Position, error) {
	rest, ok := strings.CutPrefix(s, positionPrefix)
	if !ok {
		return Position{}, fmt.Errorf("%w: %q", ErrBadPosition, s)
	}
	i := strings.LastIndexByte(rest, ':')
	if i <= 0 || i > maxEpochLen {
		return Position{}, fmt.Errorf("%w: %q", ErrBadPosition, s)
	}
	off, err := strconv.ParseUint(rest[i+1:], 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("%w: %q", ErrBadPosition, s)
	}
	return Position{Epoch: rest[:i], Offset: off}, nil
}

// maxEpochLen bounds the epoch part of a wire position supplied by a client.
const maxEpochLen = 64

// Event is one published event. Payload is JSON (normally an object) unless
// Binary is set, in which case it is raw bytes. Events handed to a Handler
// are shared by every local subscriber: treat them as immutable. An
// ephemeral event has the zero Pos.
type Event struct {
	Topic   string
	Event   string
	Payload []byte
	Binary  bool
	Pos     Position
	// Published is when the event was published (on whichever node),
	// zero when the engine does not know; for latency metrics only.
	Published time.Time
}

// Ephemeral reports whether ev was published with Message.Ephemeral (it has
// no position).
func (ev *Event) Ephemeral() bool { return ev.Pos.IsZero() }

// Message is what Publish publishes.
type Message struct {
	Event   string
	Payload []byte // JSON unless Binary; kept by the engine, not copied
	Binary  bool
	// Ephemeral events get no offset and no place in history: they reach
	// the subscribers live at the time, and a resuming client never sees
	// them (presence diffs, typing indicators). Publish returns the zero
	// Position for them.
	Ephemeral bool
	// IdempotencyKey, when set, publishes the message at most once per
	// topic and key within the engine's idempotency window (at least
	// MinIdempotencyWindow): a later Publish with the same key publishes
	// nothing and returns the first one's position, so a publisher that
	// retries after a lost answer does not publish twice. At most
	// MaxIdempotencyKeyLen bytes; ignored for ephemeral messages.
	IdempotencyKey string
}

// Idempotent publishing bounds.
const (
	// MaxIdempotencyKeyLen bounds Message.IdempotencyKey.
	MaxIdempotencyKeyLen = 128
	// MinIdempotencyWindow is how long every engine remembers a key at
	// least: a backend's retries of one call fit well within it.
	MinIdempotencyWindow = 2 * time.Minute
)

// ErrBadIdempotencyKey is returned by Publish for a key that is too long.
var ErrBadIdempotencyKey = errors.New("pubsub: idempotency key too long")

// Handler receives the live events of the topics this node subscribed to.
//
// An engine calls a topic's Handler methods one at a time, in order, on its
// delivery goroutine (the publisher's for the memory engine): they must
// only queue work, never block on the network or on another topic. A
// Handler may call History, Subscribe and Unsubscribe, never Publish.
type Handler interface {
	// Deliver hands over one live event. Within an epoch, offsets arrive
	// in increasing order; an engine that lost messages (a dropped
	// connection) may skip offsets, and an event at or below one already
	// delivered may arrive again after a Resync. Deduplicating and filling
	// gaps from History is the subscriber's job (see Sequencer).
	Deliver(ev *Event)
	// Resync says that the engine may have missed events of the topic
	// since the last Deliver (it reconnected to its store, or its live
	// feed overflowed): the subscriber must catch up from History before
	// it trusts its position again.
	Resync(topic string)
}

// HistoryResult is the answer to History.
type HistoryResult struct {
	// Events holds retained events after the requested position, in
	// offset order: all of them, or the first limit. Empty when Recovered
	// is false.
	Events []*Event
	// Top is the topic's current position (the last published offset).
	Top Position
	// Recovered is true when every event after the requested position was
	// still retained in the same epoch: Events then starts right after it,
	// and a caller that got limit events pages on from the last one.
	Recovered bool
}

// Broker is the contract every pubsub engine fulfils. All methods are safe
// for concurrent use, and every one that blocks honours ctx.
//
// Guarantees, per topic:
//   - Offsets are contiguous within an epoch (1, 2, 3 …), and Publish
//     returns the event's position once it is in history.
//   - Every event published after Subscribe returned is handed to this
//     node's Handler, at most once per Deliver sequence, in offset order,
//     unless the engine calls Resync (which it does whenever it may have
//     lost one). Subscribe returns the topic's position at the time it took
//     effect: everything after it will come.
//   - Publish returning says nothing about local delivery having happened:
//     the memory engine delivers before Publish returns, the Redis engine
//     some time after. A caller that needs "delivered here" waits for the
//     offset on its own delivery path (channels does, so that a sender
//     sees its broadcast before its reply).
//   - History answers from the same epoch and offsets as delivery, so a
//     subscriber can fill any gap it sees and dedupe by offset.
type Broker interface {
	// Publish appends a message to the topic and delivers it to the
	// topic's Handler on every node. It returns the event's position
	// (zero for an ephemeral message).
	Publish(ctx context.Context, topic string, m Message) (Position, error)
	// Subscribe installs this node's handler for a topic (one per topic
	// per node; a second Subscribe for the same topic replaces the
	// handler) and returns the topic's position as of then.
	Subscribe(ctx context.Context, topic string, h Handler) (Position, error)
	// Unsubscribe removes this node's handler for a topic.
	Unsubscribe(ctx context.Context, topic string) error
	// History returns the events after since, at most limit of them (a
	// limit ≤ 0 or above MaxHistoryPage means MaxHistoryPage). A zero since
	// returns only Top.
	History(ctx context.Context, topic string, since Position, limit int) (HistoryResult, error)
	// Ping reports whether the engine can serve publishes now (a /readyz
	// check); it honours ctx's deadline.
	Ping(ctx context.Context) error
	// Close releases the engine's resources.
	Close() error
}

// MaxHistoryPage bounds the events one History call returns.
const MaxHistoryPage = 1000

// HandlerFuncs adapts two functions to a Handler; a nil OnResync ignores
// resyncs (for subscribers that keep no position).
type HandlerFuncs struct {
	OnDeliver func(ev *Event)
	OnResync  func(topic string)
}

// Deliver implements Handler.
func (h HandlerFuncs) Deliver(ev *Event) { h.OnDeliver(ev) }

// Resync implements Handler.
func (h HandlerFuncs) Resync(topic string) {
	if h.OnResync != nil {
		h.OnResync(topic)
	}
}
