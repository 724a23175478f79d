// Package wsframe is the incremental RFC 6455 frame parser used by the
// gateway's pollers for client-to-server traffic.
//
// A Parser holds the state of one connection: an incomplete frame (nil
// between frames) and a fragmented message being reassembled (nil when
// none). Feed may be handed any slice of the byte stream; it validates every
// header as soon as the relevant bytes are present and checks a declared
// length against the message limit before anything is allocated, and it
// grows buffers only as bytes actually arrive.
//
// A Parser is not safe for concurrent use: the gateway calls it only on the
// connection's poller goroutine. Payloads passed to a Handler are unmasked
// in place and valid only until the callback returns; Handler callbacks run
// on the caller's goroutine and must not block.
package wsframe
