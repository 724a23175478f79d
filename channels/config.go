package channels

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Defaults. Every limit is non-zero: zero is never "unlimited".
const (
	// DefaultMaxChannels is Phoenix's max_channels_per_transport (v1.8.9+).
	DefaultMaxChannels = 100
	// DefaultWorkers is the number of goroutines running backend calls.
	DefaultWorkers = 64
	// DefaultQueueSize bounds the channels waiting for a worker. Past it a
	// client call gets a backend_overloaded reply instead of blocking the
	// poller.
	DefaultQueueSize = 16384
	// DefaultChannelQueue bounds the calls waiting behind the running one on
	// a single channel (per-channel FIFO).
	DefaultChannelQueue = 32
	// DefaultCallTimeout is the deadline of one backend call.
	DefaultCallTimeout = 5 * time.Second
	// DefaultResumeBuffer bounds the live events held for a resuming join
	// while its history is read; past it the channel ends with phx_error and
	// the client rejoins from its last position.
	DefaultResumeBuffer = 4096
)

// ErrBadConfig is wrapped by Validate errors.
var ErrBadConfig = errors.New("channels: bad config")

// Config configures a Server.
type Config struct {
	// NodeID names this node in backend calls and idempotency keys. Empty
	// is invalid; NewConfig uses hostname-pid.
	NodeID string
	// MaxChannels is the number of channels (joined or joining) one socket
	// may hold; a join past it gets "too many channels joined". Zero is
	// invalid.
	MaxChannels int
	// Workers is the number of goroutines running backend calls. Zero is
	// invalid.
	Workers int
	// QueueSize is how many channels with work may wait for a worker. Zero
	// is invalid.
	QueueSize int
	// ChannelQueue is how many calls may wait on one channel; past it the
	// call gets a backend_overloaded reply. Zero is invalid.
	ChannelQueue int
	// CallTimeout is the deadline of each backend call (Join, HandleIn,
	// Leave) and broker call made for a socket. Zero is invalid.
	CallTimeout time.Duration
	// ResumeBuffer is the number of live events held per resuming join while
	// its history is read. Zero is invalid.
	ResumeBuffer int
}

// NewConfig returns the defaults.
func NewConfig() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "node"
	}
	return Config{
		NodeID:       host + "-" + strconv.Itoa(os.Getpid()),
		MaxChannels:  DefaultMaxChannels,
		Workers:      DefaultWorkers,
		QueueSize:    DefaultQueueSize,
		ChannelQueue: DefaultChannelQueue,
		CallTimeout:  DefaultCallTimeout,
		ResumeBuffer: DefaultResumeBuffer,
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.NodeID == "":
		return fmt.Errorf("%w: empty NodeID", ErrBadConfig)
	case c.MaxChannels <= 0:
		return fmt.Errorf("%w: MaxChannels %d", ErrBadConfig, c.MaxChannels)
	case c.Workers <= 0:
		return fmt.Errorf("%w: Workers %d", ErrBadConfig, c.Workers)
	case c.QueueSize <= 0:
		return fmt.Errorf("%w: QueueSize %d", ErrBadConfig, c.QueueSize)
	case c.ChannelQueue <= 0:
		return fmt.Errorf("%w: ChannelQueue %d", ErrBadConfig, c.ChannelQueue)
	case c.CallTimeout <= 0:
		return fmt.Errorf("%w: CallTimeout %v", ErrBadConfig, c.CallTimeout)
	case c.ResumeBuffer <= 0:
		return fmt.Errorf("%w: ResumeBuffer %d", ErrBadConfig, c.ResumeBuffer)
	}
	return nil
}
