package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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
// are shared by every local subscriber: treat them as immutable.
type Event struct {
	Topic   string
	Event   string
	Payload []byte
	Binary  bool
	Pos     Position
}

// Handler receives the live events of one topic on this node, in offset
// order, one call at a time per topic. It must not block: it runs on the
// publisher's (or the engine's delivery) goroutine.
type Handler func(ev *Event)

// HistoryResult is the answer to History.
type HistoryResult struct {
	// Events holds the retained events after the requested position, in
	// offset order. Empty when Recovered is false.
	Events []*Event
	// Top is the topic's current position (the last published offset).
	Top Position
	// Recovered is true when every event after the requested position was
	// still retained in the same epoch, so Events is exactly what was missed.
	Recovered bool
}

// Broker is the contract every pubsub engine fulfils. All methods are safe
// for concurrent use.
type Broker interface {
	// Publish appends an event to the topic and delivers it to the topic's
	// live handler on every node. It returns the event's position.
	Publish(ctx context.Context, topic, event string, payload []byte, binary bool) (Position, error)
	// Subscribe installs this node's handler for a topic (one per topic per
	// node; a second Subscribe for the same topic replaces the handler).
	Subscribe(ctx context.Context, topic string, h Handler) error
	// Unsubscribe removes this node's handler for a topic.
	Unsubscribe(ctx context.Context, topic string) error
	// History returns the events after since (up to limit, 0 = all
	// retained). A zero since returns only Top.
	History(ctx context.Context, topic string, since Position, limit int) (HistoryResult, error)
	// Close releases the engine's resources.
	Close() error
}
