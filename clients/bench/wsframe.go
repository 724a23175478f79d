package main

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"
)

// WebSocket framing for the two raw paths of this tool: the subscribers'
// epoll readers parse server frames straight out of a read buffer, and the
// floor server encodes its frames once into a shared log. Both need frames
// as bytes, not as a stream, which gobwas/ws (io.Reader based) does not
// offer.

// maxFrameBytes bounds one frame a subscriber accepts. Broadcast frames in
// this tool are a few hundred bytes; anything this large is a bug.
const maxFrameBytes = 1 << 20

// WebSocket opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// errFrame is a frame this tool refuses (reserved bits, oversized).
var errFrame = errors.New("bench: bad websocket frame")

// frameHeader is a parsed frame header.
type frameHeader struct {
	fin    bool
	op     byte
	masked bool
	mask   [4]byte
	size   int // header bytes
	length int // payload bytes
}

// parseFrameHeader reads the header at the start of b; ok is false when b
// does not hold a whole header yet.
func parseFrameHeader(b []byte) (h frameHeader, ok bool, err error) {
	if len(b) < 2 {
		return h, false, nil
	}
	if b[0]&0x70 != 0 {
		return h, false, errFrame // no extension negotiated
	}
	h.fin = b[0]&0x80 != 0
	h.op = b[0] & 0x0F
	h.masked = b[1]&0x80 != 0
	n := uint64(b[1] & 0x7F)
	h.size = 2
	switch n {
	case 126:
		if len(b) < 4 {
			return h, false, nil
		}
		n = uint64(binary.BigEndian.Uint16(b[2:4]))
		h.size = 4
	case 127:
		if len(b) < 10 {
			return h, false, nil
		}
		n = binary.BigEndian.Uint64(b[2:10])
		h.size = 10
	}
	if n > maxFrameBytes {
		return h, false, errFrame
	}
	h.length = int(n)
	if h.masked {
		if len(b) < h.size+4 {
			return h, false, nil
		}
		copy(h.mask[:], b[h.size:h.size+4])
		h.size += 4
	}
	return h, true, nil
}

// appendServerFrame appends an unmasked, final frame with payload p.
func appendServerFrame(dst []byte, op byte, p []byte) []byte {
	dst = append(dst, 0x80|op)
	switch n := len(p); {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, p...)
}

// appendClientFrame appends a final frame with payload p masked with key
// (clients must mask, RFC 6455 §5.3).
func appendClientFrame(dst []byte, op byte, p []byte, key [4]byte) []byte {
	start := len(dst)
	dst = appendServerFrame(dst, op, p)
	// Insert the mask bit and key after the length field.
	hdr := len(dst) - len(p) - start
	dst[start+1] |= 0x80
	dst = append(dst, 0, 0, 0, 0)
	payload := dst[start+hdr:]
	copy(payload[4:], payload[:len(p)])
	copy(payload[:4], key[:])
	ws.Cipher(payload[4:], key, 0)
	return dst
}
