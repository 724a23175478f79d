package channels

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/phxgate/phxgate/channels/ratelimit"
	"go.opentelemetry.io/otel/trace"
)

// Defaults. Every limit is non-zero: zero is never "unlimited".
const (
	// DefaultMaxChannels is Phoenix's max_channels_per_transport (v1.8.9+).
	DefaultMaxChannels = 100
	// DefaultMaxTopicBytes bounds a joined topic's length. A channel keeps
	// its topic for its whole life, so without a bound one socket could pin
	// MaxChannels × max_message_size bytes. 255 is also the most a V2
	// binary frame can carry (one length byte).
	DefaultMaxTopicBytes = 255
	// DefaultMaxJoinRefBytes bounds the join_ref (or, for V1, the join's
	// ref) a channel keeps for its life. phoenix.js sends short decimal
	// counters; 64 leaves room for UUIDs and other clients' schemes.
	DefaultMaxJoinRefBytes = 64
	// DefaultMaxRefBytes bounds the ref (and, on messages other than
	// joins, the join_ref) of any client message. Refs are kept in queued
	// tasks until the reply is sent, so without a bound every queued task
	// could hold up to max_message_size bytes; 64 as for join_refs.
	DefaultMaxRefBytes = 64
	// DefaultWorkers is the number of goroutines running backend calls.
	DefaultWorkers = 64
	// DefaultQueueSize bounds the channels waiting for a worker. Past it a
	// client call gets a backend_overloaded reply instead of blocking the
	// poller.
	DefaultQueueSize = 16384
	// DefaultChannelQueue bounds the calls waiting behind the running one on
	// a single channel (per-channel FIFO). A client firing a few hundred
	// pushes at once (phoenix.js sends them without waiting for replies)
	// has them all served, as Phoenix's channel mailbox would.
	DefaultChannelQueue = 256
	// DefaultChannelQueueHard bounds everything queued on one channel,
	// in-order refusals included. Past ChannelQueue a push only costs a
	// small refusal task, so this bound is only hit by a client that keeps
	// pushing without waiting for replies: it is closed (1013).
	DefaultChannelQueueHard = 4 * DefaultChannelQueue
	// DefaultCallTimeout is the deadline of one backend call.
	DefaultCallTimeout = 5 * time.Second
	// DefaultResumeBuffer bounds the live events held for a resuming join
	// while its history is read; past it the channel ends with phx_error and
	// the client rejoins from its last position.
	DefaultResumeBuffer = 4096
	// DefaultMaxReplay bounds the events one resuming join is replayed;
	// a client that missed more gets recovered=false and rebuilds from
	// the backend's join reply instead.
	DefaultMaxReplay = 1000
	// DefaultReplayBytes bounds the payload bytes one resuming join is
	// replayed, so that a replay never overflows the socket's write queue
	// (which would close it, and the client would retry the same resume
	// for ever).
	DefaultReplayBytes = 512 << 10
	// DefaultPresencePieceBytes bounds one frame of a presence_state: a
	// larger state goes out in pieces, so that it never overflows the
	// socket's write queue (1013).
	DefaultPresencePieceBytes = 64 << 10
	// DefaultPresenceStreamBytes bounds the presence_state snapshots held
	// by a node while their pieces go out: 64 MiB is five rooms full to
	// the presence defaults (10,000 × 1 KiB metas, about 11 MiB) being
	// joined at once, each by any number of sockets at their own pace.
	DefaultPresenceStreamBytes = 64 << 20
	// DefaultPresenceStreamWait bounds how long a join waits for that
	// budget.
	DefaultPresenceStreamWait = 2 * time.Second
)

// ErrBadConfig is wrapped by Validate errors.
var ErrBadConfig = errors.New("channels: bad config")

// Config configures a Server. It is the channels section of phxgate's
// configuration: the yaml tags are the keys under channels., and Validate
// names them relative to it ("workers"). NodeID, MaxReplay and ReplayBytes
// come from the gateway's top-level node_id, max_replay and replay_bytes.
type Config struct {
	// NodeID names this node in backend calls and idempotency keys. Empty
	// is invalid; NewConfig uses hostname-pid.
	NodeID string `yaml:"-"` // the gateway's node_id
	// MaxChannels is the number of channels (joined or joining) one socket
	// may hold; a join past it gets "too many channels joined". Zero is
	// invalid.
	MaxChannels int `yaml:"max_channels" usage:"channels one socket may hold (joined or joining)"`
	// MaxTopicBytes is the longest topic a join may name, in bytes; a
	// longer one gets {"reason":"topic too long"}. Zero is invalid.
	MaxTopicBytes int `yaml:"max_topic_bytes" usage:"longest topic a join may name, in bytes"`
	// MaxJoinRefBytes is the longest join_ref a join may carry (V1: the
	// join's ref), in bytes, as received on the wire (a JSON string counts
	// its quotes); a longer one gets {"reason":"join_ref too long"}. Zero
	// is invalid.
	MaxJoinRefBytes int `yaml:"max_join_ref_bytes" usage:"longest join_ref a join may carry, in bytes"`
	// MaxRefBytes is the longest ref any client message may carry, and the
	// longest join_ref of a message other than a join (a join's is bounded
	// by MaxJoinRefBytes, with a reply), in bytes, counted as the raw JSON
	// token (a JSON string counts its quotes; a binary frame's ref counts
	// as the JSON string it becomes). A longer one closes the socket with
	// 1011 (malformed), heartbeats included. Zero is invalid.
	MaxRefBytes int `yaml:"max_ref_bytes" usage:"longest ref any client message may carry, in bytes (over it: 1011)"`
	// Workers is the number of goroutines running backend calls. Zero is
	// invalid.
	Workers int `yaml:"workers" usage:"goroutines running backend calls"`
	// QueueSize is how many channels with work may wait for a worker. Zero
	// is invalid.
	QueueSize int `yaml:"queue_size" usage:"channels with work that may wait for a worker (over it: backend_overloaded)"`
	// ChannelQueue is how many tasks may wait on one channel and still be
	// handed to the backend; past it a call gets a backend_overloaded reply,
	// in its turn among the channel's replies. Zero is invalid.
	ChannelQueue int `yaml:"channel_queue" usage:"calls that may wait on one channel (over it: backend_overloaded)"`
	// ChannelQueueHard is how many tasks may wait on one channel in all;
	// a client message past it closes the socket with 1013 (the client is
	// flooding). Must be at least ChannelQueue.
	ChannelQueueHard int `yaml:"channel_queue_hard" usage:"tasks that may wait on one channel in all (over it: 1013)"`
	// CallTimeout is the deadline of each backend call (Join, HandleIn,
	// Leave) and broker call made for a socket. Zero is invalid.
	CallTimeout time.Duration `yaml:"call_timeout" usage:"deadline of each backend and broker call made for a socket"`
	// ResumeBuffer is the number of live events held per resuming join while
	// its history is read. Zero is invalid.
	ResumeBuffer int `yaml:"resume_buffer" usage:"live events held per resuming join while its history is read"`
	// MaxReplay is the most events a resuming join is replayed; past it
	// the join answers recovered=false. Zero is invalid.
	MaxReplay int `yaml:"-"` // the gateway's max_replay
	// ReplayBytes is the most payload bytes a resuming join is replayed;
	// past it the join answers recovered=false. Keep it well under the
	// transport's write queue bound. Zero is invalid.
	ReplayBytes int `yaml:"-"` // the gateway's replay_bytes
	// PresencePieceBytes is the largest frame payload of a presence_state
	// in bytes: a larger state goes out in pieces of at most this (a
	// presence_state, then presence_diffs), paced by the socket's write
	// queue. Keep it well under the transport's write queue bound. Zero
	// is invalid.
	PresencePieceBytes int `yaml:"-"` // an eighth of the gateway's write_queue_max_bytes, at most 64 KiB
	// PresenceStreamBytes bounds the bytes of presence_state snapshots
	// this node holds while their pieces go out (one per join streamed,
	// one per topic refreshed). A join whose state does not fit waits up
	// to PresenceStreamWait for room, then ends with phx_error, its
	// presence refused untracked (stream_budget; state_too_large for a
	// state larger than the whole budget). Zero is invalid.
	PresenceStreamBytes int64 `yaml:"presence_stream_bytes" usage:"bytes of presence_state snapshots a node holds while sending them in pieces"`
	// PresenceStreamWait is how long a join waits for PresenceStreamBytes
	// to have room; zero means not at all.
	PresenceStreamWait time.Duration `yaml:"presence_stream_wait" usage:"how long a join waits for presence_stream_bytes to have room (0s: not at all)"`

	// Presence tracks the players of routes with Presence on (nil: no
	// route tracks presence).
	Presence PresenceTracker `yaml:"-"`

	// Verifier checks join-payload tokens ("token", stripped before the
	// backend sees the payload). Nil: auth is off; join tokens are
	// stripped and ignored.
	Verifier TokenVerifier `yaml:"-"`
	// Limiter applies the per-player rate limits to joins and events and
	// the per-connection limit to heartbeats (DESIGN.md §5). Nil: no rate
	// limits (tests, embedders that limit elsewhere). The caller owns it
	// (and its Sweep).
	Limiter *ratelimit.Limiter `yaml:"-"`
	// Fanout spreads broadcasts over the transport's event loops. Nil:
	// the broker's delivery goroutine queues every subscriber's frame
	// itself.
	Fanout Fanout `yaml:"-"`
	// Overloaded reports that the node's output budget is spent: while it
	// returns true, client pushes are refused with {"reason":"overloaded"}
	// (in their turn, without a backend call) and Publish refuses
	// broadcasts with ErrOverloaded. Nil: never overloaded. Called on
	// pollers and workers; must be cheap and must not block.
	Overloaded func() bool `yaml:"-"`
	// Tracer traces joins and pushes forwarded to backends (see
	// tracing.go). Nil: tracing off, at no cost per message.
	Tracer trace.Tracer `yaml:"-"`
	// TrustClientTraceContext makes a client's payload "traceparent" the
	// parent of its join or push span (the client then chooses the trace
	// id, and so whether a parent-based or trace-id-ratio sampler records
	// it). False (the default): the span starts a new trace and links to
	// the client's span.
	TrustClientTraceContext bool `yaml:"-"`
	// Logger writes the lines logged on the join and push path (a backend
	// call that failed), each with the call's context: a handler that
	// reads the context (backends/telemetry.LogHandler) adds the trace and
	// span ids of a traced call. Nil: slog.Default().
	Logger *slog.Logger `yaml:"-"`
}

// NewConfig returns the defaults.
func NewConfig() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "node"
	}
	return Config{
		NodeID:              host + "-" + strconv.Itoa(os.Getpid()),
		MaxChannels:         DefaultMaxChannels,
		MaxTopicBytes:       DefaultMaxTopicBytes,
		MaxJoinRefBytes:     DefaultMaxJoinRefBytes,
		MaxRefBytes:         DefaultMaxRefBytes,
		Workers:             DefaultWorkers,
		QueueSize:           DefaultQueueSize,
		ChannelQueue:        DefaultChannelQueue,
		ChannelQueueHard:    DefaultChannelQueueHard,
		CallTimeout:         DefaultCallTimeout,
		ResumeBuffer:        DefaultResumeBuffer,
		MaxReplay:           DefaultMaxReplay,
		ReplayBytes:         DefaultReplayBytes,
		PresencePieceBytes:  DefaultPresencePieceBytes,
		PresenceStreamBytes: DefaultPresenceStreamBytes,
		PresenceStreamWait:  DefaultPresenceStreamWait,
	}
}

// Bounds of the keys: far above any sane setting, low enough that a typo
// cannot ask for unbounded memory.
const (
	maxMaxChannels   = 10_000
	maxRefBytes      = 4096
	maxWorkers       = 1 << 16
	maxQueueSize     = 1 << 24
	maxChannelQueue  = 1 << 22
	maxCallTimeout   = 10 * time.Minute
	maxResumeBuffer  = 1 << 20
	maxTopicBytesCap = 4096
	// maxPresenceStreamBytes is 64 GiB.
	maxPresenceStreamBytes = 1 << 36
)

func configErr(key, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrBadConfig, key, fmt.Sprintf(format, args...))
}

// Validate reports the first invalid field, named by its key.
func (c Config) Validate() error {
	switch {
	case c.NodeID == "":
		return configErr("node_id", "must not be empty")
	case c.MaxChannels <= 0 || c.MaxChannels > maxMaxChannels:
		return configErr("max_channels", "must be between 1 and %d", maxMaxChannels)
	case c.MaxTopicBytes <= 0 || c.MaxTopicBytes > maxTopicBytesCap:
		return configErr("max_topic_bytes", "must be between 1 and %d", maxTopicBytesCap)
	case c.MaxJoinRefBytes <= 0 || c.MaxJoinRefBytes > maxRefBytes:
		return configErr("max_join_ref_bytes", "must be between 1 and %d", maxRefBytes)
	case c.MaxRefBytes <= 0 || c.MaxRefBytes > maxRefBytes:
		return configErr("max_ref_bytes", "must be between 1 and %d", maxRefBytes)
	case c.Workers <= 0 || c.Workers > maxWorkers:
		return configErr("workers", "must be between 1 and %d", maxWorkers)
	case c.QueueSize <= 0 || c.QueueSize > maxQueueSize:
		return configErr("queue_size", "must be between 1 and %d", maxQueueSize)
	case c.ChannelQueue <= 0 || c.ChannelQueue > maxChannelQueue:
		return configErr("channel_queue", "must be between 1 and %d", maxChannelQueue)
	case c.ChannelQueueHard < c.ChannelQueue || c.ChannelQueueHard > maxChannelQueue:
		return configErr("channel_queue_hard", "must be between channel_queue (%d) and %d", c.ChannelQueue, maxChannelQueue)
	case c.CallTimeout <= 0 || c.CallTimeout > maxCallTimeout:
		return configErr("call_timeout", "must be between 0s (exclusive) and %v", maxCallTimeout)
	case c.ResumeBuffer <= 0 || c.ResumeBuffer > maxResumeBuffer:
		return configErr("resume_buffer", "must be between 1 and %d", maxResumeBuffer)
	case c.MaxReplay <= 0:
		return configErr("max_replay", "must be ≥ 1")
	case c.ReplayBytes <= 0:
		return configErr("replay_bytes", "must be ≥ 1")
	case c.PresencePieceBytes <= 0:
		return fmt.Errorf("%w: PresencePieceBytes %d", ErrBadConfig, c.PresencePieceBytes)
	case c.PresenceStreamBytes <= 0 || c.PresenceStreamBytes > maxPresenceStreamBytes:
		return configErr("presence_stream_bytes", "must be between 1 and %d", int64(maxPresenceStreamBytes))
	case c.PresenceStreamWait < 0 || c.PresenceStreamWait > maxCallTimeout:
		return configErr("presence_stream_wait", "must be between 0s and %v", maxCallTimeout)
	}
	return nil
}
