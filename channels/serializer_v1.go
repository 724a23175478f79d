package channels

import (
	"encoding/json"

	"github.com/phxgate/phxgate/pubsub"
)

// V1 (vsn 1.0.x): one JSON object per text frame. PROTOCOL.md §2.1.

const (
	v1HasTopic = 1 << iota
	v1HasEvent
	v1HasPayload
	v1HasRef
	v1HasAll = v1HasTopic | v1HasEvent | v1HasPayload | v1HasRef
)

// decodeV1 parses a V1 object. topic, event, payload and ref are required
// (Phoenix crashes the socket on a missing key); join_ref is optional.
// Duplicate keys: the last one wins, as with Jason.
func decodeV1(data []byte, m *message) error {
	*m = message{}
	if !json.Valid(data) {
		return malformed("v1: invalid JSON")
	}
	i := skipWS(data, 0)
	if i >= len(data) || data[i] != '{' {
		return malformed("v1: not an object")
	}
	var have int
	var bad string
	ok := objectMembers(data, func(key, val []byte, _, _ int) bool {
		switch string(key) {
		case "topic":
			s, ok := jsonString(val)
			if !ok {
				bad = "topic is not a string"
				return false
			}
			m.topic = s
			have |= v1HasTopic
		case "event":
			s, ok := jsonString(val)
			if !ok {
				bad = "event is not a string"
				return false
			}
			m.event = s
			have |= v1HasEvent
		case "payload":
			if !payloadOK(val) {
				bad = "payload is not an object or null"
				return false
			}
			m.payload = val
			have |= v1HasPayload
		case "ref":
			if !refTokenOK(val) {
				bad = "ref is an object or array"
				return false
			}
			m.ref = val
			have |= v1HasRef
		case "join_ref":
			if !refTokenOK(val) {
				bad = "join_ref is an object or array"
				return false
			}
			m.joinRef = val
		}
		return true
	})
	if bad != "" {
		return malformed("v1: %s", bad)
	}
	if !ok {
		return malformed("v1: bad object")
	}
	if have != v1HasAll {
		return malformed("v1: missing key")
	}
	return nil
}

// jsonString returns the contents of a JSON string token.
func jsonString(val []byte) ([]byte, bool) {
	if len(val) == 0 || val[0] != '"' {
		return nil, false
	}
	end, esc, ok := scanString(val, 0)
	if !ok || end != len(val) {
		return nil, false
	}
	return stringValue(val, esc)
}

// encodeV1 builds {"event":E,"payload":P,"ref":R,"topic":T}: the sorted key
// order Phoenix 1.8.12 produces; never a join_ref. ref is a raw token; when
// pos is non-nil it is written instead, as a position string.
func encodeV1(ref string, pos *pubsub.Position, topic, event string, payload []byte) []byte {
	b := newFrameBuf(48 + len(ref) + len(topic) + len(event) + len(payload))
	b = append(b, `{"event":`...)
	b = AppendJSONString(b, event)
	b = append(b, `,"payload":`...)
	b = append(b, payload...)
	b = append(b, `,"ref":`...)
	b = appendRef(b, ref, pos)
	b = append(b, `,"topic":`...)
	b = AppendJSONString(b, topic)
	b = append(b, '}')
	return finishFrame(b, opText)
}

// encodeV1Reply builds a V1 phx_reply with payload {"response":R,"status":S}.
func encodeV1Reply(ref, topic, status string, response []byte) []byte {
	b := newFrameBuf(80 + len(ref) + len(topic) + len(status) + len(response))
	b = append(b, `{"event":"phx_reply","payload":`...)
	b = appendReplyPayload(b, status, response)
	b = append(b, `,"ref":`...)
	b = append(b, ref...)
	b = append(b, `,"topic":`...)
	b = AppendJSONString(b, topic)
	b = append(b, '}')
	return finishFrame(b, opText)
}

func appendRef(b []byte, ref string, pos *pubsub.Position) []byte {
	if pos != nil {
		b = append(b, '"')
		b = pos.AppendTo(b)
		return append(b, '"')
	}
	if ref == "" {
		return append(b, "null"...)
	}
	return append(b, ref...)
}

// appendReplyPayload writes {"response":R,"status":S}, response first as
// Phoenix 1.8.12 sends it; an empty response is {}.
func appendReplyPayload(b []byte, status string, response []byte) []byte {
	b = append(b, `{"response":`...)
	if len(response) == 0 {
		b = append(b, "{}"...)
	} else {
		b = append(b, response...)
	}
	b = append(b, `,"status":`...)
	b = AppendJSONString(b, status)
	return append(b, '}')
}
