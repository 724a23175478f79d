package channels

// V2 binary frames (WebSocket binary opcode), PROTOCOL.md §2.3. Every
// length is one byte, so each string field is at most maxBinaryString bytes.

// maxBinaryString is the longest string a binary frame can carry (its length
// is one unsigned byte).
const maxBinaryString = 255

const (
	binPush      byte = 0
	binReply     byte = 1
	binBroadcast byte = 2
)

// decodeBinary parses a client push (kind 0, the only kind a client sends):
// 00|jrLen|refLen|topicLen|eventLen|join_ref|ref|topic|event|payload.
func decodeBinary(data []byte, m *message) error {
	*m = message{}
	if len(data) < 5 {
		return malformed("binary: %d byte header", len(data))
	}
	if data[0] != binPush {
		return malformed("binary: kind %d", data[0])
	}
	jl, rl, tl, el := int(data[1]), int(data[2]), int(data[3]), int(data[4])
	i := 5
	if len(data) < i+jl+rl+tl+el {
		return malformed("binary: truncated")
	}
	m.joinRef = data[i : i+jl : i+jl]
	i += jl
	m.ref = data[i : i+rl : i+rl]
	i += rl
	m.topic = data[i : i+tl : i+tl]
	i += tl
	m.event = data[i : i+el : i+el]
	i += el
	m.payload = data[i:]
	m.binary = true
	m.rawRefs = true
	return nil
}

func binaryLensOK(ss ...string) bool {
	for _, s := range ss {
		if len(s) > maxBinaryString {
			return false
		}
	}
	return true
}

// encodeBinaryPush builds a server push (kind 0, no ref field):
// 00|jrLen|topicLen|eventLen|join_ref|topic|event|payload. joinRef is the
// plain string ("" for nil).
func encodeBinaryPush(joinRef, topic, event string, payload []byte) ([]byte, error) {
	if !binaryLensOK(joinRef, topic, event) {
		return nil, ErrStringTooLong
	}
	b := newFrameBuf(4 + len(joinRef) + len(topic) + len(event) + len(payload))
	b = append(b, binPush, byte(len(joinRef)), byte(len(topic)), byte(len(event)))
	b = append(b, joinRef...)
	b = append(b, topic...)
	b = append(b, event...)
	b = append(b, payload...)
	return finishFrame(b, opBinary), nil
}

// encodeBinaryReply builds a reply (kind 1):
// 01|jrLen|refLen|topicLen|statusLen|join_ref|ref|topic|status|payload.
func encodeBinaryReply(joinRef, ref, topic, status string, payload []byte) ([]byte, error) {
	if !binaryLensOK(joinRef, ref, topic, status) {
		return nil, ErrStringTooLong
	}
	b := newFrameBuf(5 + len(joinRef) + len(ref) + len(topic) + len(status) + len(payload))
	b = append(b, binReply, byte(len(joinRef)), byte(len(ref)), byte(len(topic)), byte(len(status)))
	b = append(b, joinRef...)
	b = append(b, ref...)
	b = append(b, topic...)
	b = append(b, status...)
	b = append(b, payload...)
	return finishFrame(b, opBinary), nil
}

// encodeBinaryBroadcast builds a broadcast (kind 2):
// 02|topicLen|eventLen|topic|event|payload. It has no ref slot, so binary
// broadcasts never carry a stream position, even to opted-in channels.
func encodeBinaryBroadcast(topic, event string, payload []byte) ([]byte, error) {
	if !binaryLensOK(topic, event) {
		return nil, ErrStringTooLong
	}
	b := newFrameBuf(3 + len(topic) + len(event) + len(payload))
	b = append(b, binBroadcast, byte(len(topic)), byte(len(event)))
	b = append(b, topic...)
	b = append(b, event...)
	b = append(b, payload...)
	return finishFrame(b, opBinary), nil
}
