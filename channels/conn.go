package channels

import "github.com/phxgate/phxgate/channels/auth"

// Conn is the transport side of a socket, implemented by the gateway.
// Every method is safe for concurrent use and never blocks.
type Conn interface {
	// Send queues one complete WebSocket frame (header and payload, as built
	// by this package) for writing. Frames are written in the order Send is
	// called. The frame is shared and immutable: the caller never modifies
	// it afterwards and the transport never modifies it. Send on a closed
	// or closing connection drops the frame.
	Send(frame []byte)
	// Close sends a close frame with code (empty reason) after the frames
	// already queued, then closes the connection. Later calls are no-ops.
	Close(code CloseCode, reason DisconnectReason)
	// ID is the connection's id, unique on this node.
	ID() uint64
}

// BulkConn is implemented by a Conn that can give broadcast output a lower
// priority than replies: the hub queues broadcast frames with SendBulk,
// everything else goes through Send. Frames keep the order in which they
// were queued either way; only when the socket is written may differ.
type BulkConn interface {
	SendBulk(frame []byte)
}

// FrameStream is a sequence of frames made one at a time, when the
// transport is ready for the next: a large presence_state goes out in
// pieces this way, so that a socket never holds more than a piece or two
// of it. The transport calls Next and Close one call at a time, possibly
// with its own locks held: neither may block or call into the Conn.
type FrameStream interface {
	// Next returns the next frame (built like a frame given to Send), or
	// nil when the stream is done. The transport calls it only once every
	// frame queued before the stream, and every frame Next returned
	// before, has been handed to the client.
	Next() []byte
	// Close is called exactly once: after Next returned nil, or when the
	// transport gives the stream up (the connection closed, or its queue
	// was dropped). It releases what the stream holds.
	Close()
}

// StreamConn is implemented by a Conn that paces a FrameStream by its
// write queue (both of the gateway's transports).
type StreamConn interface {
	// SendStream queues s in the place of one frame: frames queued after
	// it (by any method) are written after every frame s makes. Frames
	// waiting behind a stream count against the socket's queue bound as
	// any others. On a closed or closing connection s is closed at once.
	SendStream(s FrameStream)
}

// Serializer identifies the wire format negotiated from the vsn parameter.
type Serializer uint8

const (
	// V1: one JSON object per text frame (vsn 1.0.x or missing).
	V1 Serializer = iota
	// V2: JSON arrays in text frames, plus binary frames (vsn 2.0.x).
	V2
)

// ConnectInfo is what the gateway learned during the handshake.
type ConnectInfo struct {
	Serializer Serializer
	// Params is the JSON object of connect params decoded from the query
	// string (nested a[b]=c included; vsn excluded).
	Params []byte
	// AuthToken is the token from the phoenix.js authToken subprotocol.
	AuthToken string
	// RemoteAddr is the client address (host only).
	RemoteAddr string
	// PlayerID is the authenticated player ("" when anonymous). It is
	// forwarded in every backend call.
	PlayerID string
	// Claims is the raw JSON of the connect token's claims (nil when none).
	// Kept by reference for the socket's lifetime: do not modify.
	Claims []byte
	// Identity is the verified connect token (nil when anonymous); its
	// Topics claim limits what the socket may join. Immutable.
	Identity *auth.Identity
	// RateKey keys the socket's per-player rate limits: the player id, or
	// for an anonymous socket the client's IP prefix ("ip:203.0.113.7/32",
	// "ip:2001:db8:1:2::/64"), so reconnecting resets nothing. Empty:
	// PlayerID, else a key of this connection alone.
	RateKey string
}
