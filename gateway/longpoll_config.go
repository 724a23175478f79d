package gateway

import (
	"time"
)

// Long-poll defaults (keys longpoll.*). Every bound is on by default.
const (
	// DefaultLongPollWindow is how long a poll is held when nothing is
	// buffered for it (Phoenix's window_ms, 10 s). A session is ended after
	// 1.5 windows without a poll.
	DefaultLongPollWindow = 10 * time.Second
	// MaxLongPollWindow keeps a held poll inside phoenix.js's own request
	// timeout (longpollerTimeout, 20 s): a longer window would make the
	// client give up on every idle poll and reconnect.
	MaxLongPollWindow = 19 * time.Second
	// minLongPollWindow keeps the expiry sweep meaningful.
	minLongPollWindow = 10 * time.Millisecond
	// DefaultLongPollMaxBufferBytes bounds what one session holds for its
	// next poll, counted as write_queue_max_bytes counts a socket's queue
	// (message bytes plus per-message bookkeeping). Past it the session
	// is ended as a slow consumer.
	DefaultLongPollMaxBufferBytes = DefaultWriteQueueMaxBytes
	// DefaultLongPollMaxSessions caps the node's open long-poll sessions,
	// on top of limits.max_conns (which counts them too).
	DefaultLongPollMaxSessions = 10_000
	// LongPollMaxBodyBytes is the largest POST body read, as Phoenix
	// (Plug's read_body default, 8,000,000 bytes); a bigger one is refused
	// with HTTP 413 and the session survives.
	LongPollMaxBodyBytes = 8_000_000
	// LongPollSmallPostBytes is the largest POST body (by its
	// Content-Length) read without a slot of longpoll.max_reading_posts:
	// an honest phoenix.js POST is a few KB and one message of the default
	// max_message_size fits, so a slot wall built by one address never
	// blocks it. Such bodies are bounded by the sessions instead
	// (longPollMaxSessionPosts per session, read within handshake_timeout).
	LongPollSmallPostBytes = 64 << 10
	// DefaultLongPollMaxReadingPosts caps the large POST bodies (over
	// LongPollSmallPostBytes, or of unknown length) read and dispatched at
	// once on the node, whatever the number of sessions: with
	// LongPollMaxBodyBytes each, 64 bound them to 512 MB in the worst case.
	DefaultLongPollMaxReadingPosts = 64
	// DefaultLongPollIPMaxReadingPosts caps the large POST bodies one
	// client address (as limits.ip_max_conns counts it) has read at once,
	// so that one address cannot take the node's slots with slow bodies:
	// with the default 64 it takes 32 addresses.
	DefaultLongPollIPMaxReadingPosts = 2
	// LongPollMaxBatch is the most ndjson lines dispatched per POST, as
	// Phoenix (phoenix.js MAX_LONGPOLL_BATCH_SIZE); further lines are
	// dropped and counted.
	LongPollMaxBatch = 100
	// longPollMaxHeldPolls bounds the polls held at once for one session.
	// Phoenix answers a poll superseded by a newer one at its window's
	// end; past this many the oldest is answered 204 at once, so a poll
	// flood on one session holds at most this many requests.
	longPollMaxHeldPolls = 4
	// longPollMaxSessionPosts bounds the POSTs of one session in flight at
	// once (body being read, waiting for the session's dispatch turn, or
	// dispatching): phoenix.js before 1.7.0 sends one POST per push
	// without waiting, Phoenix handles them concurrently. Past this many a
	// POST is refused with 409 before its body is read, so one session
	// holds at most this many small bodies. 32: a game that pushes a
	// dozen things in one tick (one POST each) while its joins are out
	// stays well under it, even when the node is slow to answer; 8 was
	// reached on a loaded machine by a phoenix.js 1.6 client pushing 16
	// at once, whose refused pushes then timed out.
	longPollMaxSessionPosts = 32
	// lpBodyStartBytes is the buffer a POST body of known length starts
	// with; it grows as the body arrives (lpReadBody), so a POST that sent
	// only its headers holds this much, not its Content-Length.
	lpBodyStartBytes = 16 << 10
)

// LongPollConfig holds the keys under longpoll.*.
type LongPollConfig struct {
	// Enabled (longpoll.enabled) serves <socket_path>/longpoll. On by
	// default: phoenix.js only uses it when the app asks for it (transport
	// or longPollFallbackMs), so it costs WebSocket clients nothing, while
	// clients behind proxies that block WebSockets work out of the box;
	// sessions count against the same admission limits as sockets.
	Enabled bool `yaml:"enabled" usage:"serve the long-poll transport at <socket_path>/longpoll"`
	// Window (longpoll.window) is how long a poll is held; a session with
	// no poll for 1.5 windows is ended. Between 10ms and 19s.
	Window time.Duration `yaml:"window" usage:"how long a poll is held; a session with no poll for 1.5 windows ends"`
	// MaxBufferBytes (longpoll.max_buffer_bytes) bounds the bytes one
	// session buffers between polls; past it the session is ended (slow
	// consumer). Must be > 0.
	MaxBufferBytes int `yaml:"max_buffer_bytes" usage:"bytes one long-poll session buffers between polls (over it: session ended)"`
	// MaxSessions (longpoll.max_sessions) caps open sessions on this node;
	// a new one past it is refused ({"status":403}). Must be > 0.
	MaxSessions int `yaml:"max_sessions" usage:"open long-poll sessions on this node"`
	// MaxReadingPosts (longpoll.max_reading_posts) caps the POST bodies
	// being read and dispatched at once on this node. A POST that finds
	// none free waits up to one window, then is answered HTTP 503 with
	// Retry-After (phoenix.js closes with 1011 and reconnects). Must be > 0.
	MaxReadingPosts int `yaml:"max_reading_posts" usage:"large long-poll POST bodies read at once on this node (over it: wait a window, then HTTP 503)"`
	// IPMaxReadingPosts (longpoll.ip_max_reading_posts) caps the large
	// POST bodies one client address has read at once; one more is
	// answered HTTP 503 with Retry-After at once. Must be > 0; above
	// max_reading_posts it changes nothing.
	IPMaxReadingPosts int `yaml:"ip_max_reading_posts" usage:"large long-poll POST bodies one client address has read at once (over it: HTTP 503)"`
}

func newLongPollConfig() LongPollConfig {
	return LongPollConfig{
		Enabled:        true,
		Window:         DefaultLongPollWindow,
		MaxBufferBytes: DefaultLongPollMaxBufferBytes,
		MaxSessions:    DefaultLongPollMaxSessions,

		MaxReadingPosts:   DefaultLongPollMaxReadingPosts,
		IPMaxReadingPosts: DefaultLongPollIPMaxReadingPosts,
	}
}

// validate names the first bad longpoll.* key.
func (c LongPollConfig) validate() error {
	switch {
	case c.Window < minLongPollWindow || c.Window > MaxLongPollWindow:
		return keyErr("longpoll.window", "must be between %v and %v (phoenix.js gives up on a request after 20s)", minLongPollWindow, MaxLongPollWindow)
	case c.MaxBufferBytes <= 0 || c.MaxBufferBytes > 1<<30:
		return keyErr("longpoll.max_buffer_bytes", "must be between 1 and 1073741824 bytes")
	case c.MaxSessions <= 0 || c.MaxSessions > 10_000_000:
		return keyErr("longpoll.max_sessions", "must be between 1 and 10000000")
	case c.MaxReadingPosts <= 0 || c.MaxReadingPosts > 100_000:
		return keyErr("longpoll.max_reading_posts", "must be between 1 and 100000")
	case c.IPMaxReadingPosts <= 0 || c.IPMaxReadingPosts > 100_000:
		return keyErr("longpoll.ip_max_reading_posts", "must be between 1 and 100000")
	}
	return nil
}
