package channels

// CloseCode is a WebSocket close status sent by the server. This table is
// the single source for code, logs, metrics and the README (DESIGN.md §9).
type CloseCode uint16

const (
	// CloseGoingAway: kicked by a backend or by ops. phoenix.js reconnects.
	CloseGoingAway CloseCode = 1001
	// CloseProtocolError: an RFC 6455 violation (unmasked frame, reserved
	// bits, bad opcode, oversized or fragmented control frame), or the idle
	// timeout (as Bandit does).
	CloseProtocolError CloseCode = 1002
	// CloseInvalidPayload: invalid UTF-8 in a text frame.
	CloseInvalidPayload CloseCode = 1007
	// ClosePolicyViolation: token expired, sustained rate abuse.
	ClosePolicyViolation CloseCode = 1008
	// CloseMessageTooBig: a message over the size limit.
	CloseMessageTooBig CloseCode = 1009
	// CloseInternalError: internal error, or a well-formed frame carrying a
	// malformed Phoenix message (exactly as Phoenix 1.8 closes).
	CloseInternalError CloseCode = 1011
	// CloseServiceRestart: graceful drain (shutdown or deploy).
	CloseServiceRestart CloseCode = 1012
	// CloseTryAgainLater: slow consumer or overload.
	CloseTryAgainLater CloseCode = 1013
)

// DisconnectReason names why a socket ended; it labels the disconnect metric
// and log lines.
type DisconnectReason string

const (
	ReasonClientClosed  DisconnectReason = "client_closed"
	ReasonConnReset     DisconnectReason = "conn_reset"
	ReasonIdleTimeout   DisconnectReason = "idle_timeout"
	ReasonProtocolError DisconnectReason = "protocol_error"
	ReasonInvalidUTF8   DisconnectReason = "invalid_utf8"
	ReasonTooBig        DisconnectReason = "message_too_big"
	ReasonMalformed     DisconnectReason = "malformed_message"
	ReasonSlowConsumer  DisconnectReason = "slow_consumer"
	ReasonKicked        DisconnectReason = "kicked"
	ReasonTokenExpired  DisconnectReason = "token_expired"
	ReasonRateAbuse     DisconnectReason = "rate_abuse"
	ReasonDrain         DisconnectReason = "drain"
	ReasonInternal      DisconnectReason = "internal_error"

	// ReasonOverloaded: the client queued more than ChannelQueueHard
	// messages on one channel without waiting for replies (closed 1013).
	ReasonOverloaded DisconnectReason = "overloaded"
)

// Join and reply reasons sent to clients in {"reason": ...} responses.
const (
	ReplyUnmatchedTopic  = "unmatched topic"
	ReplyTooManyChannels = "too many channels joined"
	ReplyJoinCrashed     = "join crashed"
	ReplyChannelCrash    = "channel_crash"
	ReplyUnauthorized    = "unauthorized"
	ReplyRateLimited     = "rate_limited"
	ReplyDenied          = "denied"
	ReplyTopicTooLong    = "topic too long"
	ReplyJoinRefTooLong  = "join_ref too long"
	// ReplyOverloaded refuses a client push while the node's output budget
	// is spent (gateway output_budget_bytes); the client may retry later.
	ReplyOverloaded = "overloaded"
	// ReplyBadIdempotencyKey refuses a push whose "idempotency_key" is not
	// a string of 1 to 64 bytes of valid UTF-8, or appears twice.
	ReplyBadIdempotencyKey = "bad_idempotency_key"
)
