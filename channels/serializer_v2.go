package channels

import (
	"encoding/json"

	"github.com/phxgate/phxgate/pubsub"
)

// V2 text (vsn 2.0.x): [join_ref, ref, topic, event, payload]. PROTOCOL.md
// §2.2. The first five elements are read, extra ones ignored.

func decodeV2(data []byte, m *message) error {
	*m = message{}
	if !json.Valid(data) {
		return malformed("v2: invalid JSON")
	}
	i := skipWS(data, 0)
	if i >= len(data) || data[i] != '[' {
		return malformed("v2: not an array")
	}
	i = skipWS(data, i+1)
	var elems [5][]byte
	n := 0
	for n < 5 && i < len(data) && data[i] != ']' {
		end, ok := skipValue(data, i)
		if !ok {
			return malformed("v2: bad element")
		}
		elems[n] = data[i:end]
		n++
		i = skipWS(data, end)
		if i < len(data) && data[i] == ',' {
			i = skipWS(data, i+1)
		}
	}
	if n < 5 {
		return malformed("v2: %d elements, want 5", n)
	}
	if !refTokenOK(elems[0]) || !refTokenOK(elems[1]) {
		return malformed("v2: ref is an object or array")
	}
	topic, ok := jsonString(elems[2])
	if !ok {
		return malformed("v2: topic is not a string")
	}
	event, ok := jsonString(elems[3])
	if !ok {
		return malformed("v2: event is not a string")
	}
	if !payloadOK(elems[4]) {
		return malformed("v2: payload is not an object or null")
	}
	m.joinRef, m.ref, m.topic, m.event, m.payload = elems[0], elems[1], topic, event, elems[4]
	return nil
}

// encodeV2 builds [J,R,T,E,P] from raw ref tokens; pos, when non-nil,
// replaces R with a position string.
func encodeV2(joinRef, ref string, pos *pubsub.Position, topic, event string, payload []byte) []byte {
	b := newFrameBuf(40 + len(joinRef) + len(ref) + len(topic) + len(event) + len(payload))
	b = append(b, '[')
	b = appendRef(b, joinRef, nil)
	b = append(b, ',')
	b = appendRef(b, ref, pos)
	b = append(b, ',')
	b = AppendJSONString(b, topic)
	b = append(b, ',')
	b = AppendJSONString(b, event)
	b = append(b, ',')
	b = append(b, payload...)
	b = append(b, ']')
	return finishFrame(b, opText)
}

// encodeV2Reply builds [J,R,T,"phx_reply",{"response":R,"status":S}].
func encodeV2Reply(joinRef, ref, topic, status string, response []byte) []byte {
	b := newFrameBuf(72 + len(joinRef) + len(ref) + len(topic) + len(status) + len(response))
	b = append(b, '[')
	b = appendRef(b, joinRef, nil)
	b = append(b, ',')
	b = appendRef(b, ref, nil)
	b = append(b, ',')
	b = AppendJSONString(b, topic)
	b = append(b, `,"phx_reply",`...)
	b = appendReplyPayload(b, status, response)
	b = append(b, ']')
	return finishFrame(b, opText)
}
