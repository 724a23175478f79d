package channels

// Server frames are unmasked (RFC 6455 §5.1), so a header is 2, 4 or 10
// bytes. Encoders reserve frameHeaderRoom bytes at the front of the buffer,
// append the payload after it, then write the header just before the payload:
// one allocation per frame, no copy.
const frameHeaderRoom = 10

const (
	opText   byte = 0x1
	opBinary byte = 0x2
	finBit   byte = 0x80
)

// newFrameBuf returns a buffer with header room reserved and room for about
// payloadHint payload bytes.
func newFrameBuf(payloadHint int) []byte {
	b := make([]byte, frameHeaderRoom, frameHeaderRoom+payloadHint)
	return b
}

// finishFrame writes the header for the payload in buf[frameHeaderRoom:] and
// returns the complete frame.
func finishFrame(buf []byte, op byte) []byte {
	n := len(buf) - frameHeaderRoom
	var start int
	switch {
	case n < 126:
		start = frameHeaderRoom - 2
		buf[start+1] = byte(n)
	case n <= 0xFFFF:
		start = frameHeaderRoom - 4
		buf[start+1] = 126
		buf[start+2] = byte(n >> 8)
		buf[start+3] = byte(n)
	default:
		start = 0
		buf[1] = 127
		u := uint64(n)
		for k := 0; k < 8; k++ {
			buf[2+k] = byte(u >> (56 - 8*k))
		}
	}
	buf[start] = finBit | op
	return buf[start:]
}
