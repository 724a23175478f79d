package backends

import (
	"context"
	"errors"
)

// Payload is a message body: JSON text, or raw bytes when Binary is set
// (a V2 binary frame). Backends must not modify Data.
type Payload struct {
	Data   []byte
	Binary bool
}

// Call describes one forwarded client message (a join or an event).
// Everything in it is owned by the callee for the duration of the call and
// may be kept.
type Call struct {
	NodeID   string
	ConnID   uint64
	PlayerID string
	// Claims is the raw JSON of the connect token's claims ("" when none).
	Claims []byte
	// Params is the raw JSON object of the socket's connect params.
	Params  []byte
	Topic   string
	Event   string
	JoinRef string
	Ref     string
	Payload Payload
	// IdempotencyKey is unique per call and the same on every retry of it,
	// so a backend that remembers keys applies an action at most once:
	// "<instance>:<conn>:<gen>:<seq>" (a random per-boot id, the connection,
	// the channel incarnation, a sequence), or "player:<player>:<key>" for
	// a push from an identified player whose payload carries its own
	// string "idempotency_key" (≤ 64 bytes), so a bet resent after a
	// reconnect (another node, another ref) carries the same key. Never
	// built from the client's refs; treat it as opaque.
	IdempotencyKey string

	// Join only. ResumePosition is the stream position the client asked to
	// resume after ("" when none); Recoverable says whether the history
	// can replay the events after it; Rejoin says the same player rejoined
	// the topic within its grace window, taking over the seat of the
	// dropped connection RejoinConnID (on this node) joined as
	// RejoinJoinRef, for which no Leave was sent.
	ResumePosition string
	Recoverable    bool
	Rejoin         bool
	RejoinConnID   uint64
	RejoinJoinRef  string
}

// Message is an event sent to a topic or to one channel.
type Message struct {
	// Topic is the broadcast's topic; empty means the call's topic.
	// Ignored for pushes.
	Topic   string
	Event   string
	Payload Payload
}

// Stop says how a reply ends the channel.
type Stop uint8

const (
	// StopNone keeps the channel.
	StopNone Stop = iota
	// StopNormal ends the channel with phx_close.
	StopNormal
	// StopCrash ends the channel with phx_error {"reason":"channel_crash"}.
	StopCrash
)

// Reply is a backend's answer to Join or HandleIn.
type Reply struct {
	// Status is the reply status ("ok", "error" or custom). Empty means no
	// reply is sent (noreply); a join always gets a reply ("ok" if empty).
	Status string
	// Response is the reply's response; empty Data means {}.
	Response Payload
	// Broadcasts are published to their topics before the reply is sent.
	Broadcasts []Message
	// Pushes go to this channel only, after the reply.
	Pushes []Message
	// Stop ends the channel after the reply and pushes.
	Stop Stop

	// Join only. PresenceMeta is the JSON object to track for the player
	// on the topic's presence (nil: none). SnapshotPosition is the stream
	// position the join's reply reflects ("" when none).
	PresenceMeta     []byte
	SnapshotPosition string
}

// LeaveReason says why a channel ended.
type LeaveReason string

const (
	LeaveLeft         LeaveReason = "left"
	LeaveDisconnected LeaveReason = "disconnected"
	LeaveKicked       LeaveReason = "kicked"
	LeaveTimedOut     LeaveReason = "timed_out"
	LeaveDrained      LeaveReason = "drained"
	LeaveCrashed      LeaveReason = "crashed"
	LeaveDuplicate    LeaveReason = "duplicate_join"
	// LeaveExpired: the connect token expired (the socket was closed with
	// 1008). A seat whose leave_grace ran out leaves as "disconnected".
	LeaveExpired LeaveReason = "expired"
)

// Backend is the contract every game backend engine fulfils. Calls for one
// channel arrive in the order the client sent them, one at a time; calls for
// different channels run concurrently. Leave is called exactly once for
// every successful Join.
type Backend interface {
	Join(ctx context.Context, c *Call) (*Reply, error)
	HandleIn(ctx context.Context, c *Call) (*Reply, error)
	Leave(ctx context.Context, c *Call, reason LeaveReason) error
}

// Reasons carried by error replies produced for backend failures.
const (
	ReasonUnavailable = "backend_unavailable"
	ReasonTimeout     = "backend_timeout"
	ReasonOverloaded  = "backend_overloaded"
	ReasonError       = "backend_error"
)

// ErrUnavailable, ErrTimeout, ErrOverloaded and ErrBackend classify backend
// failures; ReplyReason maps them to the reasons of the error replies
// (ReasonUnavailable, ReasonTimeout, ReasonOverloaded, ReasonError).
var (
	// ErrUnavailable: the backend cannot be reached (also while its
	// circuit breaker is open).
	ErrUnavailable = errors.New("backends: backend unavailable")
	// ErrTimeout: the backend did not answer within the call's deadline.
	ErrTimeout = errors.New("backends: backend timeout")
	// ErrOverloaded: the call was refused before it was sent, because the
	// engine's cap on calls in flight and waiting was reached (or no slot
	// freed before the deadline), or the backend said it is exhausted.
	ErrOverloaded = errors.New("backends: backend overloaded")
	// ErrBackend: any other failure (the backend answered with an error,
	// or with a malformed response).
	ErrBackend = errors.New("backends: backend error")
)
