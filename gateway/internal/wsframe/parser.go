package wsframe

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Op is a WebSocket opcode.
type Op byte

// Opcodes defined by RFC 6455 §5.2. Anything else is a protocol error,
// since no extension is ever negotiated.
const (
	OpContinuation Op = 0x0
	OpText         Op = 0x1
	OpBinary       Op = 0x2
	OpClose        Op = 0x8
	OpPing         Op = 0x9
	OpPong         Op = 0xa
)

// IsControl reports whether op is a control opcode.
func (op Op) IsControl() bool { return op&0x8 != 0 }

// Close codes produced by the parser (RFC 6455 §7.4.1). They equal the
// channels.CloseCode values of the same meaning.
const (
	CodeProtocolError  uint16 = 1002
	CodeInvalidPayload uint16 = 1007
	CodeMessageTooBig  uint16 = 1009
)

const (
	// MaxHeaderLen is the longest client frame header: 2 bytes, 8 bytes of
	// extended length, 4 bytes of mask.
	MaxHeaderLen = 14
	// MaxControlPayload is the RFC 6455 §5.5 bound on control frames.
	MaxControlPayload = 125
)

// Error is a frame-level violation; Code is the close code to send.
type Error struct {
	Code uint16
	Msg  string
}

func (e *Error) Error() string { return "wsframe: " + e.Msg }

// The violations, each a sentinel so tests and metrics can tell them apart
// with errors.Is.
var (
	ErrReservedBits           = &Error{CodeProtocolError, "reserved bits set"}
	ErrUnknownOpcode          = &Error{CodeProtocolError, "unknown opcode"}
	ErrUnmasked               = &Error{CodeProtocolError, "unmasked client frame"}
	ErrControlTooBig          = &Error{CodeProtocolError, "control frame over 125 bytes"}
	ErrControlFragmented      = &Error{CodeProtocolError, "fragmented control frame"}
	ErrUnexpectedContinuation = &Error{CodeProtocolError, "continuation without a message"}
	ErrInterleavedMessage     = &Error{CodeProtocolError, "new data frame inside a fragmented message"}
	ErrLengthMSB              = &Error{CodeProtocolError, "64-bit length with the most significant bit set"}
	ErrTooBig                 = &Error{CodeMessageTooBig, "message over the size limit"}
	ErrInvalidUTF8            = &Error{CodeInvalidPayload, "text message is not valid UTF-8"}
	// ErrLengthCloseFrame and ErrBadCloseCode are raised by the close-frame
	// handler, which lives with the connection.
	ErrLengthCloseFrame = &Error{CodeProtocolError, "close frame with a 1-byte payload"}
	ErrBadCloseCode     = &Error{CodeProtocolError, "invalid close code"}
)

// Handler receives what the parser decodes. Payloads are valid only until
// the call returns. A non-nil error stops Feed and is returned from it.
type Handler interface {
	// OnMessage receives a complete text or binary message (fragments
	// reassembled; text already checked to be UTF-8).
	OnMessage(op Op, payload []byte) error
	// OnControl receives a ping, pong or close frame (≤125 bytes).
	OnControl(op Op, payload []byte) error
}

// Parser is the per-connection parsing state; the zero value is ready.
type Parser struct {
	partial []byte // an incomplete frame, header included; nil between frames
	msg     []byte // a fragmented message being reassembled; nil when none
	msgOp   Op     // opcode of msg; 0 when no message is open
}

// Idle reports whether the parser holds no buffered bytes.
func (p *Parser) Idle() bool { return p.partial == nil && p.msg == nil }

// Buffered returns how many bytes the parser currently holds.
func (p *Parser) Buffered() int { return len(p.partial) + len(p.msg) }

// Reset drops any buffered state (after an error, or on close).
func (p *Parser) Reset() { *p = Parser{} }

type header struct {
	fin    bool
	op     Op
	mask   [4]byte
	length int
}

// header validates b as the start of a frame. n == 0 with a nil error means
// more bytes are needed; everything that can be checked on the bytes present
// is checked already, so an attacker gets no buffering before a violation is
// seen. limit bounds the whole message; the declared length is compared to
// it before the caller allocates anything.
func (p *Parser) header(b []byte, limit int) (h header, n int, err error) {
	if len(b) == 0 {
		return h, 0, nil
	}
	b0 := b[0]
	if b0&0x70 != 0 {
		return h, 0, ErrReservedBits
	}
	h.fin = b0&0x80 != 0
	h.op = Op(b0 & 0x0f)
	switch h.op {
	case OpContinuation:
		if p.msgOp == 0 {
			return h, 0, ErrUnexpectedContinuation
		}
	case OpText, OpBinary:
		if p.msgOp != 0 {
			return h, 0, ErrInterleavedMessage
		}
	case OpClose, OpPing, OpPong:
		if !h.fin {
			return h, 0, ErrControlFragmented
		}
	default:
		return h, 0, ErrUnknownOpcode
	}
	if len(b) < 2 {
		return h, 0, nil
	}
	b1 := b[1]
	if b1&0x80 == 0 {
		return h, 0, ErrUnmasked
	}
	l7 := b1 & 0x7f
	if h.op.IsControl() && l7 > MaxControlPayload {
		return h, 0, ErrControlTooBig
	}
	hl := headerLen(b1)
	if len(b) < hl {
		return h, 0, nil
	}
	var length uint64
	switch l7 {
	case 126:
		length = uint64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		length = binary.BigEndian.Uint64(b[2:10])
		if length>>63 != 0 {
			return h, 0, ErrLengthMSB
		}
	default:
		length = uint64(l7)
	}
	room := limit
	if h.op == OpContinuation {
		room -= len(p.msg)
	}
	if room < 0 || length > uint64(room) {
		return h, 0, ErrTooBig
	}
	h.length = int(length)
	copy(h.mask[:], b[hl-4:hl])
	return h, hl, nil
}

// headerLen is the full header length implied by the second header byte.
func headerLen(b1 byte) int {
	switch b1 & 0x7f {
	case 126:
		return 2 + 2 + 4
	case 127:
		return 2 + 8 + 4
	default:
		return 2 + 4
	}
}

// Feed parses the next bytes of the stream. data is unmasked in place, so
// it must be writable and must not be used by the caller afterwards. limit is
// the message size limit in bytes (must be > 0). After an error the parser
// must not be fed again (call Reset).
func (p *Parser) Feed(data []byte, limit int, h Handler) error {
	for len(data) > 0 {
		if p.partial == nil {
			hd, hl, err := p.header(data, limit)
			if err != nil {
				return err
			}
			if hl == 0 {
				p.partial = append(make([]byte, 0, MaxHeaderLen), data...)
				return nil
			}
			total := hl + hd.length
			if len(data) < total {
				// Copy only what arrived; append grows it as more comes, so
				// a declared-but-unsent payload costs nothing.
				p.partial = append([]byte(nil), data...)
				return nil
			}
			if err := p.frame(hd, data[hl:total], h); err != nil {
				return err
			}
			data = data[total:]
			continue
		}

		hd, hl, err := p.header(p.partial, limit)
		if err != nil {
			return err
		}
		if hl == 0 {
			need := 2
			if len(p.partial) >= 2 {
				need = headerLen(p.partial[1])
			}
			take := min(need-len(p.partial), len(data))
			p.partial = append(p.partial, data[:take]...)
			data = data[take:]
			if hd, hl, err = p.header(p.partial, limit); err != nil {
				return err
			}
			if hl == 0 {
				continue
			}
		}
		total := hl + hd.length
		take := min(total-len(p.partial), len(data))
		p.partial = append(p.partial, data[:take]...)
		data = data[take:]
		if len(p.partial) == total {
			f := p.partial
			p.partial = nil
			if err := p.frame(hd, f[hl:total], h); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *Parser) frame(hd header, payload []byte, h Handler) error {
	if len(payload) > 0 {
		ws.Cipher(payload, hd.mask, 0)
	}
	switch hd.op {
	case OpClose, OpPing, OpPong:
		return h.OnControl(hd.op, payload)
	case OpText, OpBinary:
		if hd.fin {
			if hd.op == OpText && !utf8.Valid(payload) {
				return ErrInvalidUTF8
			}
			return h.OnMessage(hd.op, payload)
		}
		p.msgOp = hd.op
		p.msg = append(p.msg[:0], payload...)
		if p.msg == nil {
			p.msg = []byte{} // an open message with no bytes yet
		}
		return nil
	default: // continuation; header() guaranteed a message is open
		p.msg = append(p.msg, payload...)
		if !hd.fin {
			return nil
		}
		msg, op := p.msg, p.msgOp
		p.msg, p.msgOp = nil, 0
		if op == OpText && !utf8.Valid(msg) {
			return ErrInvalidUTF8
		}
		return h.OnMessage(op, msg)
	}
}
